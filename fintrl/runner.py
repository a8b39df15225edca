"""One run, end to end: recipe -> data -> model -> training -> scoring -> metrics -> card, all into a run folder.

A run is a folder: `eval`, `card` and `publish` read everything they need from it, so each step can be rerun alone.
It is built aside and swapped into place only when it has succeeded (`fintrl.run_folder`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl import distributed, provenance, tracking, transaction
from fintrl.checks.recipe import check_recipe
from fintrl.data.loading import load_labeled_data
from fintrl.evaluation.report import evaluate
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import Recipe
from fintrl.run_folder import Report, RunFolder

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from fintrl.train import CurveHook


logger = logging.getLogger(__name__)


class Timer:
    """Wall-clock seconds per named stage, reported in metrics.json and the closing log line."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        logger.info("stage: %s", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        logger.info("stage %s done in %.1f s", name, self.seconds[name])


def run(
    recipe: Recipe, *, resume: bool = False, overwrite: bool = False, on_curve_point: CurveHook | None = None
) -> Report:
    """The whole loop, as one transaction on the run folder (see `fintrl.run_folder`). Returns the report.
    `on_curve_point(step, metrics)` sees each learning-curve point as it is scored; what it raises stops the run
    (a sweep prunes a trial so).

    ```python
    from fintrl import load_recipe, run
    report = run(load_recipe("recipes/quickstart.yaml", overrides=["train.max_steps=10"]))
    round(report["accuracy"], 3)
    ```

    A recipe with `seeds: [...]` trains one run per seed and returns their ensemble's report (`run_seeds`).
    """
    if recipe.seeds:
        return run_seeds(recipe, resume=resume, overwrite=overwrite)
    check_recipe(recipe)
    final = Path(recipe.output_dir)
    if distributed.is_distributed():  # launched as several processes (accelerate launch, torchrun)
        logger.info("process %d of %d (%s)", distributed.rank(), distributed.world_size(), distributed.state().backend)
    with contextlib.ExitStack() as held:

        def begin() -> Path:  # the main process alone locks the name and prepares the work folder; all build in it
            held.enter_context(transaction.locked(final))
            return transaction.prepare(final, recipe, resume=resume, overwrite=overwrite)

        work = distributed.on_main(begin)
        try:
            metrics = _run_in(work, recipe, resume, _marked(on_curve_point))
        except BaseException as err:
            if distributed.is_main():
                transaction.keep_if_resumable(work, final, stopped=getattr(err, _STOPPED_BY_CALLER, False))
            raise

        def finish() -> Report:
            transaction.commit(work, final)
            logger.info(
                "run folder %s: accuracy %.3f, macro-F1 %.3f; stages (s): %s",
                final,
                metrics["accuracy"],
                metrics["f1_macro"],
                metrics["timings"],
            )
            return metrics

        metrics = distributed.on_main(finish)  # every process returns the main process's report
    if recipe.publish.repo_id:
        from fintrl.hub.publish import publish

        distributed.on_main(
            lambda: publish(
                final, recipe.publish.repo_id, version=recipe.publish.version, private=recipe.publish.private
            )
        )
    return metrics


def seed_recipes(recipe: Recipe) -> list[Recipe]:
    """A `seeds:` recipe's runs: the recipe with each seed (the data's seed, hence the calibration rows, unchanged),
    each in output_dir/seed<S>, none published alone."""
    parent = Path(recipe.output_dir)
    publish = recipe.publish.model_copy(update={"repo_id": None, "version": None})  # the ensemble is what's published
    return [
        recipe.model_copy(
            update={"seed": seed, "seeds": None, "output_dir": str(parent / f"seed{seed}"), "publish": publish}
        )
        for seed in recipe.seeds or []
    ]


def ensemble_dir(recipe: Recipe) -> Path:
    """Where a `seeds:` recipe's ensemble report goes."""
    return Path(recipe.output_dir) / "ensemble"


def run_seeds(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> Report:
    """`seeds: [...]`: one ordinary run per seed (`seed_recipes`), then their ensemble scored on the eval split into
    `ensemble_dir` (`fintrl.evaluation.ensemble`), published as one repo with `publish.repo_id`; returns its report.
    With `resume`, finished seeds are kept and unfinished ones continue; `overwrite` replaces each run once its new
    one succeeds."""
    from fintrl.errors import RecipeError, RunFolderError
    from fintrl.evaluation.ensemble import evaluate_ensemble
    from fintrl.scoring.ensemble import resolve_ensemble

    check_recipe(recipe)
    if distributed.is_distributed():
        raise RecipeError(
            "seeds: run the recipe as one process; to launch one seed's run alone: --set seeds=null --set seed=S"
        )
    if RunFolder(Path(recipe.output_dir)).is_run:
        raise RunFolderError(
            f"{recipe.output_dir} holds a run; a seeds recipe writes one run per seed and their ensemble into a "
            "folder of its own: choose another --output-dir"
        )
    members = seed_recipes(recipe)
    for member in members:
        folder = Path(member.output_dir)
        if resume and RunFolder(folder).is_finished:
            logger.info("seed %d: finished in %s, kept", member.seed, folder)
            continue
        unfinished = RunFolder(folder).is_run or transaction.work_folder(folder).is_dir()
        logger.info("seed %d of %s: training %s", member.seed, recipe.seeds, folder)
        run(member, resume=resume and unfinished, overwrite=overwrite)
    ensemble = resolve_ensemble([member.output_dir for member in members])
    data = load_labeled_data(recipe.data)
    with transaction.eval_output(ensemble_dir(recipe), overwrite=overwrite or resume) as work:
        metrics = evaluate_ensemble(ensemble, data, work)
        RunFolder(work).write_metrics(metrics)
    if recipe.publish.repo_id:
        from fintrl.hub.publish import publish

        section = recipe.publish
        publish(ensemble_dir(recipe), section.repo_id, version=section.version, private=section.private)
    return metrics


_STOPPED_BY_CALLER = "fintrl_stopped_by_caller"


def _marked(hook: CurveHook | None) -> CurveHook | None:
    """`hook`, its exceptions marked as the caller's decision (a pruned sweep trial), which leaves nothing to resume."""
    if hook is None:
        return None

    def marked(step: int, metrics: dict[str, Any]) -> None:
        try:
            hook(step, metrics)
        except Exception as err:
            setattr(err, _STOPPED_BY_CALLER, True)
            raise

    return marked


def _run_in(run_dir: Path, recipe: Recipe, resume: bool, on_curve_point: CurveHook | None = None) -> Report:
    """Data, model, training, scoring, report and card, all written into `run_dir` (the work folder)."""
    from fintrl.hub.card import write_card
    from fintrl.model.loading import load_model, load_tokenizer
    from fintrl.scoring.calibration import fit_on_rows, hold_out, save_calibration
    from fintrl.scoring.scorer import LabelScorer
    from fintrl.train import TRAIN_DEFAULTS, LearningCurve, build_trainer, train

    timer = Timer()
    with timer.stage("data"), distributed.main_first():  # shared caches are filled once, by the main process
        data, held_out = hold_out(load_labeled_data(recipe.data), recipe.eval, recipe.data.seed)
        logger.info("data: %d train / %d eval rows, labels %s", len(data.train), len(data.eval), data.labels)
    with timer.stage("load_model"), distributed.main_first():
        tokenizer = load_tokenizer(recipe.model, recipe.prompt.system)
        builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
        if distributed.is_main():
            RunFolder(run_dir).write_prompt(builder)  # what eval, predict, serve, ... ask the adapter from now on
        model = load_model(recipe.model, recipe.quantization)
    curve = None
    sharded = distributed.sharded_training(recipe.train)
    if recipe.eval.curve_points and sharded:
        logger.warning("eval.curve_points: no learning curve under %s (weights are sharded while training)", sharded)
    elif recipe.eval.curve_points:
        rows = random.Random(recipe.data.seed).sample(
            range(len(data.eval)), min(recipe.eval.curve_samples, len(data.eval))
        )
        sample = data.eval.select(sorted(rows))  # in eval order: with every row, the last point scores what eval does
        curve = LearningCurve(tokenizer, builder, recipe.eval, sample["text"], sample["label"], on_curve_point)
    with timer.stage("train"):
        trainer = build_trainer(
            recipe, model, tokenizer, builder, data.train, run_dir, callbacks=[curve] if curve else None
        )
        train_metrics = train(trainer, run_dir, resume)
    scoring_model = trainer.model if sharded is None else _reload_for_scoring(trainer, recipe, run_dir)
    calibration = None
    if held_out is not None:  # the held-out train rows, scored once: the temperature eval and predict apply
        with timer.stage("calibrate"):
            calibration = fit_on_rows(scoring_model, tokenizer, builder, held_out, recipe.eval, recipe.data.seed)
            if distributed.is_main():
                save_calibration(calibration, run_dir)
    with timer.stage("eval"):
        scorer = LabelScorer.from_eval(scoring_model, tokenizer, builder, recipe.eval)
        metrics = evaluate(scorer, data, recipe.eval, run_dir, recipe.model.name_or_path, calibration)
    if not distributed.is_main():
        return metrics
    metrics["train"] = train_metrics
    if curve:
        metrics["train"]["learning_curve_seconds"] = round(curve.seconds, 2)  # inside train_runtime
        metrics["learning_curve"] = [h for h in trainer.state.log_history if "curve_accuracy" in h]
    shown = {*TRAIN_DEFAULTS, *recipe.train, "bf16", "use_cpu"}  # what the card lists: fintrl's defaults + the recipe's
    metrics["train_args"] = {k: v for k, v in trainer.args.to_dict().items() if k in shown}
    metrics["timings"] = timer.seconds
    metrics["provenance"] = provenance.record(
        recipe,
        data,
        device=metrics["environment"]["device"],
        dtype=str(getattr(scoring_model, "dtype", "")).removeprefix("torch."),
        world_size=distributed.world_size(),
    )
    RunFolder(run_dir).write_metrics(metrics)
    with timer.stage("card"):
        write_card(run_dir)
    if tracking.reports_to(recipe.train, tracking.TRACKIO):
        args, step = trainer.args, trainer.state.global_step
        where = {"project": args.project, "name": args.run_name, "space_id": args.trackio_space_id}
        tracking.log_report(metrics, run_dir, step=step, **where)
    return metrics


def _reload_for_scoring(trainer: object, recipe: Recipe, run_dir: Path) -> PreTrainedModel:
    """FSDP and DeepSpeed ZeRO-3 leave each process a shard of the weights, which no scorer can run: free the trained
    model and load the base and the saved adapter again, whole, on each process's own device (as `fintrl eval` does).
    Not exercised on CPU (FSDP-QLoRA needs a GPU): benchmarks/gpu_check.sh runs it when one is lent."""
    import gc

    import torch
    from peft import PeftModel

    from fintrl.model.loading import load_model

    trainer.accelerator.free_memory()  # type: ignore[attr-defined]  # its references to the sharded model, optimizer
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None  # type: ignore[attr-defined]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    distributed.wait_for_everyone()  # run_dir holds the adapter (written by the main process) from here on
    with distributed.whole_weights():
        base = load_model(recipe.model, recipe.quantization)
    return PeftModel.from_pretrained(base, str(run_dir)).eval()
