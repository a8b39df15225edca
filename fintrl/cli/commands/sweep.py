"""`fintrl sweep RECIPE --space SPACE.yaml`: search recipe fields for the best exact-scorer metric (`fintrl.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fintrl.cli.options import add_overrides, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from fintrl.sweep.settings import ENGINES, METRICS

    p = sub.add_parser("sweep", help="search recipe fields (an Optuna study of runs, or Ray Tune) for the best metric")
    p.add_argument("recipe")
    p.add_argument(
        "--space", required=True, help="YAML: recipe field -> [values] or {log_uniform|uniform|int: [low, high]}"
    )
    p.add_argument("--trials", type=positive_int, default=20, help="trials in all; a resumed sweep runs those missing")
    p.add_argument("--metric", choices=tuple(METRICS), default="f1_macro", help="what to optimise (default f1_macro)")
    p.add_argument("--output-dir", help="the sweep folder (default runs/sweeps/RECIPE_NAME); rerun to resume")
    p.add_argument("--keep", choices=("best", "all"), default="best", help="trial run folders kept (default best)")
    p.add_argument("--baseline", help="an existing run of the recipe to compare the best with (default: trained)")
    p.add_argument("--no-prune", action="store_true", help="train every trial to the end (no median pruning)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="optuna",
        help="optuna: trials one after another here (default); ray: on Ray Tune, --workers at a time",
    )
    p.add_argument("--workers", type=positive_int, default=1, help="--engine ray: trials at a time (default 1)")
    p.add_argument("--address", help="--engine ray: a running Ray cluster (auto, host:port); default a local one")
    add_overrides(p)


def run(args: argparse.Namespace) -> int:
    from fintrl.sweep.settings import SweepSettings
    from fintrl.sweep.study import sweep

    settings = SweepSettings(
        trials=args.trials,
        metric=args.metric,
        seed=args.seed,
        prune=not args.no_prune,
        keep=args.keep,
        baseline=args.baseline,
        engine=args.engine,
        workers=args.workers,
        address=args.address,
    )
    out = args.output_dir or str(Path("runs") / "sweeps" / Path(args.recipe).stem)
    sweep(args.recipe, args.space, out, settings=settings, overrides=args.overrides)
    return 0
