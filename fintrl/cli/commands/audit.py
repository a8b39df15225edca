"""`fintrl audit RUN`: rows whose gold label the model confidently disagrees with, ranked (`fintrl.audit`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fintrl.audit.confident import DEFAULT_FOLDS, SPLITS
from fintrl.errors import RecipeError, RunFolderError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="rank rows whose gold label the model confidently disagrees with (label noise)")
    p.add_argument("run_dir", help="a finished run folder")
    p.add_argument(
        "--folds",
        type=int,
        default=DEFAULT_FOLDS,
        metavar="K",
        help=f"train rows: K-fold cross-fitting, K adapters trained with the run's recipe (default {DEFAULT_FOLDS}); "
        "0: scored in-sample by the run's adapter (fast, biased: flags fewer)",
    )
    p.add_argument(
        "--split", choices=SPLITS, default="all", help="rows to audit (eval alone trains and scores nothing)"
    )
    p.add_argument("--seed", type=int, help="fold assignment seed (default: the recipe's data.seed)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="flagged rows to print (default 20)")
    p.add_argument("--output-dir", help="where audit.csv and audit.json go (default runs/audit/<run name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier audit (once the new one succeeds)")


def run(args: argparse.Namespace) -> int:
    from fintrl.audit.confident import audit, report_lines, write_audit
    from fintrl.audit.folds import check_folds
    from fintrl.run_folder import AUDIT_SUMMARY, RunFolder
    from fintrl.transaction import eval_output

    if args.top < 0:
        raise RecipeError(f"--top {args.top}: give a number of rows, 0 or more")
    check_folds(args.folds)  # a bad --folds fails before any loading
    run_folder = RunFolder(Path(args.run_dir)).require_finished("audit")
    out_dir = Path(args.output_dir or (Path("runs") / "audit" / run_folder.path.resolve().name))
    if out_dir.resolve().is_relative_to(run_folder.path.resolve()):
        raise RunFolderError(f"--output-dir {out_dir} is inside the run folder; an audit never changes a run")
    with eval_output(out_dir, overwrite=args.overwrite, kind="audit", marker=AUDIT_SUMMARY) as work:
        rows, summary = audit(args.run_dir, folds=args.folds, split=args.split, seed=args.seed)
        write_audit(work, rows, summary)
    print("\n".join(report_lines(rows, summary, args.top, out_dir)))
    return 0
