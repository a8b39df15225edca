"""Command-line options several commands share, so each command's module declares its own parser with them.

Nothing here imports more than the recipe's light types: `fintrl --help` builds every parser.
"""

from __future__ import annotations

import argparse
from typing import get_args

from fintrl.recipe.schema import ScoringMode


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.learning_rate=1e-4 --set lora.r=32",
    )


def add_trust_remote_code(
    p: argparse.ArgumentParser,
    help: str = "let the base model run its own Python code (never taken from a downloaded recipe)",
) -> None:
    p.add_argument("--trust-remote-code", action="store_true", help=help)


def add_target(p: argparse.ArgumentParser, *, ensemble: bool = False) -> None:
    """TARGET and how to score it: what `eval` and `predict` (and their kin) share. `ensemble`: several TARGETs,
    adapters of one base whose probabilities are averaged."""
    p.add_argument(
        "target",
        nargs="+" if ensemble else None,
        help="run folder, adapter folder, Hub repo id (org/name or org/name@v1.0.0), or a base "
        "model (zero-shot, needs --recipe)" + ("; several adapters of one base: their ensemble" if ensemble else ""),
    )
    p.add_argument("--recipe", help="recipe giving data, labels and prompt (default: the run folder's / repo's)")
    add_overrides(p)
    p.add_argument("--mode", choices=get_args(ScoringMode), help="scoring mode (default: the recipe's eval.mode)")
    add_trust_remote_code(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (once the new one is written)")
    p.add_argument("--uncalibrated", action="store_true", help="raw probabilities: not the run's calibration.json")
    add_exact_4bit(p)


def add_exact_4bit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exact-4bit",
        action="store_true",
        help="score with the 4-bit base + adapter as trained, not the faster dense merged form (used by default "
        "where it agrees with the adapter: docs/serving.md#inference-forms)",
    )


def probability(text: str) -> float:
    """An argparse type: a probability in [0, 1] (`--min-confidence`), else a usage error naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a probability, between 0 and 1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: give a probability, between 0 and 1")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return value
