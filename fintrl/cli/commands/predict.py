"""`fintrl predict TARGET`: classify texts with a run folder, adapter or Hub repo; JSONL out with every label's
probability. `--engine ray` scores files or folders on Ray Data into resumable shards (`fintrl.batch.engine`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fintrl.batch.engine import DEFAULT_SHARD_ROWS
from fintrl.batch.shards import FORMATS
from fintrl.cli.options import add_target, positive_int, probability
from fintrl.errors import RecipeError
from fintrl.transaction import check_output_file

logger = logging.getLogger(__name__)

# Options that apply only with --engine ray (argparse dest -> flag)
RAY_ONLY = ("num_workers", "num_gpus_per_worker", "address", "shard_rows", "output_format")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify texts (JSONL out, with per-label probabilities)")
    add_target(p, ensemble=True)
    p.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    p.add_argument(
        "--input",
        help="texts: a .txt file (one a line) or - for stdin, or a CSV/JSONL/Parquet file (--engine ray: a folder too)",
    )
    p.add_argument("--output", help="JSONL file (default: stdout; --engine ray: a folder of shards)")
    p.add_argument(
        "--text-column", metavar="NAME", help="a CSV/JSONL/Parquet --input's column to classify (default: text)"
    )
    p.add_argument("--min-confidence", type=probability, metavar="P", help="`abstain` where the label's p < P")
    g = p.add_argument_group("batch scoring on Ray (--engine ray: --input is a file or a folder of them)")
    g.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: Ray Data, --output a folder")
    g.add_argument("--num-workers", type=positive_int, metavar="N", help="scorer actors, one model each (default 1)")
    g.add_argument("--num-gpus-per-worker", type=float, metavar="G", help="GPUs per actor (default 0: CPU)")
    g.add_argument("--address", help="a running Ray cluster (`auto`, or host:port); default: a local one")
    g.add_argument(
        "--shard-rows", type=positive_int, metavar="S", help=f"rows per output shard (default {DEFAULT_SHARD_ROWS})"
    )
    g.add_argument("--output-format", choices=tuple(FORMATS), help="shard files (default parquet)")


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        if len(args.target) > 1:
            raise RecipeError("--engine ray scores with one target; score an ensemble with --engine local")
        return _run_ray(args)
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
    given = [flag for flag in given if flag != "--text-column"]  # a CSV/JSONL/Parquet --input reads it too
    if given:
        raise RecipeError(f"{', '.join(given)}: only with --engine ray")
    if args.output:
        check_output_file(args.output, flag="--output", overwrite=args.overwrite, inputs=(args.input,))
    texts = _read_texts(args.text, args.input, args.text_column)
    from fintrl.run_folder import write_atomic
    from fintrl.scoring.calibration import predict_rows
    from fintrl.scoring.ensemble import Ensemble, ensemble_scorer, resolve_scored
    from fintrl.scoring.inference import load_inference

    options = {"recipe_path": args.recipe, "overrides": args.overrides, "trust_remote_code": args.trust_remote_code}
    target = resolve_scored(args.target, **options)
    if isinstance(target, Ensemble):  # each member calibrated (unless --uncalibrated), their probabilities averaged
        scorer = ensemble_scorer(target, mode=args.mode, calibrated=not args.uncalibrated)
        labels, result = scorer.labels, scorer.score(texts)
    else:
        labels = target.label_set("predict")
        loaded = load_inference(target, exact_4bit=args.exact_4bit)
        result = target.scorer(loaded.model, loaded.tokenizer, mode=args.mode).score(texts)
        if not args.uncalibrated:
            result = target.calibrate(result)
    # with --min-confidence, `abstain` below it
    rows = predict_rows(texts, labels, result.predictions, result.probabilities, args.min_confidence)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if args.output:
        write_atomic(Path(args.output), "".join(line + "\n" for line in lines))
    else:
        print("\n".join(lines))
    return 0


def _read_texts(given: list[str], source: str | None, column: str | None) -> list[str]:
    """--text values, then --input's texts (`fintrl.data.texts`); blank ones are skipped and counted."""
    from fintrl.data.texts import TEXT_COLUMN, check_unicode, read_texts

    texts = [*given, *(t or "" for t in (read_texts(source, column or TEXT_COLUMN) if source else []))]
    check_unicode(texts, "--text/--input")
    if not any(t.strip() for t in texts):
        raise RecipeError("nothing to classify: give --text TEXT or --input FILE (one text per line, - for stdin)")
    empty = sum(not t.strip() for t in texts)
    if empty:
        logger.warning("skipping %d empty lines", empty)
    return [t for t in texts if t.strip()]


def _run_ray(args: argparse.Namespace) -> int:
    from fintrl.batch.engine import RaySettings, score_files
    from fintrl.ray_cluster import require_ray

    require_ray("data")
    if args.text or not args.input or args.input == "-" or not args.output:
        raise RecipeError(
            "--engine ray scores files: give --input FILE|FOLDER (CSV, JSONL or Parquet) and --output FOLDER"
        )
    settings = RaySettings(
        num_workers=args.num_workers or 1,
        num_gpus_per_worker=args.num_gpus_per_worker or 0.0,
        address=args.address,
        text_column=args.text_column or "text",
        shard_rows=args.shard_rows or DEFAULT_SHARD_ROWS,
        output_format=args.output_format or "parquet",
    )
    score_files(
        args.target[0],
        args.input,
        args.output,
        settings=settings,
        recipe=args.recipe,
        overrides=args.overrides,
        trust_remote_code=args.trust_remote_code,
        mode=args.mode,
        calibrated=not args.uncalibrated,
        exact_4bit=args.exact_4bit,
        min_confidence=args.min_confidence,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    return 0
