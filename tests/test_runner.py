"""A recipe's `seeds: [...]`: one ordinary run per seed, then their ensemble's report, resumable seed by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fintrl.cli.main import main

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny_test.yaml"
SMALL = ["data.max_train_samples=16", "data.max_eval_samples=8", "train.max_steps=2", "eval.baselines=false"]


def sets(*pairs: str) -> list[str]:
    return [a for pair in pairs for a in ("--set", pair)]


def test_seeds_train_a_run_each_and_report_their_ensemble(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fintrl.hub import publish as hub

    published: list = []
    monkeypatch.setattr(hub, "publish", lambda *args, **kwargs: published.append((args, kwargs)))
    out = tmp_path / "seeds"
    seeds = sets(*SMALL, "seeds=[3, 4]", "publish.repo_id=org/fin-seeds")
    assert main(["run", str(RECIPE), "--output-dir", str(out), *seeds]) == 0
    # the ensemble is published as one repo (`fintrl.hub.staging.stage_ensemble`), never a seed's run alone
    assert published == [((out / "ensemble", "org/fin-seeds"), {"version": None, "private": False})]
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index('{\n  "output_dir"') :])
    assert summary["output_dir"] == str(out / "ensemble")
    for seed in (3, 4):
        recipe = (out / f"seed{seed}" / "recipe.yaml").read_text()
        assert f"seed: {seed}\n" in recipe and "seeds: null" in recipe  # each an ordinary run, reproducible alone
        assert "repo_id: null" in recipe
        assert (out / f"seed{seed}" / "adapter_model.safetensors").is_file()
    report = json.loads((out / "ensemble" / "metrics.json").read_text())
    assert report["ensemble"]["members"] == [str(out / "seed3"), str(out / "seed4")]
    assert [m["name"] for m in report["ensemble"]["per_member"]] == report["ensemble"]["members"]
    assert json.loads((out / "ensemble" / "ensemble.json").read_text()) == {"members": ["../seed3", "../seed4"]}

    def probabilities(folder: Path) -> np.ndarray:
        rows = (folder / "predictions.jsonl").read_text().splitlines()
        return np.array([list(json.loads(row)["probabilities"].values()) for row in rows])

    # the ensemble's probabilities are the mean of the seeds' calibrated ones, as `fintrl eval A B` reports them
    assert main(["eval", str(out / "seed3"), str(out / "seed4"), "--output-dir", str(tmp_path / "eval")]) == 0
    np.testing.assert_allclose(probabilities(out / "ensemble"), probabilities(tmp_path / "eval"), atol=1e-6)

    # the ensemble folder is a target of its own: the same scores
    assert main(["eval", str(out / "ensemble"), "--output-dir", str(tmp_path / "again")]) == 0
    np.testing.assert_allclose(probabilities(out / "ensemble"), probabilities(tmp_path / "again"), atol=1e-6)

    # --resume keeps finished seeds; a third seed trains alone, and the ensemble is scored again over all three
    stamp = (out / "seed3" / "adapter_model.safetensors").stat().st_mtime_ns
    args = ["run", str(RECIPE), "--output-dir", str(out), "--resume", *sets(*SMALL, "seeds=[3, 4, 5]")]
    assert main(args) == 0
    assert (out / "seed3" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert len(json.loads((out / "ensemble" / "metrics.json").read_text())["ensemble"]["members"]) == 3
    # without --resume or --overwrite, nothing is replaced
    assert main(["run", str(RECIPE), "--output-dir", str(out), *sets(*SMALL, "seeds=[3, 4]")]) == 5
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["seeds=[3, 3]"], "lists a seed twice"),
        (["seeds=[3]"], "seeds"),
        (["seeds=[3, 4]", "eval.mode=generate"], "eval.mode generate has none"),
    ],
)
def test_bad_seeds_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert main(["run", str(RECIPE), "--output-dir", str(tmp_path / "x"), *sets(*SMALL, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fintrl: error: ") and message in err
    assert not (tmp_path / "x").exists()
