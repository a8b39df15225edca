"""Command-line options shared by several commands, so each command's module can declare its own parser.

Commands that live in their own module (`fintrl.predict`, ...) define `register(sub)`, which adds their parser
with these helpers; `fintrl.cli` calls it. Nothing here imports more than the recipe's light types.
"""

from __future__ import annotations

import argparse
from typing import get_args

from fintrl.recipe import ScoringMode


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.learning_rate=1e-4 --set lora.r=32",
    )


def add_trust_remote_code(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the base model run its own Python code (never taken from a downloaded recipe)",
    )


def add_target(p: argparse.ArgumentParser) -> None:
    """TARGET and how to score it: what `eval` and `predict` (and their kin) share."""
    p.add_argument(
        "target",
        help="run folder, adapter folder, Hub repo id (org/name or org/name@v1.0.0), or a base "
        "model (zero-shot, needs --recipe)",
    )
    p.add_argument("--recipe", help="recipe giving data, labels and prompt (default: the run folder's / repo's)")
    add_overrides(p)
    p.add_argument("--mode", choices=get_args(ScoringMode), help="scoring mode (default: the recipe's eval.mode)")
    add_trust_remote_code(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (once the new one is written)")
    p.add_argument("--uncalibrated", action="store_true", help="raw probabilities: not the run's calibration.json")
