"""`fintrl compare A B`: is B better than A? Paired bootstrap and McNemar on the same eval rows."""

from __future__ import annotations

import argparse

from fintrl.cli.options import add_trust_remote_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="is B better than A? paired bootstrap and McNemar on the same eval rows")
    for side in ("a", "b"):
        p.add_argument(side, help="run folder, eval output folder, adapter folder or Hub repo (org/name@v1.0.0)")
    p.add_argument("--output", help="also write the comparison as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_trust_remote_code(p, help="let a base model run its own code (scoring)")


def run(args: argparse.Namespace) -> int:
    return print_comparison(
        args.a, args.b, args.output, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code
    )


def print_comparison(
    a: str, b: str, output: str | None, *, overwrite: bool = False, trust_remote_code: bool = False
) -> int:
    """Print the comparison of B against A (the verdict last); `output`: also write it as JSON."""
    import json
    from pathlib import Path

    from fintrl.evaluation.compare import compare
    from fintrl.metrics.paired import render
    from fintrl.run_folder import write_atomic
    from fintrl.transaction import check_output_file

    if output:  # checked before anything is scored
        check_output_file(output, flag="--output", overwrite=overwrite, inputs=(a, b))
    report = compare(a, b, trust_remote_code=trust_remote_code)
    print(render(report))
    if output:
        write_atomic(Path(output), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0
