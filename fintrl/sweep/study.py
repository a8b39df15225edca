"""`fintrl sweep`: an Optuna study over a recipe's fields, each trial an ordinary run folder, the objective a metric
of fintrl's exact scorer on the recipe's eval split (never the training loss).

Optuna's TPE sampler picks each trial's values; a median pruner stops a trial whose learning-curve point (the
scorer's accuracy or macro-F1 during training) trails the median of finished trials at the same step by more than
the point's own noise (`fintrl.sweep.pruning`). The study
lives in SQLite inside the sweep folder, so a sweep stopped by Ctrl-C resumes where it was when the same command is
run again (the trial it interrupted is discarded). `engine="ray"` runs the same study's trials on Ray Tune, several
at a time across a cluster's CPUs and GPUs (`fintrl.sweep.ray_tune`). The recipe's own settings are trained once as
the baseline (or `baseline=` names an existing run of it), and the best trial is compared with it by `fintrl
compare`'s paired tests: a sweep says whether it found a real gain, not just a higher number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fintrl.errors import RecipeError, RunFolderError
from fintrl.run_folder import RunFolder, write_atomic
from fintrl.sweep.results import remove_run, trial_dir
from fintrl.sweep.settings import ENGINES, METRICS, SweepSettings
from fintrl.sweep.space import Dimension, check_space, load_space
from fintrl.sweep.trial import CURVE, run_trial

logger = logging.getLogger(__name__)

SPEC = "sweep_spec.json"  # what the folder's study searches: a rerun resumes only the same sweep
STUDY_DB = "optuna.db"


def sweep(
    recipe_path: str,
    space_path: str,
    output_dir: str | Path,
    *,
    settings: SweepSettings | None = None,
    overrides: list[str] = (),
) -> dict[str, Any]:
    """Run (or resume) the sweep; returns what `sweep.json` holds.

    ```python
    result = sweep("recipes/quickstart.yaml", "space.yaml", "runs/sweeps/quickstart", settings=SweepSettings(trials=8))
    result["best"]["params"], result["comparison"]["verdict"]
    ```
    """
    settings = settings or SweepSettings()
    try:
        import optuna
        from optuna.trial import TrialState
    except ImportError:
        raise RecipeError("fintrl sweep needs Optuna, which is not installed: pip install 'fintrl[sweep]'") from None

    from fintrl.sweep.pruning import MarginPruner
    from fintrl.sweep.results import finish, write_results

    if settings.metric not in METRICS:
        raise RecipeError(f"--metric {settings.metric}: expected one of {', '.join(METRICS)}")
    if settings.keep not in ("best", "all"):
        raise RecipeError(f"--keep {settings.keep}: expected best or all")
    if settings.engine not in ENGINES:
        raise RecipeError(f"--engine {settings.engine}: expected one of {', '.join(ENGINES)}")
    if settings.engine == "ray":
        from fintrl.ray_cluster import require_ray

        require_ray("tune")
    dims = load_space(space_path)
    check_space(dims, recipe_path, list(overrides))
    out = Path(output_dir)
    spec = _spec(recipe_path, dims, settings, list(overrides))
    _prepare(out, spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / STUDY_DB).resolve()}"
    study = optuna.create_study(
        study_name="fintrl",
        storage=storage,
        load_if_exists=True,
        direction=METRICS[settings.metric],
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=MarginPruner(startup_trials=2) if settings.prune else optuna.pruners.NopPruner(),
    )
    _discard_unfinished(study, out)
    baseline = _baseline(recipe_path, list(overrides), out, settings.baseline)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    remaining = max(0, settings.trials - len(finished))
    if finished:
        print(f"fintrl: resuming the sweep in {out}: {len(finished)} trials done, {remaining} to go")

    if settings.engine == "ray":
        from fintrl.sweep.ray_tune import run_on_ray

        run_on_ray(study, storage, dims, recipe_path, list(overrides), out, settings, remaining, spec, baseline)
    else:

        def objective(trial: optuna.Trial) -> float:
            return _trial(trial, dims, recipe_path, list(overrides), out, settings)

        def record(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
            write_results(out, spec, study, dims, baseline=baseline)

        study.optimize(objective, n_trials=remaining, callbacks=[record])
    return finish(out, spec, study, dims, baseline, keep=settings.keep)


def _spec(recipe_path: str, dims: list[Dimension], settings: SweepSettings, overrides: list[str]) -> dict[str, Any]:
    text = Path(recipe_path).read_bytes()
    return {
        "recipe": str(recipe_path),
        "recipe_sha256": hashlib.sha256(text).hexdigest(),
        "overrides": overrides,
        "space": [dataclasses.asdict(d) | {"choices": list(d.choices)} for d in dims],
        "metric": settings.metric,
        "direction": METRICS[settings.metric],
        "seed": settings.seed,
        "prune": settings.prune,
        "engine": settings.engine,
    }


def _prepare(out: Path, spec: dict[str, Any]) -> None:
    """A new folder, or one holding this very sweep (resumed); never another sweep or a folder fintrl did not make."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--output-dir {out} is a file; a sweep writes a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            old = json.loads((out / SPEC).read_text())
        except (OSError, ValueError):
            raise RunFolderError(
                f"--output-dir {out} exists and is not a fintrl sweep; choose another folder (fintrl never replaces "
                "a folder it did not make)"
            ) from None
        differ = [key for key in spec if key != "recipe" and old.get(key) != spec[key]]
        if differ:
            raise RunFolderError(
                f"--output-dir {out} holds another sweep ({', '.join(differ)} differ); choose another folder to "
                "start a new one, or run the same command to resume it"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SPEC, json.dumps(spec, indent=2))


def _discard_unfinished(study: Any, out: Path) -> None:
    """Trials a stopped sweep left running are failed, their folders removed: the sampler starts them afresh."""
    from optuna.trial import TrialState

    for trial in study.trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
        if trial.state in (TrialState.RUNNING, TrialState.FAIL):
            remove_run(trial_dir(out, trial.number))


def _baseline(recipe_path: str, overrides: list[str], out: Path, given: str | None) -> Path:
    """The recipe's own run: `given` (finished), or trained once into OUT/baseline."""
    from fintrl.recipe.schema import load_recipe
    from fintrl.runner import run

    if given is not None:
        return RunFolder(Path(given)).require_finished("sweep --baseline").path
    folder = out / "baseline"
    if RunFolder(folder).is_finished:
        return folder
    print(f"fintrl: training the recipe's own settings as the baseline -> {folder}")
    run(load_recipe(recipe_path, overrides=overrides, output_dir=str(folder)), overwrite=True)
    return folder


def _trial(
    trial: Any, dims: list[Dimension], recipe_path: str, overrides: list[str], out: Path, settings: SweepSettings
) -> float:
    """One trial on Optuna's own loop, its curve points and their noise reported to the pruner."""
    import optuna

    from fintrl.sweep.pruning import FLOOR, MARGIN, floor, margin, median_at

    def prune(step: int, metrics: dict[str, Any]) -> None:
        if step == 0:  # before training: every trial scores the same there
            return
        value, slack = float(metrics[settings.metric]), margin(metrics, settings.metric)
        trial.set_user_attr(MARGIN, slack)
        trial.set_user_attr(FLOOR, floor(metrics, settings.metric))
        trial.report(value, step)
        if trial.should_prune():
            median = median_at(trial.study, step)
            raise optuna.TrialPruned(
                f"{settings.metric} {value:.3f} ± {slack:.3f} at step {step}, below the finished trials' median "
                f"{median:.3f} by more than its noise"
            )

    values = {dim.field: dim.suggest(trial) for dim in dims}
    hook = prune if settings.prune and settings.metric in CURVE else None
    try:
        report = run_trial(trial.number, values, recipe_path, overrides, out, hook)
    except optuna.TrialPruned as err:
        remove_run(trial_dir(out, trial.number))
        print(f"fintrl: trial {trial.number} pruned: {err}")
        raise
    return float(report[settings.metric])
