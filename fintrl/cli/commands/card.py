"""`fintrl card RUN`: (re)render a run folder's (or an ensemble folder's) model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="(re)render a run folder's (or an ensemble folder's) model card README.md")
    p.add_argument("run_dir")
    p.add_argument("--repo", help="repo id shown in the usage snippet")


def run(args: argparse.Namespace) -> int:
    from fintrl.hub.card import write_card
    from fintrl.hub.ensemble_card import render_ensemble_card
    from fintrl.run_folder import CARD, RunFolder

    folder = RunFolder(Path(args.run_dir))
    if folder.is_ensemble:
        folder.file(CARD).write_text(render_ensemble_card(folder.path, repo_id=args.repo))
        print(folder.file(CARD))
    else:
        print(write_card(folder.path, repo_id=args.repo))
    return 0
