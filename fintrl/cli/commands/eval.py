"""`fintrl eval TARGET [TARGET ...]`: score a run folder, adapter, Hub repo or base model (or an ensemble of adapters)
on a dataset split, into a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl import distributed
from fintrl.cli.options import add_target
from fintrl.errors import DataError, RecipeError

if TYPE_CHECKING:
    from fintrl.data.loading import LabeledData
    from fintrl.run_folder import Report
    from fintrl.scoring.ensemble import Ensemble
    from fintrl.scoring.targets import Target


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="score a run folder, adapter, Hub repo or base model (or several adapters' ensemble) on a split"
    )
    add_target(p, ensemble=True)
    p.add_argument("--output-dir", help="where metrics.json, predictions and plots go (never a run folder)")


def run(args: argparse.Namespace) -> int:
    from fintrl.metrics.stats import summary
    from fintrl.run_folder import RunFolder
    from fintrl.scoring.ensemble import Ensemble, resolve_scored
    from fintrl.transaction import eval_output

    if distributed.is_distributed():  # its output folder has one writer; a run under a launcher scores in shards
        raise RecipeError("fintrl eval runs as one process: start it without accelerate launch / torchrun")
    targets: list[str] = args.target
    options = {"recipe_path": args.recipe, "overrides": args.overrides, "trust_remote_code": args.trust_remote_code}
    name = Path(targets[0]).name if len(targets) == 1 else "ensemble-" + "-".join(Path(t).name for t in targets)
    out_dir = Path(args.output_dir or (Path("runs") / "eval" / name))
    with eval_output(out_dir, overwrite=args.overwrite) as work:
        resolved = resolve_scored(targets, **options)
        if isinstance(resolved, Ensemble):
            metrics = _ensemble(resolved, args, work)
        else:
            metrics = _single(resolved, args, work)
        RunFolder(work).write_metrics(metrics)
    print(json.dumps(summary(metrics, str(out_dir)), indent=2))
    return 0


def _data(recipe: Any, labels: list[str] | None) -> LabeledData:
    from fintrl.data.loading import load_labeled_data

    data = load_labeled_data(recipe.data)
    if labels is not None and labels != data.labels:
        raise DataError(f"label sets differ: the adapter was trained on {labels}, the eval data has {data.labels}")
    return data


def _single(target: Target, args: argparse.Namespace, work: Path) -> Report:
    from fintrl.evaluation.report import evaluate
    from fintrl.scoring.inference import load_inference
    from fintrl.scoring.scorer import LabelScorer

    recipe = target.recipe
    if args.mode:
        recipe.eval.mode = args.mode
    data = _data(recipe, target.labels)
    loaded = load_inference(target, exact_4bit=args.exact_4bit, labels=data.labels)
    calibration = None if args.uncalibrated else target.calibration  # the run's calibration.json, by default
    builder = target.prompt_builder(data.labels)  # the prompt the adapter was trained with
    scorer = LabelScorer.from_eval(loaded.model, loaded.tokenizer, builder, recipe.eval)
    metrics = evaluate(scorer, data, recipe.eval, work, target.name, calibration)
    metrics["inference"] = loaded.form.record()
    return metrics


def _ensemble(ensemble: Ensemble, args: argparse.Namespace, work: Path) -> Report:
    """The first member's recipe says which data and eval settings; each member scores with its own prompt and
    calibration; the report adds each member's own accuracy and macro-F1 on the same rows."""
    from fintrl.evaluation.ensemble import evaluate_ensemble

    data = _data(ensemble.members[0].recipe, ensemble.labels)
    return evaluate_ensemble(ensemble, data, work, mode=args.mode, calibrated=not args.uncalibrated)
