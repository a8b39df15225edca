"""Scoring an eval split into a report: the one place a `metrics.json` is assembled (a run, `fintrl eval`, `fintrl
compare` for a side without predictions, and a merged export's own report all go through `score_report`).

The report is returned, not written: its owner (a run, `fintrl eval`, an export) adds what it knows and writes it
once through `fintrl.run_folder`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fintrl import distributed
from fintrl.data.loading import LabeledData
from fintrl.hub.staging import portable_name
from fintrl.recipe.schema import EvalSection
from fintrl.run_folder import (
    CONFUSION_MATRIX_PNG,
    COVERAGE_PNG,
    PREDICTIONS,
    RELIABILITY_PNG,
    Report,
    prediction_rows,
    write_predictions,
)

if TYPE_CHECKING:
    from fintrl.scoring.calibration import Calibration
    from fintrl.scoring.scorer import ScoreResult

FRAMEWORKS = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "fintrl")


def environment() -> dict[str, str | None]:
    """What a report was measured with: python, the frameworks' versions (None: not installed) and the device."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"python": platform.python_version(), **{name: installed(name) for name in FRAMEWORKS}, "device": device}


def score_report(
    gold: list[int],
    result: ScoreResult,
    labels: list[str],
    *,
    max_length: int,
    seconds: float | None = None,
) -> Report:
    """The headline metrics of scored (and calibrated) rows with their bootstrap intervals, the risk-coverage table,
    how they were scored, and the environment: what every report has."""
    from fintrl.metrics.classification import classification_metrics
    from fintrl.metrics.stats import bootstrap_intervals, risk_coverage

    report = classification_metrics(gold, result.predictions, labels, result.probabilities)
    report["intervals"] = bootstrap_intervals(gold, result.predictions, len(labels))
    report["coverage"] = risk_coverage(result.probabilities, result.predictions, gold)
    report["scoring"] = {
        "mode": result.mode,
        "n_truncated": result.n_truncated,
        "max_length": max_length,
        "n_invalid": result.n_invalid,
    }
    if seconds is not None:
        report["scoring"]["examples_per_second"] = round(len(gold) / seconds, 2)
    report["environment"] = environment()
    return report


def curve_point(gold: list[int], predictions: list[int], labels: list[str]) -> dict[str, Any]:
    """A learning-curve point's metrics with their bootstrap intervals, computed as a report's are, and the same
    metrics of answering the sample's most common label for every row (`majority`), so that a sweep's pruner weighs
    the point against its own noise and knows when the model has not yet left the majority plateau."""
    from fintrl.metrics.classification import classification_metrics
    from fintrl.metrics.stats import bootstrap_intervals

    point = classification_metrics(gold, predictions, labels)
    point["intervals"] = bootstrap_intervals(gold, predictions, len(labels))
    most_common = max(set(gold), key=gold.count)
    majority = classification_metrics(gold, [most_common] * len(gold), labels)
    point["majority"] = {key: majority[key] for key in ("accuracy", "f1_macro")}
    return point


def headline(gold: list[int], result: ScoreResult, labels: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1, NLL and ECE of scored rows: what a report lists of each part (an ensemble's members)."""
    from fintrl.metrics.classification import classification_metrics

    scored = classification_metrics(gold, result.predictions, labels, result.probabilities)
    return {key: scored[key] for key in ("accuracy", "f1_macro", "nll", "ece")}


class Scorer(Protocol):
    """What `evaluate` scores with: a `LabelScorer` (`LabelScorer.from_eval`), or an ensemble's
    (`fintrl.scoring.ensemble.EnsembleScorer`)."""

    def score_sharded(self, texts: list[str], progress: bool = True) -> ScoreResult: ...


def evaluate(
    scorer: Scorer,
    data: LabeledData,
    section: EvalSection,
    out_dir: Path,
    model_id: str = "",
    calibration: Calibration | None = None,
) -> Report:
    """Score the eval split and compute the report (+ baselines); write predictions and plots into `out_dir`.

    With a `calibration` (for the scorer's mode), the probabilities reported, written and plotted are calibrated
    ones, the report says how NLL, Brier and ECE changed, and the reliability diagram shows both. Under several
    processes each scores a shard; the main process alone reports (the others get an empty report)."""
    from fintrl.metrics.classification import baselines, classification_metrics
    from fintrl.metrics.plots import plot_confusion_matrix, plot_coverage, plot_reliability
    from fintrl.scoring.calibration import calibration_report

    texts, gold = data.eval["text"], data.eval["label"]
    start = time.perf_counter()
    result = scorer.score_sharded(texts)
    seconds = time.perf_counter() - start
    if not distributed.is_main():
        return Report()
    raw = result
    calibrated = calibration is not None and calibration.applies_to(result.mode)
    result = calibration.apply_result(raw) if calibrated else raw
    probabilities = result.probabilities
    metrics = score_report(gold, result, data.labels, max_length=section.max_length, seconds=seconds)
    if calibration is not None:
        metrics["calibration"] = calibration_report(calibration, raw, result, gold)
    metrics["model"] = portable_name(model_id)  # an offline name's Hub id, a Hub id, or a folder's name: never a path
    metrics["data"] = data.describe()
    if section.baselines:
        metrics["baselines"] = baselines(data.train["text"], data.train["label"], texts, gold, data.labels)
    if groups := data.eval_groups():  # a mixture: every source's eval split scored on its own too
        metrics["per_source"] = {}
        for name, rows in groups.items():
            sub_gold, sub_texts = [gold[i] for i in rows], [texts[i] for i in rows]
            sub = classification_metrics(
                sub_gold, [result.predictions[i] for i in rows], data.labels, probabilities[rows]
            )
            if section.baselines:
                sub["baselines"] = baselines(data.train["text"], data.train["label"], sub_texts, sub_gold, data.labels)
            metrics["per_source"][name] = sub
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = prediction_rows(texts, gold, data.labels, result.predictions, probabilities, result.raw_outputs)
    write_predictions(out_dir / PREDICTIONS, rows)
    plot_confusion_matrix(metrics, out_dir / CONFUSION_MATRIX_PNG)
    plot_reliability(probabilities, gold, out_dir / RELIABILITY_PNG, before=raw.probabilities if calibrated else None)
    plot_coverage(metrics["coverage"], out_dir / COVERAGE_PNG)
    return metrics
