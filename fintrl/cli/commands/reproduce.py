"""`fintrl reproduce RUN`: retrain a run from its recipe and data; is the adapter bit-identical?"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train a run again from its recipe and data: is the adapter bit-identical?")
    p.add_argument("run_dir", help="a finished run folder (it is not changed: the retraining happens aside)")
    p.add_argument("--seed", type=int, help="train with this seed instead of the run's (how far does a seed move it?)")


def run(args: argparse.Namespace) -> int:
    from fintrl.reproduce import reproduce

    result = reproduce(args.run_dir, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0
