"""`fintrl export RUN --merged OUT`: the run's adapter merged into its base, a model folder plain transformers loads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fintrl.cli.options import add_trust_remote_code
from fintrl.export.merge import DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="merge a run's adapter into its (unquantized) base: a model folder plain transformers loads",
    )
    p.add_argument("run_dir", help="a finished run folder (LoRA)")
    p.add_argument(
        "--merged",
        required=True,
        metavar="OUT",
        help="the folder to write: weights, tokenizer + chat template, generation config, card",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="precision of the merged weights (default auto: bfloat16 on a CUDA GPU that has it, float32 on CPU)",
    )
    p.add_argument(
        "--dequantize",
        action="store_true",
        help="for a run trained on a 4-bit base: merge into those 4-bit weights dequantized to --dtype (answers as the "
        "adapter did) instead of the original unquantized base",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT once the new one is made")
    add_trust_remote_code(p)


def run(args: argparse.Namespace) -> int:
    from fintrl.export.merge import export_merged

    info = export_merged(
        Path(args.run_dir),
        Path(args.merged),
        dtype=args.dtype,
        dequantize=args.dequantize,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    print(json.dumps({"output": args.merged, **info["merged"], "agreement": info["agreement"]}, indent=2))
    return 0
