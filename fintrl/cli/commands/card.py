"""`fintrl card RUN`: (re)render a run folder's (or an ensemble folder's, or a merged export's) model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="(re)render a run folder's (or an ensemble folder's) model card README.md")
    p.add_argument("run_dir")
    p.add_argument("--repo", help="repo id shown in the usage snippet")


def run(args: argparse.Namespace) -> int:
    from fintrl.hub.publish import card_renderer
    from fintrl.run_folder import CARD, RunFolder

    folder = RunFolder(Path(args.run_dir))
    folder.file(CARD).write_text(card_renderer(folder.path)(folder.path, repo_id=args.repo))
    print(folder.file(CARD))
    return 0
