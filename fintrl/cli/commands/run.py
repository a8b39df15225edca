"""`fintrl run RECIPE`: train, score and write a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fintrl import distributed
from fintrl.cli.options import add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train, score and write a run folder from a recipe")
    p.add_argument("recipe")
    add_overrides(p)
    p.add_argument("--output-dir", help="run folder (overrides the recipe's output_dir)")
    once = p.add_mutually_exclusive_group()
    once.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished (or train further a finished) run "
        "from its last complete checkpoint; the recipe must match the checkpoint's",
    )
    once.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in the output folder, only once the new run has succeeded",
    )


def run(args: argparse.Namespace) -> int:
    from fintrl.metrics.stats import summary
    from fintrl.recipe.schema import load_recipe
    from fintrl.runner import ensemble_dir
    from fintrl.runner import run as run_recipe
    from fintrl.transaction import work_folder

    recipe = load_recipe(args.recipe, overrides=args.overrides, output_dir=args.output_dir)
    args.work_folder = work_folder(Path(recipe.output_dir))  # for the Ctrl-C hint
    metrics = run_recipe(recipe, resume=args.resume, overwrite=args.overwrite)
    if distributed.is_main():  # one process speaks for a run launched as several
        report_dir = ensemble_dir(recipe) if recipe.seeds else recipe.output_dir  # seeds: their ensemble's report
        print(json.dumps(summary(metrics, str(report_dir)), indent=2))  # headline metrics with intervals, baselines
    return 0
