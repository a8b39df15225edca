"""fintrl's own numbers in the experiment tracker a recipe reports to.

`train.report_to: trackio` sends the trainer's logs (loss, learning rate, ...) through transformers' own
`TrackioCallback`. What only fintrl knows is added to the same tracker run once the report is complete: the exact
scorer's learning curve at its steps, the final metrics with their 95 % intervals, the calibration, the confusion
matrix, reliability diagram, coverage and training plots as images, and the provenance as the run's config.
`report_to: mlflow` or `wandb` keep working as transformers provides them (the trainer's logs only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.run_folder import CONFUSION_MATRIX_PNG, COVERAGE_PNG, RELIABILITY_PNG, TRAINING_CURVE_PNG

if TYPE_CHECKING:
    from fintrl.recipe.schema import Recipe
    from fintrl.run_folder import Report

logger = logging.getLogger(__name__)

TRACKIO = "trackio"
DEFAULT_PROJECT = "fintrl"
PLOTS = {
    "plots/confusion_matrix": CONFUSION_MATRIX_PNG,
    "plots/reliability": RELIABILITY_PNG,
    "plots/coverage": COVERAGE_PNG,
    "plots/training": TRAINING_CURVE_PNG,
}
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "mcc", "ece", "nll", "brier")


def reports_to(train: dict[str, Any], tracker: str) -> bool:
    """The recipe's `train.report_to` names `tracker` (a string or a list)."""
    value = train.get("report_to", "none")
    return tracker in ([value] if isinstance(value, str) else list(value or []))


def run_defaults(recipe: Recipe, started: str) -> dict[str, str]:
    """The tracker project and run name when the recipe gives none: project `fintrl`, and the run folder's name with
    the time it started (a rerun into the same folder is a new tracker run, not more points on the old one)."""
    if not reports_to(recipe.train, TRACKIO):
        return {}
    return {"project": DEFAULT_PROJECT, "run_name": f"{Path(recipe.output_dir).name}-{started}"}


def log_report(
    report: Report, run_dir: Path, *, project: str, name: str, step: int, space_id: str | None = None
) -> None:
    """Add fintrl's numbers to the tracker run the trainer logged to (`project`/`name`, and its Space if it syncs to
    one), at `step` (the last)."""
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    previous = {k: v for k, v in (SQLiteStorage.get_run_config(project, name) or {}).items() if not k.startswith("_")}
    # resuming a run replaces its config: the trainer's is passed on with fintrl's beside it
    config = {**previous, **flatten(report.get("provenance", {}), "provenance"), "labels": list(labels(report))}
    trackio.init(
        project=project,
        name=name,
        space_id=space_id,
        resume="allow",
        config=config,
        auto_log_cpu=False,
        auto_log_gpu=False,
    )
    try:
        for point in report.get("learning_curve", []):
            trackio.log(
                {"curve/accuracy": point["curve_accuracy"], "curve/f1_macro": point["curve_f1_macro"]},
                step=point["step"],
            )
        trackio.log(final_metrics(report), step=step)
        images = {key: trackio.Image(run_dir / file) for key, file in PLOTS.items() if (run_dir / file).is_file()}
        if images:
            trackio.log(images, step=step)
    finally:
        trackio.finish()
    logger.info("tracker: fintrl's metrics, plots and provenance added to trackio run %s/%s", project, name)


def labels(report: Report) -> list[str]:
    return list(report.get("per_class", {}))


def final_metrics(report: Report) -> dict[str, float]:
    """The report's headline numbers, their interval bounds, per-class F1 and the calibration, as flat scalars."""
    out = {f"eval/{key}": float(report[key]) for key in HEADLINE if isinstance(report.get(key), (int, float))}
    for key, bounds in report.get("intervals", {}).items():
        if isinstance(bounds, list) and len(bounds) == 2:
            out[f"eval/{key}_low"], out[f"eval/{key}_high"] = float(bounds[0]), float(bounds[1])
    for label, scores in report.get("per_class", {}).items():
        out[f"eval/f1/{label}"] = float(scores["f1"])
    calibration = report.get("calibration") or {}
    if isinstance(calibration.get("temperature"), (int, float)):
        out["calibration/temperature"] = float(calibration["temperature"])
        check = calibration.get("check") or {}
        if isinstance(check.get("fitted_temperature"), (int, float)):
            out["calibration/fitted_temperature"] = float(check["fitted_temperature"])
        if "kept" in check:
            out["calibration/kept"] = float(bool(check["kept"]))
        if isinstance(calibration.get("labels_changed"), int):
            out["calibration/labels_changed"] = float(calibration["labels_changed"])
    return out


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """A nested record as `prefix/key/...` scalars (what a tracker's config table shows)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}/{key}").items()}
    return {prefix: value if isinstance(value, (str, int, float, bool)) or value is None else str(value)}
