"""`fintrl reproduce`: CPU training is deterministic, so a run retrained from its recipe gives the same adapter, bit
for bit; another seed gives another one. And the provenance every run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fintrl.cli.main import main
from tests.helpers import tiny_recipe_dict, tree_hash


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    out = tmp_path_factory.mktemp("reproduce") / "run"
    raw = tiny_recipe_dict(out)
    raw["train"] |= {"max_steps": 3}
    raw["eval"] |= {"baselines": False}
    run(recipe_from_dict(raw))
    return out


def test_the_same_seed_gives_the_same_adapter_and_another_seed_another(small_run: Path, capsys) -> None:
    before = tree_hash(small_run)
    assert main(["reproduce", str(small_run)]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["bit_identical"] and same["max_abs_dw"] == 0.0 and same["prediction_agreement"] == 1.0
    assert same["same_data"] is True and same["adapter_sha256"][0] == same["adapter_sha256"][1]
    assert main(["reproduce", str(small_run), "--seed", "7"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert not other["bit_identical"] and other["max_abs_dw"] > 0 and other["seed"] == 7
    assert tree_hash(small_run) == before  # retrained aside: the run is untouched


def test_every_run_records_its_provenance(small_run: Path) -> None:
    from fintrl.provenance import recipe_hash, rows_fingerprint
    from fintrl.run_folder import RunFolder

    run = RunFolder(small_run)
    record = run.metrics()["provenance"]
    assert record["recipe_sha256"] == recipe_hash(run.recipe())
    assert len(record["data"]["train_sha256"]) == 64 and record["data"]["train_sha256"] != record["data"]["eval_sha256"]
    assert set(record["data"]["files"]) == {"train.csv", "validation.csv"}  # the packaged sample's files, by name
    assert record["seed"] == 42 and record["hardware"]["world_size"] == 1 and record["hardware"]["device"] == "cpu"
    assert record["base_model"]["offline_build"] == "tiny-mistral" and record["base_model"]["weights_sha256"]
    assert record["code"]["fintrl"]
    card = (small_run / "README.md").read_text()
    assert "## Provenance" in card and record["data"]["eval_sha256"][:16] in card

    from datasets import Dataset

    rows = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    assert rows_fingerprint(rows, ["x", "y"]) != rows_fingerprint(rows, ["y", "x"])  # label names count
    assert rows_fingerprint(rows, ["x", "y"]) == rows_fingerprint(Dataset.from_dict(rows.to_dict()), ["x", "y"])
