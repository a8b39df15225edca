"""`fintrl validate RECIPE`: every check short of weights, data or the network."""

from __future__ import annotations

import argparse
import dataclasses

from fintrl import distributed
from fintrl.cli.options import add_overrides
from fintrl.errors import RecipeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a recipe without loading weights or data, or using the network")
    p.add_argument("recipe")
    add_overrides(p)
    p.add_argument("--output-dir")
    p.add_argument("--full", action="store_true", help="accepted for old scripts: every check is now the default")
    p.add_argument(
        "--accelerate-config",
        metavar="FILE",
        help="check the recipe against this accelerate config too (recipes/accelerate/*.yaml: FSDP-QLoRA's rules)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="processes the run will have, for the effective batch (default: the accelerate config's, else "
        "$WORLD_SIZE, else 1)",
    )


def run(args: argparse.Namespace) -> int:
    from fintrl.checks.launch import launch_from_config, launch_from_env
    from fintrl.checks.recipe import check_recipe
    from fintrl.recipe.schema import load_recipe
    from fintrl.train import TRAIN_DEFAULTS

    recipe = load_recipe(args.recipe, overrides=args.overrides, output_dir=args.output_dir)
    if args.num_processes is not None and args.num_processes < 1:
        raise RecipeError(f"--num-processes {args.num_processes}: give at least 1")
    if args.accelerate_config:
        launch = launch_from_config(args.accelerate_config, args.num_processes)
    else:
        processes = args.num_processes or distributed.world_size()
        launch = dataclasses.replace(launch_from_env(), processes=processes)
    check_recipe(recipe, launch=launch)  # short of weights and network; imports TRL, PEFT, transformers (a few s)
    data = recipe.data
    sources = [m.display_name for m in data.mixture] if data.mixture else [data.preset or data.path or data.source]
    batch = distributed.describe_batch({**TRAIN_DEFAULTS, **recipe.train}, launch.processes)
    print(
        f"{args.recipe}: ok (model {recipe.model.name_or_path}, data {' + '.join(map(str, sources))}, "
        f"output {recipe.output_dir}; {batch})"
    )
    return 0
