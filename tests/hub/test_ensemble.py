"""An ensemble as one Hub repo: `fintrl publish ENSEMBLE_FOLDER` stages each member's run into a subfolder beside the
ensemble's report and card, and `fintrl predict|eval|serve REPO` resolve the repo as the ensemble, with the scores of
the folder it was published from. Against the local Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download

from fintrl.cli.main import main
from fintrl.errors import HubError, RecipeError
from fintrl.hub.versions import list_versions
from tests.helpers import BASE_REPO, python_block, upload_tiny_base

ENSEMBLE_REPO = "fintrl-test/fin-ensemble"
TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The plant closes and 300 jobs go."]


def predict(capsys: pytest.CaptureFixture[str], *targets: str) -> list[dict]:
    assert main(["predict", *targets, *[a for t in TEXTS for a in ("--text", t)]]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]


@pytest.fixture
def ensemble_folder(tiny_run: Path, second_run: Path, tmp_path: Path) -> Path:
    """`fintrl eval A B`'s output: the ensemble's report, and ensemble.json naming the two run folders."""
    out = tmp_path / "ensemble"
    assert main(["eval", str(tiny_run), str(second_run), "--output-dir", str(out)]) == 0
    return out


def test_an_ensemble_folder_names_its_members_and_scores_as_one_target(
    ensemble_folder: Path, tiny_run: Path, second_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = json.loads((ensemble_folder / "ensemble.json").read_text())["members"]
    assert [(ensemble_folder / m).resolve() for m in members] == [tiny_run.resolve(), second_run.resolve()]
    assert all(not Path(m).is_absolute() for m in members)  # the folders move together
    assert predict(capsys, str(ensemble_folder)) == predict(capsys, str(tiny_run), str(second_run))
    from fintrl.scoring.targets import resolve_target

    with pytest.raises(RecipeError, match="is an ensemble of 2 adapters, and this command takes one"):
        resolve_target(str(ensemble_folder))  # audit, export, compare, Ray: one adapter


def test_compare_scores_an_ensemble_folder_without_predictions(
    ensemble_folder: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """An ensemble side that lacks predictions is scored on the other side's rows as `fintrl eval` scores it."""
    saved = (ensemble_folder / "predictions.jsonl").read_text().splitlines()
    (ensemble_folder / "predictions.jsonl").unlink()
    assert main(["compare", str(tiny_run), str(ensemble_folder), "--output", str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["b_rows"] != "saved predictions"
    right = [json.loads(r)["prediction"] == json.loads(r)["gold"] for r in saved]
    assert report["metrics"]["accuracy"]["b"] == pytest.approx(sum(right) / len(right))


def test_an_ensemble_publishes_as_one_repo_that_scores_as_the_folder(
    ensemble_folder: Path,
    local_hub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: str,
) -> None:
    upload_tiny_base(tiny_model_dir)
    local = predict(capsys, str(ensemble_folder))
    assert main(["publish", str(ensemble_folder), "--repo", ENSEMBLE_REPO, "--base-model", BASE_REPO]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1.0.0"

    files = set(HfApi().list_repo_files(ENSEMBLE_REPO))
    for member in ("run", "run-1"):  # both members' folders are named `run`: the second is numbered
        assert {f"{member}/adapter_model.safetensors", f"{member}/recipe.yaml", f"{member}/prompt.json"} <= files
        assert f"{member}/README.md" not in files  # the ensemble's card describes them
    assert {"README.md", "ensemble.json", "metrics.json", "predictions.jsonl"} <= files
    definition = json.loads(Path(hf_hub_download(ENSEMBLE_REPO, "ensemble.json")).read_text())
    assert definition == {"members": ["run", "run-1"]}
    report = json.loads(Path(hf_hub_download(ENSEMBLE_REPO, "metrics.json")).read_text())
    assert report["ensemble"]["members"] == ["run", "run-1"] and "source" not in report["ensemble"]
    assert [m["name"] for m in report["ensemble"]["per_member"]] == ["run", "run-1"]
    for name in files:  # no path of this machine in any published text file
        text = Path(hf_hub_download(ENSEMBLE_REPO, name)).read_bytes()
        assert str(tmp_path).encode() not in text and str(Path.home()).encode() not in text, name
    card = Path(hf_hub_download(ENSEMBLE_REPO, "README.md")).read_text()
    assert "- ensemble" in card and f"base_model: {BASE_REPO}" in card
    assert f"fintrl predict {ENSEMBLE_REPO}@v1.0.0" in card and "| **the ensemble** |" in card
    assert "[`run-1`](run-1/recipe.yaml)" in card
    [version] = list_versions(ENSEMBLE_REPO)
    assert version["base_model"] == BASE_REPO and version["accuracy"] == report["accuracy"]

    monkeypatch.setattr("fintrl.model.loading.OFFLINE_MODELS", {})  # a fresh machine: the base comes from the Hub
    published = predict(capsys, f"{ENSEMBLE_REPO}@v1.0.0")
    for row, expected in zip(published, local):
        assert row["label"] == expected["label"]
        assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)

    namespace: dict = {}
    exec(python_block(card, "PeftModel"), namespace)  # one member alone, from its subfolder
    assert type(namespace["model"]).__name__ == "PeftModelForCausalLM"
    assert namespace["model"].peft_config["default"].base_model_name_or_path == BASE_REPO


def test_a_published_ensemble_is_served_under_its_repo_and_version(
    ensemble_folder: Path, local_hub, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str
) -> None:
    from fintrl.hub.publish import publish
    from fintrl.scoring.ensemble import resolve_ensemble
    from fintrl.serve.app import create_app
    from tests.serve.test_serve import running, wait_ready

    upload_tiny_base(tiny_model_dir)
    publish(ensemble_folder, ENSEMBLE_REPO, base_model=BASE_REPO)
    monkeypatch.setattr("fintrl.model.loading.OFFLINE_MODELS", {})
    ensemble = resolve_ensemble([f"{ENSEMBLE_REPO}@v1.0.0"])
    assert [m.name for m in ensemble.members] == [f"{ENSEMBLE_REPO}/run@v1.0.0", f"{ENSEMBLE_REPO}/run-1@v1.0.0"]
    with running(create_app(ensemble.members[0], ensemble=ensemble)) as url:
        wait_ready(url)
        info = httpx.get(url + "/info").json()
    assert info["model"] == ENSEMBLE_REPO and info["version"] == "v1.0.0"
    assert info["ensemble"]["source"] == f"{ENSEMBLE_REPO}@v1.0.0"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (["../outside", "run"], "member '../outside' is not a subfolder's name"),
        (["run"], "must list two or more member folders"),
        (["run", "missing"], "its member missing is no folder beside it"),
    ],
)
def test_a_hostile_ensemble_repo_is_refused_in_one_line(
    ensemble_folder: Path, local_hub, capsys: pytest.CaptureFixture[str], members: list[str], message: str
) -> None:
    from fintrl.hub.publish import publish

    publish(ensemble_folder, ENSEMBLE_REPO, base_model=BASE_REPO)
    HfApi().upload_file(
        path_or_fileobj=json.dumps({"members": members}).encode(), path_in_repo="ensemble.json", repo_id=ENSEMBLE_REPO
    )
    assert main(["predict", ENSEMBLE_REPO, "--text", TEXTS[0]]) == 6
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fintrl: error: ") and message in err and ENSEMBLE_REPO in err
    with pytest.raises(HubError, match="the downloaded repo is not usable"):
        from fintrl.scoring.ensemble import resolve_scored

        resolve_scored([ENSEMBLE_REPO])


def test_fintrl_card_renders_an_ensemble_folders_card(ensemble_folder: Path, capsys) -> None:
    assert main(["card", str(ensemble_folder), "--repo", "org/fin-ensemble"]) == 0
    card = (ensemble_folder / "README.md").read_text()
    assert capsys.readouterr().out.strip() == str(ensemble_folder / "README.md")
    assert "fintrl predict org/fin-ensemble --text" in card and "[`run-1`](run-1/recipe.yaml)" in card
    report = json.loads((ensemble_folder / "metrics.json").read_text())
    assert f"| **the ensemble** | | **{report['accuracy']:.3f}** |" in card


def test_an_ensemble_is_not_published_as_a_merged_model(ensemble_folder: Path, capsys) -> None:
    assert main(["publish", str(ensemble_folder), "--repo", ENSEMBLE_REPO, "--merged"]) == 5
    assert "is an ensemble: publish it without --merged" in capsys.readouterr().err
