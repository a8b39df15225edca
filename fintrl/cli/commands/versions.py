"""`fintrl versions org/name`: a repo's published versions with their metrics, or two of them compared."""

from __future__ import annotations

import argparse
import json

from fintrl.cli.commands.compare import print_comparison


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("versions", help="list a repo's published versions with their metrics, highest first")
    p.add_argument("repo", help="org/name")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare org/name@OLD org/name@NEW instead")
    p.add_argument("--output", help="with --compare: also write the comparison as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args: argparse.Namespace) -> int:
    from fintrl.hub.versions import list_versions

    if args.compare:
        old, new = (f"{args.repo}@{v}" for v in args.compare)
        return print_comparison(old, new, args.output, overwrite=args.overwrite)
    versions = list_versions(args.repo)
    if args.json:
        print(json.dumps(versions, indent=2))
    elif not versions:
        print(f"{args.repo}: no published versions")
    else:
        columns = ("version", "date", "commit", "base_model", "data", "accuracy", "f1_macro", "eval_sha", "recipe_sha")
        rows = [columns] + [tuple(_cell(_value(v, c), c) for c in columns) for v in versions]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _value(version: dict, column: str) -> object:
    """A version's value for a table column: the provenance fingerprints shortened to 12 characters."""
    if column in ("eval_sha", "recipe_sha"):
        key = {"eval_sha": "eval_sha256", "recipe_sha": "recipe_sha256"}[column]
        value = (version.get("provenance") or {}).get(key)
        return value[:12] if value else None
    return version.get(column)


def _cell(value: object, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)[:12] if column == "commit" else str(value)
