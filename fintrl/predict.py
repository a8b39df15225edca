"""`fintrl predict`: classify texts with a run folder, adapter or Hub repo; JSONL out with every label's probability."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fintrl.bulk import RAY_ONLY, add_engine_options, run_bulk
from fintrl.cli_args import add_target
from fintrl.errors import DataError, RecipeError, RunFolderError
from fintrl.run_folder import write_atomic

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify texts (JSONL out, with per-label probabilities)")
    add_target(p)
    p.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    p.add_argument("--input", help="file with one text per line, or - for stdin (--engine ray: CSV/JSONL/Parquet)")
    p.add_argument("--output", help="JSONL file (default: stdout; --engine ray: a folder of shards)")
    p.add_argument("--min-confidence", type=float, metavar="P", help="`abstain` where the label's p < P")
    add_engine_options(p)  # --engine ray: files or folders through Ray Data, into resumable shards (fintrl/bulk.py)
    p.set_defaults(func=cmd_predict)


def _read_texts(args: argparse.Namespace) -> list[str]:
    """--text values, then --input lines (a file or - for stdin); blank lines are skipped and counted."""
    texts = list(args.text)
    if args.input == "-":
        texts += [line.rstrip("\n") for line in sys.stdin]
    elif args.input:
        path = Path(args.input)
        if not path.is_file():
            raise DataError(f"--input {path}: no such file (one text per line, or - for stdin)")
        try:
            texts += path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"--input {path} is not UTF-8 text; save it as UTF-8, one text per line") from None
    if not any(t.strip() for t in texts):
        raise RecipeError("nothing to classify: give --text TEXT or --input FILE (one text per line, - for stdin)")
    empty = sum(not t.strip() for t in texts)
    if empty:
        logger.warning("skipping %d empty lines", empty)
    return [t for t in texts if t.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    from fintrl.calibration import prediction_rows
    from fintrl.targets import load_for_inference, resolve_target

    if args.engine == "ray":
        return run_bulk(args)
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
    if given:
        raise RecipeError(f"{', '.join(given)}: only with --engine ray")
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise RunFolderError(f"--output {args.output} exists; pass --overwrite to replace it, or choose another file")
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise RecipeError(f"--min-confidence {args.min_confidence}: give a probability, between 0 and 1")
    texts = _read_texts(args)
    target = resolve_target(
        args.target, recipe_path=args.recipe, overrides=args.overrides, trust_remote_code=args.trust_remote_code
    )
    labels = target.label_set("predict")
    model, tokenizer = load_for_inference(target)
    scorer = target.scorer(model, tokenizer, mode=args.mode)
    result = scorer.score(texts)
    probabilities = result.probabilities if args.uncalibrated else target.calibrate(result.probabilities, result.mode)
    rows = prediction_rows(texts, labels, result.predictions, probabilities, args.min_confidence)  # abstain below it
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if args.output:
        write_atomic(Path(args.output), "".join(line + "\n" for line in lines))
    else:
        print("\n".join(lines))
    return 0
