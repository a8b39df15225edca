"""`fintrl export RUN --merged OUT`: the adapter merged into its base, loaded by a plain `pipeline` with no PEFT and no
`tokenizer=`; refusals; `fintrl publish OUT --merged` to the local Hub (one commit, one tag, a card that says merge)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from fintrl.cli.main import main
from fintrl.run_folder import EXPORT_INFO
from tests.helpers import BASE_REPO, LABELS, copy_run, python_block

MERGED_REPO = "fintrl-test/fin-sentiment-merged"


def messages(info: dict, text: str) -> list[dict[str, str]]:
    """The chat a pipeline user sends: the prompt the export records (`fintrl_export.json`, also in the card)."""
    system = [{"role": "system", "content": info["prompt"]["system"]}] if info["prompt"]["system"] else []
    return [*system, {"role": "user", "content": info["prompt"]["user_template"].replace("{text}", text)}]


def exit_code(argv: list[str]) -> int:
    """`fintrl ARGV`'s exit code, usage errors (argparse's) included."""
    return main(argv)


@pytest.fixture(scope="module")
def merged(trained, tmp_path_factory) -> dict:
    """The `trained` run (unquantized, trained until greedy generation answers a label) exported in float32."""
    out = tmp_path_factory.mktemp("export") / "merged"
    assert main(["export", str(trained["dir"]), "--merged", str(out)]) == 0
    return {"out": out, "info": json.loads((out / EXPORT_INFO).read_text())}


def test_merged_folder_loads_with_plain_pipeline(trained, merged):
    from transformers import pipeline

    out, info = merged["out"], merged["info"]
    files = {p.name for p in out.iterdir()}
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    assert {"config.json", "model.safetensors", "generation_config.json", "chat_template.jinja", "recipe.yaml"} <= files
    assert {"metrics.json", "predictions.jsonl", EXPORT_INFO, "README.md"} <= files
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["do_sample"] is False  # </s> ends the answer
    assert generation["max_new_tokens"] == info["generation"]["max_new_tokens"] <= 6
    assert info["answers"] == LABELS and info["dtype"] == "float32"
    assert info["merged"] == {"dtype": "float32", "unquantized_base": True, "trained_on_4bit_base": False}

    # merged in float32 from an unquantized run: the same model, so the same answers up to float rounding
    agreement = info["agreement"]
    assert agreement["n"] == 12 and agreement["agreement"] == 1.0 and agreement["max_abs_dprob"] < 1e-4
    assert agreement["merged_accuracy"] == agreement["adapter_accuracy"]

    classifier = pipeline("text-generation", model=str(out))  # no PEFT, no tokenizer=
    rows = [json.loads(line) for line in (trained["dir"] / "predictions.jsonl").read_text().splitlines()]
    for row in rows[:4]:
        answer = classifier(messages(info, row["text"]))[0]["generated_text"][-1]["content"]
        assert answer.strip() == row["prediction"]  # the adapter's label, and nothing after it: the stop token ended it


def test_fintrl_card_renders_a_merged_exports_own_card(merged, capsys):
    """`fintrl card` chooses the card publish would upload: a merged export's, not an adapter's."""
    assert main(["card", str(merged["out"]), "--repo", "org/fin-merged"]) == 0
    card = (merged["out"] / "README.md").read_text()
    assert 'pipeline("text-generation", model="org/fin-merged")' in card and "base_model_relation: merge" in card


def test_export_of_a_qlora_run_says_it_was_merged_unquantized(tiny_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", str(tiny_run), "--merged", str(out), "--dtype", "bfloat16"]) == 0
    captured = capsys.readouterr()
    assert "trained on a 4-bit base" in captured.err and "unquantized base (bfloat16)" in captured.err
    printed = json.loads(captured.out)
    info = json.loads((out / EXPORT_INFO).read_text())
    assert printed["trained_on_4bit_base"] is True and printed["agreement"] == info["agreement"]
    agreement = info["agreement"]
    assert agreement["n"] == 12 and 0 <= agreement["agreement"] <= 1 and 0 <= agreement["max_abs_dprob"] <= 1
    assert info["merged_from"]["trained_quantization"]["load_in_4bit"] is True
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    card = (out / "README.md").read_text()
    assert "Merged into the unquantized base" in card and f"{agreement['n']} evaluation rows" in card

    # --overwrite replaces it (built aside, swapped in); without it, the export is refused and left alone
    before = (out / EXPORT_INFO).read_text()
    assert main(["export", str(tiny_run), "--merged", str(out)]) == 5
    assert "already holds an export; --overwrite" in capsys.readouterr().err
    assert (out / EXPORT_INFO).read_text() == before
    assert main(["export", str(tiny_run), "--merged", str(out), "--overwrite"]) == 0
    assert json.loads((out / EXPORT_INFO).read_text())["dtype"] == "float32"
    assert not (out.parent / ".merged.incomplete").exists()


def test_dequantize_merges_into_the_4bit_weights(tiny_run, tmp_path, capsys):
    """--dequantize: the weights the adapter was trained against, so the merged model answers as the adapter did."""
    out = tmp_path / "merged"
    assert main(["export", str(tiny_run), "--merged", str(out), "--dequantize"]) == 0
    assert "merged into its 4-bit weights dequantized to float32" in capsys.readouterr().err
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["merged"] == {"dtype": "float32", "unquantized_base": False, "trained_on_4bit_base": True}
    assert info["agreement"]["agreement"] == 1.0 and info["agreement"]["max_abs_dprob"] < 1e-4
    assert "Merged into the 4-bit base, dequantized" in (out / "README.md").read_text()


def test_refusals_are_one_line(tiny_run, trained, tmp_path, capsys):
    unfinished = copy_run(tiny_run, tmp_path / "unfinished")
    (unfinished / "metrics.json").unlink()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    cases = [
        (["export", str(unfinished), "--merged", str(tmp_path / "a")], 5, "holds no finished run"),
        (["export", str(tmp_path / "nowhere"), "--merged", str(tmp_path / "b")], 5, "no such run folder"),
        (["export", str(tiny_run), "--merged", str(stranger)], 5, "not a fintrl export"),
        (["export", str(tiny_run), "--merged", str(tiny_run / "inside")], 5, "outside the run folder"),
        (["export", str(tiny_run), "--merged", str(tmp_path / "c"), "--dtype", "int8"], 2, "invalid choice: 'int8'"),
        (["export", str(tiny_run)], 2, "--merged"),
        (["export", str(trained["dir"]), "--merged", str(tmp_path / "c"), "--dequantize"], 2, "not trained on a 4-bit"),
    ]
    for argv, code, message in cases:
        assert exit_code(argv) == code, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0], (argv, err)
    assert [(p.name, p.read_text()) for p in stranger.iterdir()] == [("notes.txt", "mine")]
    assert not any((tmp_path / name).exists() for name in "abc")


def test_publish_merged(trained, local_hub, tmp_path, capsys, fintrl_home):
    """One commit + one tag in a repo of its own; the card says merge and names the base by its Hub id; no local path
    in any file; the card's snippet runs as printed against the Hub (plain pipeline, the label)."""
    out = tmp_path / "merged"  # bfloat16: the local Hub takes at most 64 MB per commit
    assert main(["export", str(trained["dir"]), "--merged", str(out), "--dtype", "bfloat16"]) == 0
    capsys.readouterr()

    assert main(["publish", str(out), "--repo", MERGED_REPO]) == 5  # an export needs --merged
    assert main(["publish", str(trained["dir"]), "--merged", "--repo", MERGED_REPO]) == 5  # and a run cannot have it
    assert exit_code(["publish", str(out), "--merged"]) == 2  # never the adapter's repo from the recipe
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 3 and "publish it with --merged" in err[0] and "not a merged export" in err[1]
    assert "needs --repo" in err[2] and local_hub.requests == []

    assert main(["publish", str(out), "--merged", "--repo", MERGED_REPO]) == 0
    published = json.loads(capsys.readouterr().out)
    api = HfApi()
    assert published["version"] == "v1.0.0"
    assert [c.title for c in api.list_repo_commits(MERGED_REPO)][0].startswith("fintrl v1.0.0: accuracy")
    assert len(api.list_repo_commits(MERGED_REPO)) == 2  # the repo's initial commit + this version
    assert [(t.name, t.target_commit) for t in api.list_repo_refs(MERGED_REPO).tags] == [
        ("v1.0.0", published["commit"])
    ]
    files = set(api.list_repo_files(MERGED_REPO, revision="v1.0.0"))
    assert "adapter_config.json" not in files and {"model.safetensors", "config.json", EXPORT_INFO} <= files

    card = ModelCard.load(hf_hub_download(MERGED_REPO, "README.md", revision="v1.0.0"))
    assert card.data.base_model == BASE_REPO and card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers" and "merge" in card.data.tags
    recipe = yaml.safe_load(Path(hf_hub_download(MERGED_REPO, "recipe.yaml", revision="v1.0.0")).read_text())
    assert recipe["model"]["name_or_path"] == BASE_REPO

    local = {str(p) for p in (trained["data"], trained["dir"], out, tmp_path, fintrl_home, Path.home(), Path.cwd())}
    local |= {tempfile.gettempdir()} | {os.path.realpath(p) for p in local}
    commits = local_hub.repos[("model", MERGED_REPO)].commits.values()
    uploaded = [(name, data) for c in commits for name, data in c.files.items()]
    assert {"README.md", "recipe.yaml", "metrics.json", EXPORT_INFO, "config.json"} <= {name for name, _ in uploaded}
    leaks = [(name, p) for name, data in uploaded if b"\0" not in data for p in local if p.encode() in data]
    assert leaks == []

    assert main(["versions", MERGED_REPO, "--json"]) == 0
    [version] = json.loads(capsys.readouterr().out)
    assert version["base_model"] == BASE_REPO and version["version"] == "v1.0.0"

    namespace: dict = {}
    exec(python_block(str(card), f'pipeline("text-generation", model="{MERGED_REPO}")'), namespace)
    assert namespace["answer"] in LABELS
