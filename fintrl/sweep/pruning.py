"""Pruning that stops a trial only on a gap beyond its learning-curve point's own noise, on either engine.

A curve point scores a small validation sample (`eval.curve_samples` rows, 256 by default), so two trials' points
differ by several rows by chance alone. Optuna's `MedianPruner` and Ray's `MedianStoppingRule` stop a trial on any
gap below the median, and in a real sweep (benchmarks/README.md, `fpb_50agree`) they stopped a trial with nearly the
best one's settings 0.015 below it, a quarter of that point's half-interval. Here a trial is stopped only when it
trails the median of the finished trials at the same step by more than the half-width of its own point's 95 %
bootstrap interval; neither engine's median rule takes a margin, so the Optuna pruner is written here (the median and
the comparison, a few lines) and Ray's rule is subclassed in `fintrl.sweep.ray_tune`.

Nor is a trial stopped on the majority plateau (a point no better than answering the sample's most common label)
where another trial's point at the same step sat too. Such a point's interval is narrow, because the model answers
the same whatever rows are drawn, yet it does not say where a trial ends: in a TFNS sweep (benchmarks/README.md) the
baseline and three trials shared the all-`neutral` point at a third of training, and from it one ended 0.555 and
another 0.448.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

MARGIN = "fintrl_margin"  # a trial's user attribute (Optuna) or report key (Ray): its latest point's noise
FLOOR = "fintrl_floor"  # likewise: the curve sample's score when every row gets its most common label


def margin(metrics: dict[str, Any], metric: str) -> float:
    """Half the width of the curve point's 95 % bootstrap interval of `metric` (`LearningCurve` hands it over)."""
    low, high = metrics["intervals"][metric]
    return (high - low) / 2


def floor(metrics: dict[str, Any], metric: str) -> float | None:
    """The curve sample's `metric` when every row gets its most common label (`curve_point`'s `majority`)."""
    return metrics.get("majority", {}).get(metric)


def shares_plateau(value: float, level: float | None, slack: float, others: list[float]) -> bool:
    """Whether a point is no better than the majority answer's score `level` (within its noise `slack`) while one of
    the other trials' points at the same step is there too: then the point is no evidence against the trial."""
    if level is None:
        return False
    top = level + slack
    return value <= top and any(other <= top for other in others)


def trails(value: float, median: float, slack: float, *, maximize: bool) -> bool:
    """Whether `value` is worse than `median` by more than `slack`."""
    return value < median - slack if maximize else value > median + slack


def median_at(study: optuna.Study, step: int) -> float | None:
    """The median of the completed trials' learning-curve points at `step`; None before any reached it."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
    return float(np.median(points)) if points else None


class MarginPruner(optuna.pruners.BasePruner):
    """The median rule with a margin: prune when the trial's latest point trails the median of the completed trials'
    points at the same step by more than the point's noise (`MARGIN`, set by the trial before it reports), once
    `startup_trials` trials have completed; never on the majority plateau a completed trial shared at that step
    (`FLOOR`, set likewise)."""

    def __init__(self, startup_trials: int = 2) -> None:
        self.startup_trials = startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        median = median_at(study, step)
        if len(completed) < self.startup_trials or median is None:
            return False
        value, slack = trial.intermediate_values[step], float(trial.user_attrs.get(MARGIN, 0.0))
        maximize = study.direction == StudyDirection.MAXIMIZE
        if maximize and shares_plateau(value, trial.user_attrs.get(FLOOR), slack, others):
            return False
        return trails(value, median, slack, maximize=maximize)
