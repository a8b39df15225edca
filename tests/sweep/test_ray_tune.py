"""`fintrl sweep --engine ray`: the same study's trials on Ray Tune, equal to Optuna's own loop when seeded alike;
a trial Ray's scheduler stops is pruned in the study, and it stops a trial only beyond its curve point's noise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from fintrl.cli.main import main
from fintrl.sweep.pruning import FLOOR, MARGIN
from fintrl.sweep.ray_tune import FINAL, MarginStoppingRule, Search
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


def test_rays_stopping_rule_stops_only_beyond_a_points_noise() -> None:
    """Two trials at 0.9 and 0.8 (median 0.85): 0.78 +- 0.1 is noise and trains on; 0.5 +- 0.1 is stopped."""
    rule = MarginStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2)
    rule.set_search_properties("f1_macro", "max")

    controller = SimpleNamespace(get_live_trials=list)  # no trial waiting: too few samples means continue

    @dataclass(frozen=True)
    class Trial:  # what the rule reads of Tune's trials
        trial_id: str

    def point(trial_id: str, value: float) -> str:
        result = {"training_iteration": 1, "f1_macro": value, MARGIN: 0.1}
        return rule.on_trial_result(controller, Trial(trial_id), result)

    point("a", 0.9), point("b", 0.8)
    assert point("c", 0.78) == MarginStoppingRule.CONTINUE
    assert point("d", 0.5) == MarginStoppingRule.STOP


@pytest.mark.parametrize(("level", "action"), [(0.27, MarginStoppingRule.CONTINUE), (0.1, MarginStoppingRule.STOP)])
def test_rays_stopping_rule_spares_a_point_on_the_majority_plateau_another_trial_shared(
    level: float, action: str
) -> None:
    """Against 0.9, 0.27 and 0.5 (median 0.5), 0.27 +- 0.013 trains on only where 0.27 is what answering the most
    common label scores: the other trial at 0.27 sat on the same plateau."""
    rule = MarginStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2)
    rule.set_search_properties("f1_macro", "max")
    controller = SimpleNamespace(get_live_trials=list)

    @dataclass(frozen=True)
    class Trial:
        trial_id: str

    def point(trial_id: str, value: float) -> str:
        result = {"training_iteration": 1, "f1_macro": value, MARGIN: 0.013, FLOOR: level}
        return rule.on_trial_result(controller, Trial(trial_id), result)

    point("a", 0.9), point("b", 0.27), point("c", 0.5)
    assert point("d", 0.27) == action
