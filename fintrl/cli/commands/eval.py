"""`fintrl eval TARGET`: score a run folder, adapter, Hub repo or base model on a dataset split, into a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fintrl import distributed
from fintrl.cli.options import add_target
from fintrl.errors import DataError, RecipeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a run folder, adapter, Hub repo or base model on a dataset split")
    add_target(p)
    p.add_argument("--output-dir", help="where metrics.json, predictions and plots go (never a run folder)")


def run(args: argparse.Namespace) -> int:
    from fintrl.data.loading import load_labeled_data
    from fintrl.evaluation.report import evaluate
    from fintrl.metrics.stats import summary
    from fintrl.run_folder import RunFolder
    from fintrl.scoring.inference import load_inference
    from fintrl.scoring.targets import resolve_target
    from fintrl.transaction import eval_output

    if distributed.is_distributed():  # its output folder has one writer; a run under a launcher scores in shards
        raise RecipeError("fintrl eval runs as one process: start it without accelerate launch / torchrun")
    target = resolve_target(
        args.target, recipe_path=args.recipe, overrides=args.overrides, trust_remote_code=args.trust_remote_code
    )
    recipe = target.recipe
    if args.mode:
        recipe.eval.mode = args.mode
    out_dir = Path(args.output_dir or (Path("runs") / "eval" / Path(args.target).name))
    with eval_output(out_dir, overwrite=args.overwrite) as work:
        data = load_labeled_data(recipe.data)
        if target.labels is not None and target.labels != data.labels:
            raise DataError(
                f"label sets differ: the adapter was trained on {target.labels}, the eval data has {data.labels}"
            )
        loaded = load_inference(target, exact_4bit=args.exact_4bit, labels=data.labels)
        calibration = None if args.uncalibrated else target.calibration  # the run's calibration.json, by default
        builder = target.prompt_builder(data.labels)  # the prompt the adapter was trained with
        metrics = evaluate(loaded.model, loaded.tokenizer, builder, data, recipe.eval, work, target.name, calibration)
        metrics["inference"] = loaded.form.record()
        RunFolder(work).write_metrics(metrics)
    print(json.dumps(summary(metrics, str(out_dir)), indent=2))
    return 0
