"""`fintrl sweep --engine ray`: the sweep's trials on Ray Tune, several at a time across a cluster's CPUs and GPUs.

The study stays the sweep's own: Ray's `OptunaSearch` drives the Optuna study in the sweep folder (the same seeded TPE
sampler, the same SQLite storage), so a seeded sweep proposes the same values in the same order on either engine and
a stopped sweep resumes from its study whichever engine ran it. Ray's `MedianStoppingRule`, given the margin of
`fintrl.sweep.pruning`, stops a trial whose best learning-curve point trails the median of the other trials' by more
than the point's own noise. Each trial is an ordinary run folder in the sweep folder, trained by a Ray worker with its
share of the CPUs, or a GPU each where the cluster has them; on a cluster of several machines the sweep folder, the
recipe and its data must be on storage every node reads.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from ray import tune
from ray.tune.schedulers import MedianStoppingRule
from ray.tune.search.optuna import OptunaSearch

from fintrl.sweep.pruning import FLOOR, MARGIN, floor, margin, shares_plateau
from fintrl.sweep.results import fmt_value, remove_run, trial_dir, write_results
from fintrl.sweep.trial import CURVE, run_trial

if TYPE_CHECKING:
    from fintrl.sweep.settings import SweepSettings
    from fintrl.sweep.space import Dimension

NUMBER = "fintrl_trial"  # the config key that carries the study's trial number to the worker
FINAL = "fintrl_final"  # marks a trial's last report (its eval metric): a trial stopped before it is pruned


class Search(OptunaSearch):
    """A trial that ends without its final report was stopped by the scheduler: pruned in the study, not
    complete with a learning-curve value."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result if result and result.get(FINAL) else None, error)


class MarginStoppingRule(MedianStoppingRule):
    """Ray's median rule with fintrl's margin: a trial's best point is taken as better by its latest point's noise
    (the `MARGIN` it reports), so it stops only when it trails the median by more than that, and never on the
    majority plateau (`FLOOR`) where another trial's point at the same time sat too."""

    def _best_result(self, trial: Any) -> float:
        best = super()._best_result(trial)
        slack = next((r[MARGIN] for r in reversed(self._results[trial]) if MARGIN in r), 0.0)
        if self._mode != "max":
            return best - slack
        latest = self._results[trial][-1]
        time = latest[self._time_attr]
        others = [
            r[self._metric]
            for other in self._trials_beyond_time(time)
            if other is not trial
            for r in self._results[other]
            if r[self._time_attr] == time
        ]
        return math.inf if shares_plateau(latest[self._metric], latest.get(FLOOR), slack, others) else best + slack


class Space:
    """Define-by-run: the suggest calls the Optuna engine makes, and the trial's number for its run folder (a class,
    not a closure: Ray pickles the searcher)."""

    def __init__(self, dims: list[Dimension]) -> None:
        self.dims = dims

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        for dim in self.dims:
            dim.suggest(trial)
        return {NUMBER: trial.number}


class Progress(tune.Callback):
    """One line per trial started and ended; sweep.json and its plot rewritten after each."""

    def __init__(
        self, study: optuna.Study, dims: list[Dimension], out: Path, spec: dict[str, Any], baseline: Path
    ) -> None:
        self.study, self.dims, self.out, self.spec, self.baseline = study, dims, out, spec, baseline

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        values = ", ".join(f"{d.field}={fmt_value(trial.config[d.field])}" for d in self.dims)
        print(f"fintrl: trial {trial.config[NUMBER]}: {values}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number, last, metric = trial.config[NUMBER], trial.last_result or {}, self.spec["metric"]
        if last.get(FINAL):
            print(f"fintrl: trial {number}: {metric} {last[metric]:.4f}", flush=True)
        else:
            remove_run(trial_dir(self.out, number))
            value, slack = last.get(metric, float("nan")), last.get(MARGIN, float("nan"))
            print(f"fintrl: trial {number} pruned: {metric} {value:.3f} ± {slack:.3f}, below the median beyond noise")
        write_results(self.out, self.spec, self.study, self.dims, baseline=self.baseline)


def run_on_ray(
    study: optuna.Study,
    storage: str,
    dims: list[Dimension],
    recipe_path: str,
    overrides: list[str],
    out: Path,
    settings: SweepSettings,
    remaining: int,
    spec: dict[str, Any],
    baseline: Path,
) -> None:
    """Run `remaining` trials of `study` (stored at `storage`) on Ray Tune, `settings.workers` at a time."""
    from ray.tune.schedulers import FIFOScheduler

    from fintrl.ray_cluster import start_ray, unwrap

    if remaining == 0:
        return
    # fintrl prints its own lines and writes its own results: not Ray's status box, nor its CSV/JSON/TensorBoard logs
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    mode = "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    metric = settings.metric

    started = start_ray(settings.address, verbose=False)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        gpus = 1 if _cluster_gpus() >= 1 else 0
        cpus = 1 if gpus else max(1, _cluster_cpus() // settings.workers)
        job = {
            "cwd": os.getcwd(),
            "recipe": str(Path(recipe_path).resolve()),
            "overrides": overrides,
            "out": str(out.resolve()),
            "fields": [d.field for d in dims],
            "metric": metric,
            "prune": settings.prune and metric in CURVE,
        }
        scheduler = (
            MarginStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2)
            if settings.prune
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, job=job), {"cpu": cpus, "gpu": gpus}),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=Search(
                    space=Space(dims),
                    metric=metric,
                    mode=mode,
                    sampler=optuna.samplers.TPESampler(seed=settings.seed),
                    study_name=study.study_name,
                    storage=optuna.storages.RDBStorage(storage),
                ),
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=settings.workers,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(out.resolve() / "ray"),
                verbose=0,
                callbacks=[Progress(study, dims, out, spec, baseline)],
                failure_config=tune.FailureConfig(fail_fast=True),
            ),
        )
        grid = tuner.fit()
        if grid.errors:
            raise unwrap(grid.errors[0])
    finally:
        if started:
            import ray

            ray.shutdown()


def _trainable(config: dict[str, Any], job: dict[str, Any]) -> None:
    """One trial in a Ray worker: each learning-curve point reported to Tune (whose scheduler may stop the trial
    there), then the trial's eval metric as its final report."""
    from ray import tune

    os.chdir(job["cwd"])  # Tune starts each trial in a folder of its own; the recipe's relative paths are the user's
    metric = job["metric"]

    def report(step: int, metrics: dict[str, Any]) -> None:
        if step:  # before training every trial scores the same
            slack, level = margin(metrics, metric), floor(metrics, metric)
            tune.report({metric: float(metrics[metric]), "step": step, MARGIN: slack, FLOOR: level})

    values = {field: config[field] for field in job["fields"]}
    result = run_trial(
        config[NUMBER], values, job["recipe"], job["overrides"], Path(job["out"]), report if job["prune"] else None
    )
    tune.report({metric: float(result[metric]), FINAL: True})


def _cluster_cpus() -> int:
    import ray

    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(nodes, default=1))


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)
