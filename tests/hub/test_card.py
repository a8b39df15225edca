"""What leaves the machine with a run: its model card (metadata the Hub reads, text that tells the truth, snippets that
run) and portable files (no local path, the base named by its Hub id). The card's snippets run against the local Hub."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, hf_hub_download
from huggingface_hub.repocard import metadata_load

from fintrl.cli.main import main
from fintrl.errors import RecipeError, RunFolderError
from fintrl.hub import card as fcard
from fintrl.hub import publish as hub
from fintrl.hub import staging
from fintrl.recipe.schema import recipe_from_dict
from tests.helpers import BASE_REPO, REPO, copy_run, python_block, upload_tiny_base

FPB = "takala/financial_phrasebank"


def edit(run_dir: Path, name: str, change) -> None:
    """Apply `change` to the run's recipe.yaml or metrics.json, in place."""
    path = run_dir / name
    data = yaml.safe_load(path.read_text()) if name.endswith(".yaml") else json.loads(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))


def header(card: str) -> str:
    return card.split("---")[1]


def prose(card: str) -> str:
    """The card's text with line breaks as spaces: the template wraps its sentences."""
    return " ".join(card.split())


def test_card_metadata_for_a_hub_dataset(trained, tmp_path):
    """A run on an offline model with a Hub base, on a Hub dataset config: the model-index the Hub reads, with F1's
    average as `args`, the dataset's config and revision; parsed by huggingface_hub as the Hub does."""
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    edit(
        run_dir,
        "recipe.yaml",
        lambda r: (
            r["model"].update(name_or_path="smollm2-135m-instruct")
            or r["data"].update(preset="fpb_50agree", path=None)
            or r["publish"].update(base_model=None)
        ),
    )
    edit(
        run_dir,
        "metrics.json",
        lambda m: m["data"].update(
            source=FPB, config_name="sentences_50agree", revision="4f9c1a2", license="cc-by-nc-sa-3.0"
        ),
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    versions = [
        {"version": "v1.1.0", "date": "2025-01-02", "accuracy": 0.8, "f1_macro": 0.7},
        {"version": "v1.0.0", "date": "2025-01-01", "accuracy": None, "f1_macro": None},
    ]
    text = fcard.render_card(run_dir, repo_id="org/fin", versions=versions, version="v1.1.0")
    (run_dir / "README.md").write_text(text)

    meta = metadata_load(run_dir / "README.md")
    data = ModelCard(text, ignore_metadata_errors=False).data  # the local Hub's validate-yaml does the same
    assert meta["base_model"] == data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (meta["base_model_relation"], meta["library_name"]) == ("adapter", "peft")
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "cc-by-nc-sa-3.0" and meta["datasets"] == [FPB]
    assert {"fintrl", "lora", "finance"} <= set(meta["tags"]) and "custom" not in header(text)
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"] == {
        "name": "fpb_50agree",
        "type": FPB,
        "config": "sentences_50agree",
        "split": metrics["data"]["eval_split"],
        "revision": "4f9c1a2",
    }
    assert [(m["type"], m["name"], m.get("args"), m["value"]) for m in result["metrics"]] == [
        ("accuracy", "Accuracy", None, round(metrics["accuracy"], 4)),
        ("f1", "Macro F1", {"average": "macro"}, round(metrics["f1_macro"], 4)),
        ("f1", "Weighted F1", {"average": "weighted"}, round(metrics["f1_weighted"], 4)),
    ]
    assert [(r.metric_type, r.metric_args, r.dataset_config) for r in data.eval_results] == [
        ("accuracy", None, "sentences_50agree"),
        ("f1", {"average": "macro"}, "sentences_50agree"),
        ("f1", {"average": "weighted"}, "sentences_50agree"),
    ]
    assert "| v1.1.0 | 2025-01-02 | 0.800 | 0.700 |" in text and "| v1.0.0 | 2025-01-01 | - | - |" in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("org/fin", revision="v1.1.0")' in text
    assert "Non-commercial" in text and "at least 50 % of the annotators agreed" in prose(text)  # the preset's caveat


def test_card_metadata_for_local_data_and_a_mixture(trained, tmp_path):
    """Local data has no Hub id: no model-index entry, no `type: custom`, no `datasets`; a mixture's Hub sources
    each get their own entry, from their own eval split."""
    text = (trained["dir"] / "README.md").read_text()  # written by the run itself
    meta = metadata_load(trained["dir"] / "README.md")
    assert "model-index" not in meta and "datasets" not in meta and "custom" not in header(text)
    assert meta["base_model"] == BASE_REPO  # the recipe's publish.base_model
    assert "not in the card's `model-index` metadata" in prose(text)
    ModelCard(text, ignore_metadata_errors=False)

    run_dir = copy_run(trained["dir"], tmp_path / "mix")
    mixture = [{"preset": "fpb_allagree", "name": "fpb"}, {"path": "/data/mine", "name": "mine"}]
    edit(run_dir, "recipe.yaml", lambda r: r.update(data={"mixture": mixture, "labels": r["data"]["labels"]}))

    def report(m: dict) -> None:
        m["data"]["mixture"] = [
            {
                "name": "fpb",
                "source": FPB,
                "config_name": "sentences_allagree",
                "eval_split": "carved",
                "weight": 1.0,
                "n_train": 20,
                "n_eval": 6,
                "license": "cc-by-nc-sa-3.0",
            },
            {
                "name": "mine",
                "source": "mine",
                "eval_split": "validation",
                "weight": 2.0,
                "n_train": 4,
                "n_eval": 6,
                "license": None,
            },
        ]
        m["per_source"] = {"fpb": {**m, "accuracy": 0.5}, "mine": {**m, "accuracy": 0.25}}

    edit(run_dir, "metrics.json", report)
    text = fcard.render_card(run_dir)
    [result] = metadata_load_text(text)["model-index"][0]["results"]
    assert result["dataset"]["type"] == FPB and result["dataset"]["config"] == "sentences_allagree"
    assert result["metrics"][0]["value"] == 0.5 and "custom" not in header(text)
    assert "| fpb | `takala/financial_phrasebank` (sentences_allagree) | 1.0 | 20 | 6 | cc-by-nc-sa-3.0 |" in text
    assert "**Data: mine.** not a fintrl preset" in prose(text) and "/data/mine" not in text


def metadata_load_text(text: str) -> dict:
    return yaml.safe_load(header(text))


def test_card_tells_the_truth(trained):
    run_dir = trained["dir"]
    card, metrics = (run_dir / "README.md").read_text(), json.loads((run_dir / "metrics.json").read_text())
    text = prose(card)
    # how the metrics were measured, and what the free-generation snippet does not promise
    assert "with the base model in full precision" in text and "4-bit" not in text  # this run did not quantize
    assert "nothing constrains what it generates" in text and "scorer, which compares the probabilities" in text
    # installs that work; no repository that does not exist
    assert "pip install -e ." in text and "pip install fintrl" not in text and "github.com" not in text
    # training settings as YAML (no Python reprs), warmup as a ratio
    [settings] = re.findall(r"```yaml\n(.*?)```", card, flags=re.S)
    assert yaml.safe_load(settings)["train"] == metrics["train_args"] and "{'" not in text
    assert "warmup_steps: 0.05  # a ratio: 5% of the steps" in settings
    assert "`warmup_steps: 0.05` is a ratio" in text and "ceil(0.05 x 12) = 1 of 12 steps" in text
    # the versions the run used, its size
    for package in ("torch", "transformers", "trl", "peft", "bitsandbytes", "fintrl"):
        assert f"| {package} | {version(package)} |" in card and metrics["environment"][package] == version(package)
    trainable, total = metrics["train"]["trainable_parameters"], metrics["train"]["total_parameters"]
    assert 0 < trainable < total and f"Trainable parameters: {trainable:,} (the LoRA matrices) of {total:,}" in text
    size = (run_dir / "adapter_model.safetensors").stat().st_size
    assert f"adapter weights on disk: {fcard._size(size)}" in text
    # the plots, and the data's own caveats
    for alt, name in (
        ("Confusion matrix", "confusion_matrix.png"),
        ("Reliability diagram", "reliability.png"),
        ("Training loss", "training_loss.png"),
    ):
        assert f"![{alt}]({name})" in text and (run_dir / name).is_file()
    assert "illustrative, not a benchmark" in text
    assert "Source: `quickstart`" in text and str(trained["data"]) not in text and str(run_dir) not in text


def test_quantized_card_and_its_4bit_snippet(trained, local_hub, tmp_path, capsys, tiny_model_dir):
    """A recipe that quantized: the card says the metrics are 4-bit ones, and its PEFT snippet loads the base in 4-bit
    from the Hub as measured, pinned to the version."""
    upload_tiny_base(tiny_model_dir)
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    edit(run_dir, "recipe.yaml", lambda r: r.update(quantization=nf4))
    hub.publish(run_dir, REPO)
    text = Path(hf_hub_download(REPO, "README.md", revision="v1.0.0")).read_text()
    assert "with the base model loaded in 4-bit NF4 (bitsandbytes), as in training" in prose(text)
    assert "loads the base model in full precision" in prose(text)
    assert "can differ slightly from the metrics" in prose(text)
    snippet = python_block(text, "BitsAndBytesConfig")
    assert 'revision="v1.0.0", quantization_config=quantization' in snippet
    namespace: dict = {}
    exec(snippet, namespace)
    from bitsandbytes.nn import Linear4bit

    assert any(isinstance(m, Linear4bit) for m in namespace["model"].modules())
    assert isinstance(namespace["answer"], str) and capsys.readouterr().out.strip() == namespace["answer"]


def test_portable_values_and_the_base_model(trained, tmp_path):
    assert staging.portable_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert staging.portable_name(str(tmp_path / "data" / "fpb")) == "fpb"
    assert staging.portable_name(str(tmp_path)) == tmp_path.name
    for kept in ("tiny-mistral", "org/name@v1.0.0", "org/name"):
        assert staging.portable_name(kept) == kept
    old = {
        "model": "/home/me/models/base",
        "data": {"source": "/home/me/data/fpb", "mixture": [{"source": "/x/y"}]},
        "train": {"resumed_from": "/home/me/runs/r/checkpoints/checkpoint-40"},
    }
    assert staging.portable_report(old) == {
        "model": "base",
        "data": {"source": "fpb", "mixture": [{"source": "y"}]},
        "train": {"resumed_from": "checkpoint-40"},
    }

    recipe = recipe_from_dict({"model": {"name_or_path": "smollm2-135m-instruct"}, "data": {"preset": "quickstart"}})
    assert staging.base_model_hub_id(recipe) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert staging.base_model_hub_id(recipe, "org/base") == "org/base"
    with pytest.raises(RecipeError, match="not a Hub model id"):
        staging.base_model_hub_id(recipe, "a/b/c")
    for local in ("tiny-mistral", str(tmp_path)):
        with pytest.raises(RecipeError, match="has no Hub id"):
            staging.base_model_hub_id(
                recipe.model_copy(update={"model": recipe.model.model_copy(update={"name_or_path": local})})
            )

    from fintrl.checks.recipe import _publish_problems
    from fintrl.recipe.schema import PublishSection

    assert _publish_problems(PublishSection(base_model="org/base")) == []
    [problem] = _publish_problems(PublishSection(base_model="no slash"))
    assert problem.startswith("publish.base_model: 'no slash' is not a Hub model id")

    published = staging.portable_recipe(
        recipe_from_dict(
            {
                "model": {"name_or_path": str(tmp_path), "chat_template": str(trained["dir"] / "chat_template.jinja")},
                "data": {"mixture": [{"path": str(tmp_path / "a")}, {"source": "org/ds"}]},
                "output_dir": str(tmp_path / "r"),
            }
        ),
        base_model="org/base",
        folder_name="r",
    )
    assert published["model"]["name_or_path"] == "org/base" and published["output_dir"] == "r"
    assert published["model"]["chat_template"] == (trained["dir"] / "chat_template.jinja").read_text()
    assert [(m["path"], m["source"]) for m in published["data"]["mixture"]] == [("a", None), (None, "org/ds")]


@pytest.mark.parametrize("where", ["train_log.jsonl", "recipe.yaml", "tokenizer_config.json"])
def test_a_local_path_in_any_file_refuses_the_publish(trained, local_hub, tmp_path, capsys, where):
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    secret = str(Path.home() / "private" / "notes")
    if where == "train_log.jsonl":
        with (run_dir / where).open("a") as f:
            f.write(json.dumps({"note": f"see {secret}"}) + "\n")
    elif where == "recipe.yaml":  # a train value no portable rewrite knows
        edit(run_dir, where, lambda r: r["train"].update(logging_dir=secret))
    else:
        edit(run_dir, where, lambda c: c.update(name_or_path=str(tmp_path / "tokenizer")))
    with pytest.raises(RunFolderError, match=f"{re.escape(where)} of .* holds a path of this machine"):
        hub.publish(run_dir, REPO)
    assert main(["publish", str(run_dir), "--repo", REPO]) == 5
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert where in line and "publishes no local paths" in line
    assert not any(method == "POST" for method, _ in local_hub.requests) and local_hub.repos == {}


def test_a_run_from_before_portable_reports_publishes_portable_ones(trained, local_hub, tmp_path):
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    edit(
        run_dir,
        "metrics.json",
        lambda m: (
            m.update(model=str(tmp_path / "models" / "tiny-mistral")) or m["data"].update(source=str(trained["data"]))
        ),
    )
    hub.publish(run_dir, REPO)
    metrics = json.loads(Path(hf_hub_download(REPO, "metrics.json")).read_text())
    assert (metrics["model"], metrics["data"]["source"]) == ("tiny-mistral", "fin-news")


def test_fintrl_card_command(trained, tmp_path, capsys):
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    (run_dir / "README.md").unlink()
    assert main(["card", str(run_dir), "--repo", "org/fin"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "README.md")
    text = (run_dir / "README.md").read_text()
    assert 'pipeline("text-generation", model="org/fin", tokenizer=tokenizer)' in text and str(tmp_path) not in text
    assert "| unpublished | - |" in text
