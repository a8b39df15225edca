"""`train.report_to: trackio`: the trainer's logs and fintrl's own numbers (learning curve, final metrics with their
intervals, calibration, plots, provenance) land in one trackio run, in trackio's local storage (TRACKIO_DIR, set for
the session by conftest), nothing leaving the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fintrl.cli.main import main
from fintrl.tracking import final_metrics, flatten, reports_to
from tests.helpers import tiny_recipe_dict


def test_a_run_reporting_to_trackio_logs_fintrls_numbers_into_the_trainers_run(
    tmp_path: Path, fintrl_home: Path
) -> None:
    from trackio.sqlite_storage import SQLiteStorage

    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    raw = tiny_recipe_dict(tmp_path / "tracked")
    raw["train"] |= {"max_steps": 4, "report_to": "trackio"}
    raw["eval"] |= {"curve_points": 2, "baselines": False}
    report = run(recipe_from_dict(raw))

    (name,) = [n for n in SQLiteStorage.get_runs("fintrl") if n.startswith("tracked-")]  # the run folder's name + time
    logs = SQLiteStorage.get_logs("fintrl", name)
    assert any("train/loss" in row for row in logs)  # transformers' TrackioCallback: the trainer's own logs
    curve = [(row["step"], row["curve/accuracy"]) for row in logs if "curve/accuracy" in row]
    assert curve == [(p["step"], p["curve_accuracy"]) for p in report["learning_curve"]] and curve[0][0] == 0
    final = next(row for row in logs if "eval/accuracy" in row)
    assert final["eval/accuracy"] == pytest.approx(report["accuracy"]) and final["step"] == 4
    assert final["eval/f1_macro_low"] <= report["f1_macro"] <= final["eval/f1_macro_high"]
    images = next(row for row in logs if "plots/confusion_matrix" in row)
    assert images["plots/confusion_matrix"]["_type"] == "trackio.image" and "plots/reliability" in images

    config = SQLiteStorage.get_run_config("fintrl", name)
    assert config["provenance/recipe_sha256"] == report["provenance"]["recipe_sha256"]
    assert config["provenance/data/eval_sha256"] == report["provenance"]["data"]["eval_sha256"]
    assert config["learning_rate"] == pytest.approx(2e-4)  # the trainer's config is kept beside fintrl's
    assert (fintrl_home / "trackio" / "fintrl.db").is_file()  # local storage only


def test_final_metrics_are_flat_scalars_with_interval_bounds_and_calibration() -> None:
    report = {
        "accuracy": 0.9,
        "f1_macro": 0.8,
        "intervals": {"accuracy": [0.85, 0.95], "method": "bootstrap"},
        "per_class": {"negative": {"f1": 0.7}, "positive": {"f1": 0.9}},
        "calibration": {"temperature": 1.0, "check": {"fitted_temperature": 1.7, "kept": False}},
    }
    assert final_metrics(report) == {
        "eval/accuracy": 0.9,
        "eval/f1_macro": 0.8,
        "eval/accuracy_low": 0.85,
        "eval/accuracy_high": 0.95,
        "eval/f1/negative": 0.7,
        "eval/f1/positive": 0.9,
        "calibration/temperature": 1.0,
        "calibration/fitted_temperature": 1.7,
        "calibration/kept": 0.0,
    }
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}, "p") == {"p/a/b": 1, "p/a/c": "[1, 2]", "p/d": None}
    assert reports_to({"report_to": ["trackio", "mlflow"]}, "trackio") and not reports_to({}, "trackio")


def test_a_tracker_that_is_not_installed_is_one_line_before_anything_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert main(["validate", "recipes/quickstart.yaml", "--set", "train.report_to=[wandb]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fintrl: error: invalid recipe: train.report_to: wandb is not installed: pip install wandb"
    assert json.dumps(err).count("\\n") == 0
