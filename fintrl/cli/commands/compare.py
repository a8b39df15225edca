"""`fintrl compare A B`: is B better than A? Paired bootstrap and McNemar on the same eval rows.
`fintrl compare A B A2 B2 ...`: the same for pairs of runs (one per seed), each pair and then all pooled."""

from __future__ import annotations

import argparse

from fintrl.cli.options import add_trust_remote_code
from fintrl.errors import RecipeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="is B better than A? paired bootstrap and McNemar on the same eval rows")
    p.add_argument(
        "sides",
        nargs="+",
        metavar="A B",
        help="each a run folder, eval output folder, adapter folder or Hub repo (org/name@v1.0.0); more A B pairs "
        "(one per seed, all on the same rows) are each compared and then pooled into one verdict",
    )
    p.add_argument("--output", help="also write the comparison as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_trust_remote_code(p, help="let a base model run its own code (scoring)")


def run(args: argparse.Namespace) -> int:
    if len(args.sides) < 2 or len(args.sides) % 2:
        raise RecipeError(
            f"fintrl compare takes pairs A B [A2 B2 ...]; got {len(args.sides)} side(s): {' '.join(args.sides)}"
        )
    if len(args.sides) > 2:
        pairs = list(zip(args.sides[::2], args.sides[1::2]))
        return print_pooled(pairs, args.output, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    a, b = args.sides
    return print_comparison(a, b, args.output, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)


def print_comparison(
    a: str, b: str, output: str | None, *, overwrite: bool = False, trust_remote_code: bool = False
) -> int:
    """Print the comparison of B against A (the verdict last); `output`: also write it as JSON."""
    from fintrl.evaluation.compare import compare
    from fintrl.metrics.paired import render

    _check_output(output, overwrite, (a, b))
    report = compare(a, b, trust_remote_code=trust_remote_code)
    print(render(report))
    _write(output, report)
    return 0


def print_pooled(
    pairs: list[tuple[str, str]], output: str | None, *, overwrite: bool = False, trust_remote_code: bool = False
) -> int:
    """Print each pair's comparison, then the pairs pooled (the pooled verdict last); `output`: also the JSON."""
    from fintrl.evaluation.compare import compare_pairs
    from fintrl.metrics.paired import render, render_pooled

    _check_output(output, overwrite, tuple(side for pair in pairs for side in pair))
    report = compare_pairs(pairs, trust_remote_code=trust_remote_code)
    for i, pair in enumerate(report["pairs"], 1):
        print(f"== pair {i} of {len(pairs)} ==\n{render(pair)}\n")
    print(f"== pooled ==\n{render_pooled(report['pooled'])}")
    _write(output, report)
    return 0


def _check_output(output: str | None, overwrite: bool, inputs: tuple[str, ...]) -> None:
    from fintrl.transaction import check_output_file

    if output:  # checked before anything is scored
        check_output_file(output, flag="--output", overwrite=overwrite, inputs=inputs)


def _write(output: str | None, report: dict) -> None:
    import json
    from pathlib import Path

    from fintrl.run_folder import write_atomic

    if output:
        write_atomic(Path(output), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
