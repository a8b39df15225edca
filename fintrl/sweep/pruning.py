"""Pruning that stops a trial only on a gap beyond its learning-curve point's own noise, on either engine.

A curve point scores a small validation sample (`eval.curve_samples` rows, 256 by default), so two trials' points
differ by several rows by chance alone. Optuna's `MedianPruner` and Ray's `MedianStoppingRule` stop a trial on any
gap below the median, and in a real sweep (benchmarks/README.md, `fpb_50agree`) they stopped a trial with nearly the
best one's settings 0.015 below it, a quarter of that point's half-interval. Here a trial is stopped only when it
trails the median of the finished trials at the same step by more than the half-width of its own point's 95 %
bootstrap interval; neither engine's median rule takes a margin, so the Optuna pruner is written here (the median and
the comparison, a few lines) and Ray's rule is subclassed in `fintrl.sweep.ray_tune`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

MARGIN = "fintrl_margin"  # a trial's user attribute (Optuna) or report key (Ray): its latest point's noise


def margin(metrics: dict[str, Any], metric: str) -> float:
    """Half the width of the curve point's 95 % bootstrap interval of `metric` (`LearningCurve` hands it over)."""
    low, high = metrics["intervals"][metric]
    return (high - low) / 2


def trails(value: float, median: float, slack: float, *, maximize: bool) -> bool:
    """Whether `value` is worse than `median` by more than `slack`."""
    return value < median - slack if maximize else value > median + slack


class MarginPruner(optuna.pruners.BasePruner):
    """The median rule with a margin: prune when the trial's latest point trails the median of the completed trials'
    points at the same step by more than the point's noise (`MARGIN`, set by the trial before it reports), once
    `startup_trials` trials have completed."""

    def __init__(self, startup_trials: int = 2) -> None:
        self.startup_trials = startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        if len(completed) < self.startup_trials or not others:
            return False
        return trails(
            trial.intermediate_values[step],
            float(np.median(others)),
            float(trial.user_attrs.get(MARGIN, 0.0)),
            maximize=study.direction == StudyDirection.MAXIMIZE,
        )
