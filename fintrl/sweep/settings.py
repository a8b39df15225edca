"""How a sweep runs: its settings, the metrics it can optimise and the engines that run its trials."""

from __future__ import annotations

from dataclasses import dataclass

METRICS = {
    "f1_macro": "maximize",
    "accuracy": "maximize",
    "f1_weighted": "maximize",
    "mcc": "maximize",
    "precision_macro": "maximize",
    "recall_macro": "maximize",
    "nll": "minimize",
    "ece": "minimize",
    "brier": "minimize",
}
ENGINES = ("optuna", "ray")


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs: `trials` in all (a resumed sweep runs only those missing), the `metric` to optimise, the
    sampler's `seed`, median pruning on or off, which trial folders to `keep` ("best" or "all"), and an existing run
    of the recipe to compare against (`baseline`; default: trained into the sweep folder)."""

    trials: int = 20
    metric: str = "f1_macro"
    seed: int = 0
    prune: bool = True
    keep: str = "best"
    baseline: str | None = None
    engine: str = "optuna"  # or "ray": Ray Tune runs the trials, `workers` at a time, on the cluster at `address`
    workers: int = 1
    address: str | None = None
