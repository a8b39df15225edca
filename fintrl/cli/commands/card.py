"""`fintrl card RUN`: (re)render a run folder's model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="(re)render a run folder's model card README.md")
    p.add_argument("run_dir")
    p.add_argument("--repo", help="repo id shown in the usage snippet")


def run(args: argparse.Namespace) -> int:
    from fintrl.hub.card import write_card

    print(write_card(Path(args.run_dir), repo_id=args.repo))
    return 0
