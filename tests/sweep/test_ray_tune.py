"""`fintrl sweep --engine ray`: the same study's trials on Ray Tune, equal to Optuna's own loop when seeded alike;
a trial Ray's scheduler stops is pruned in the study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from fintrl.cli.main import main
from fintrl.sweep.ray_tune import FINAL, Search
from fintrl.sweep.settings import SweepSettings
from fintrl.sweep.study import sweep
from tests.sweep.test_sweep import recipe, space  # noqa: F401 - the fixture

SPACE = "train.learning_rate: {log_uniform: [1.0e-3, 1.0e-2]}\nlora.r: [2, 4]\n"


@pytest.mark.slow  # a local Ray cluster and two sweeps of three tiny trials: ~3 minutes on 2 cores
def test_ray_tune_runs_the_trials_optunas_loop_runs_when_seeded_alike(
    recipe: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = space(tmp_path, SPACE)
    alone = sweep(recipe, path, tmp_path / "optuna", settings=SweepSettings(trials=3, seed=5, prune=False))
    baseline = str(tmp_path / "optuna" / "baseline")
    out = tmp_path / "ray"
    argv = ["sweep", recipe, "--space", path, "--trials", "3", "--seed", "5", "--no-prune", "--output-dir", str(out)]
    assert main([*argv, "--engine", "ray", "--workers", "2", "--baseline", baseline]) == 0
    on_ray = json.loads((out / "sweep.json").read_text())
    assert on_ray["engine"] == "ray" and [t["state"] for t in on_ray["trials"]] == ["complete"] * 3
    assert [t["params"] for t in on_ray["trials"]] == [t["params"] for t in alone["trials"]]
    assert [t["value"] for t in on_ray["trials"]] == pytest.approx([t["value"] for t in alone["trials"]], abs=0.1)
    best = on_ray["best"]
    assert Path(best["run"], "metrics.json").is_file() and len(best["interval"]) == 2
    shown = capsys.readouterr().out
    assert "fintrl: trial 2: train.learning_rate=" in shown and "against the recipe's own settings" in shown


def test_a_trial_stopped_before_its_final_report_is_pruned_in_the_study() -> None:
    search = Search(
        space=lambda trial: {"x": trial.suggest_float("x", 0, 1)},
        metric="f1_macro",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    search.suggest("stopped"), search.suggest("finished")
    search.on_trial_result("stopped", {"f1_macro": 0.4, "training_iteration": 1})
    search.on_trial_complete("stopped", {"f1_macro": 0.4, "training_iteration": 1})
    search.on_trial_complete("finished", {"f1_macro": 0.7, "training_iteration": 3, FINAL: True})
    trials = search._ot_study.trials
    assert [t.state.name for t in trials] == ["PRUNED", "COMPLETE"] and trials[1].value == 0.7
