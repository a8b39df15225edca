"""`fintrl publish RUN`: upload a run folder (or a merged export, or an ensemble folder) to the Hub as one commit,
tagged with a version."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fintrl.errors import RecipeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="upload a run folder to the Hub as one commit, tagged with a new version")
    p.add_argument("run_dir", help="a run folder, a merged export (--merged) or an ensemble folder (`fintrl eval A B`)")
    p.add_argument("--repo", help="org/name (default: the recipe's publish.repo_id)")
    p.add_argument("--version", help="vMAJOR.MINOR.PATCH (default: v1.0.0, then the next minor version)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument(
        "--base-model",
        metavar="ORG/NAME",
        help="the base model's Hub id, named in the published adapter and "
        "recipe (default: the recipe's publish.base_model, else its model when that is a Hub id or an "
        "offline name of one; a local base folder needs it)",
    )
    p.add_argument(
        "--merged",
        action="store_true",
        help="RUN_DIR is a merged export (`fintrl export RUN --merged OUT`): publish it as a model of its own",
    )


def run(args: argparse.Namespace) -> int:
    from fintrl.hub.merged_card import require_publishable
    from fintrl.hub.publish import publish
    from fintrl.run_folder import RunFolder

    # flags override the recipe's `publish:` section (an ensemble's: its first member's)
    folder = RunFolder(Path(args.run_dir))
    source = folder.ensemble_members(downloaded=False)[0] if folder.is_ensemble else folder.path
    section = RunFolder(source).require_finished("publish").recipe().publish
    require_publishable(folder.path, merged=args.merged)  # --merged for a merged export, and only for one
    if args.merged:  # the recipe's publish.repo_id and version are the adapter's: a merged model has its own repo
        section = section.model_copy(update={"repo_id": None, "version": None})
    repo_id = args.repo or section.repo_id
    if not repo_id:
        raise RecipeError(
            "publish --merged needs --repo org/name: a repo of its own, not the adapter's"
            if args.merged
            else "publish needs a repo: pass --repo org/name or set publish.repo_id in the recipe"
        )
    result = publish(
        Path(args.run_dir),
        repo_id,
        version=args.version or section.version,
        private=args.private or section.private,
        base_model=args.base_model or section.base_model,
    )
    print(json.dumps(vars(result), indent=2))
    return 0
