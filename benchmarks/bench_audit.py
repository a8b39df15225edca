"""Does `fintrl audit` flag the rows annotators disagreed on? A check on Financial PhraseBank, whose agreement is known.

Every `fpb_50agree` sentence has an agreement level, read from membership of its text in the higher levels' files
(train + validation of `fpb_66agree`, `fpb_75agree`, `fpb_allagree`; the levels share one split, see their DATA.md):
50-65 % (in none of them: the low-agreement rows), 66-74 %, 75-99 %, 100 %. The benchmark trains a SmolLM2 run on
`fpb_50agree` (recipes/fpb_50agree_smollm2.yaml with the train rows capped, no learning curve), audits it (train rows
by k-fold cross-fitting, eval rows from the run's predictions) and prints:

- the share of low-agreement rows among flagged rows against their share among all audited rows (the base rate),
  the lift (the ratio), and the hit rate (the share of low-agreement rows the audit flags, against the share of the
  other rows it flags); per level and per split too;
- that run's headline metrics with their bootstrap intervals, ECE before -> after calibration and the accuracy at
  80 % coverage, from its metrics.json;
- PASS when the flagged rows are mostly low-agreement, or their share is at least LIFT_TO_PASS x the base rate.

    python -m benchmarks.bench_audit                        # ~13 min on 2 CPU cores: 900 train rows, 2 folds
    python -m benchmarks.bench_audit --quick                # smoke: tiny random model, 48 rows (its flags mean nothing)
    python -m benchmarks.bench_audit --report runs/bench/audit.json
    python -m benchmarks.bench_audit --by-agreement RUN [RUN ...]   # no training: a run's accuracy per level

`--by-agreement` reads finished `fpb_50agree` runs' predictions and prints their accuracy per agreement level beside
what one annotator drawn at random would score against the majority label (a row's agreement level is exactly that
chance; each level at its range's midpoint): where a run already matches that reference, the rows annotators split
on, not the model, bound its accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, SHARED_DATA, environment, loadavg, setup_torch, stopwatch, write_report

LEVELS = (("100", "fpb_allagree"), ("75-99", "fpb_75agree"), ("66-74", "fpb_66agree"))  # highest first
LOW = "50-65"
ORDER = (LOW, "66-74", "75-99", "100")
LIFT_TO_PASS = 2.0
DEFAULT_OUT = "runs/bench/audit.json"
QUICK = ["model.name_or_path=tiny-mistral", "data.max_eval_samples=48", "train.max_steps=2", "eval.batch_size=16"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_audit", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-rows", type=int, default=900, help="data.max_train_samples of the run (default 900)")
    p.add_argument("--folds", type=int, default=2, help="audit --folds (default 2)")
    p.add_argument("--quick", action="store_true", help="tiny random model, 48 train / 48 eval rows, 2 steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--data-dir", default=str(SHARED_DATA), help="folder holding fpb_50agree, fpb_66agree, ...")
    p.add_argument("--runs-dir", default="runs/bench/audit", help="the run folder and the audit go here")
    p.add_argument("--out", default=None, help=f"results JSON (default {DEFAULT_OUT}; --by-agreement: none)")
    p.add_argument("--report", metavar="RESULTS.json", help="run nothing: print an earlier results JSON")
    p.add_argument(
        "--by-agreement", nargs="+", metavar="RUN", help="train nothing: finished fpb_50agree runs' accuracy per level"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_rows = min(args.train_rows, 48)
    return args


# -- agreement levels -------------------------------------------------------------------------------------------------
def missing_levels(data_dir: Path) -> list[str]:
    """The FPB folders the agreement levels need that `data_dir` lacks."""
    return [f for _, f in (*LEVELS, ("", "fpb_50agree")) if not (data_dir / f / "train.csv").is_file()]


def agreement_levels(data_dir: Path) -> dict[str, str]:
    """text -> the highest agreement level it reaches, for every fpb_50agree sentence (train + validation)."""
    import pandas as pd

    def texts(folder: str) -> set[str]:
        files = [data_dir / folder / f"{split}.csv" for split in ("train", "validation")]
        return set().union(*(set(pd.read_csv(f, keep_default_na=False)["text"]) for f in files if f.is_file()))

    members = {level: texts(folder) for level, folder in LEVELS}
    return {t: next((lv for lv, _ in LEVELS if t in members[lv]), LOW) for t in texts("fpb_50agree")}


def agreement_stats(rows: list[dict[str, Any]], levels: dict[str, str]) -> dict[str, Any]:
    """Low-agreement share among flagged rows vs among all rows (base rate), lift, hit rates, and rows per level."""
    known = [r for r in rows if r["text"] in levels]
    flagged = [r for r in known if r["flagged"]]
    low = [r for r in known if levels[r["text"]] == LOW]
    low_flagged = sum(r["flagged"] for r in low)
    base = len(low) / len(known) if known else 0.0
    precision = low_flagged / len(flagged) if flagged else 0.0
    others = len(known) - len(low)
    by_level = {}
    for level in ORDER:
        at = [r for r in known if levels[r["text"]] == level]
        hits = sum(r["flagged"] for r in at)
        by_level[level] = {"n": len(at), "flagged": hits, "flag_rate": round(hits / len(at), 4) if at else None}
    return {
        "n": len(known),
        "not_found": len(rows) - len(known),
        "flagged": len(flagged),
        "low_agreement": len(low),
        "low_agreement_flagged": low_flagged,
        "base_rate": round(base, 4),  # share of low-agreement rows among all audited rows
        "share_of_flagged": round(precision, 4),  # share of low-agreement rows among flagged rows
        "lift": round(precision / base, 2) if base else None,
        "hit_rate": round(low_flagged / len(low), 4) if low else None,  # low-agreement rows flagged
        "other_flag_rate": round((len(flagged) - low_flagged) / others, 4) if others else None,
        "by_level": by_level,
    }


# the chance that one annotator drawn at random chose the majority label, at each level's midpoint
ANNOTATOR = {LOW: 0.575, "66-74": 0.70, "75-99": 0.87, "100": 1.0}


def accuracy_by_level(rows: list[dict[str, Any]], levels: dict[str, str]) -> dict[str, Any]:
    """A run's prediction rows: accuracy over all and per agreement level, and a random annotator's on the same rows."""
    known = [r for r in rows if r["text"] in levels]
    by_level = {}
    for level in ORDER:
        at = [r for r in known if levels[r["text"]] == level]
        right = sum(r["prediction"] == r["gold"] for r in at)
        by_level[level] = {"n": len(at), "correct": right, "accuracy": round(right / len(at), 4) if at else None}
    right = sum(r["prediction"] == r["gold"] for r in known)
    annotator = sum(ANNOTATOR[levels[r["text"]]] for r in known) / len(known) if known else None
    return {
        "n": len(known),
        "not_found": len(rows) - len(known),
        "accuracy": round(right / len(known), 4) if known else None,
        "annotator": round(annotator, 4) if annotator is not None else None,
        "by_level": by_level,
    }


def print_by_agreement(results: dict[str, dict[str, Any]]) -> None:
    """One line per run, then the random annotator's line: accuracy over all rows and per agreement level."""
    print("| run | rows | accuracy | " + " | ".join(f"{lv} % agreement" for lv in ORDER) + " |")
    print("|---|---:|---:|" + "---:|" * len(ORDER))
    for name, r in results.items():
        cells = [f"{v['accuracy']:.3f} ({v['correct']}/{v['n']})" if v["n"] else "-" for v in r["by_level"].values()]
        print(f"| {name} | {r['n']} | {r['accuracy']:.3f} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    cells = [f"{ANNOTATOR[lv]:.3f}" for lv in ORDER]
    print(
        f"| one annotator at random (level midpoints) | {first['n']} | {first['annotator']:.3f} | {' | '.join(cells)} |"
    )
    missing = {name: r["not_found"] for name, r in results.items() if r["not_found"]}
    if missing:
        print(f"rows whose text is in no fpb_50agree file, left out: {missing}")


def by_agreement(runs: list[str], data: Path) -> dict[str, dict[str, Any]]:
    from fintrl.run_folder import PREDICTIONS, read_predictions

    levels = agreement_levels(data)
    results = {}
    for run in runs:
        rows = read_predictions(Path(run) / PREDICTIONS)
        if not rows:
            raise SystemExit(f"bench_audit: {run}: no {PREDICTIONS} (not a finished run folder)")
        results[Path(run).name] = accuracy_by_level(rows, levels)
    return results


def verdict(stats: dict[str, Any]) -> str:
    if not stats["flagged"]:
        return "FAIL: no row flagged"
    if stats["share_of_flagged"] > 0.5:
        return "PASS: the flagged rows are mostly low-agreement"
    if (stats["lift"] or 0) >= LIFT_TO_PASS:
        lift = stats["lift"]
        return f"PASS (weak): low-agreement rows are {lift:.1f}x over-represented among flagged rows, not a majority"
    return f"FAIL: lift {stats['lift']} < {LIFT_TO_PASS}"


# -- the run and the audit --------------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> dict[str, Any]:
    from fintrl.audit.confident import audit, write_audit
    from fintrl.recipe.schema import load_recipe
    from fintrl.run_folder import AUDIT_SUMMARY
    from fintrl.runner import run
    from fintrl.transaction import eval_output

    data = Path(args.data_dir).resolve()
    overrides = [
        f"data.path={data / 'fpb_50agree'}",
        f"data.max_train_samples={args.train_rows}",
        "eval.curve_points=0",
    ]
    overrides += (QUICK if args.quick else []) + args.overrides
    run_dir = Path(args.runs_dir) / "fpb_50agree"
    recipe = load_recipe(REPO / "recipes" / "fpb_50agree_smollm2.yaml", overrides=overrides, output_dir=str(run_dir))
    with stopwatch() as run_clock, contextlib.redirect_stdout(sys.stderr):
        metrics = run(recipe, overwrite=True)
    with stopwatch() as audit_clock, contextlib.redirect_stdout(sys.stderr):
        rows, summary = audit(run_dir, folds=args.folds)
    with eval_output(Path(args.runs_dir) / "audit", overwrite=True, kind="audit", marker=AUDIT_SUMMARY) as work:
        write_audit(work, rows, summary)
    levels = agreement_levels(data)
    by_split = {s: agreement_stats([r for r in rows if r["split"] == s], levels) for s in summary["splits"]}
    return {
        "run_dir": str(run_dir),
        "audit_dir": str(Path(args.runs_dir) / "audit"),
        "train_rows": args.train_rows,
        "folds": args.folds,
        "run_seconds": round(run_clock.seconds, 1),
        "audit_seconds": round(audit_clock.seconds, 1),
        "agreement": agreement_stats(rows, levels),
        "agreement_by_split": by_split,
        "audit": {k: summary[k] for k in ("n", "flagged", "pairs")}
        | {"thresholds": {s: v["thresholds"] for s, v in summary["splits"].items()}},
        "run_metrics": headline(metrics),
    }


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the issue asks of one real dataset: intervals, ECE before/after calibration, accuracy at 80 % coverage."""
    intervals = metrics.get("intervals") or {}
    calibration = metrics.get("calibration") or {}
    at80 = next((p for p in (metrics.get("coverage") or {}).get("table", []) if p["coverage"] == 0.8), None)
    return {
        "n_eval": metrics["n"],
        "n_train": metrics["data"]["n_train"],
        "metrics": {k: [metrics[k], *intervals.get(k, [None, None])] for k in ("accuracy", "f1_macro", "mcc")},
        "temperature": calibration.get("temperature"),
        "ece_before": (calibration.get("before") or {}).get("ece"),
        "ece_after": (calibration.get("after") or {}).get("ece", metrics.get("ece")),
        "accuracy_at_80": at80,
        "train_seconds": (metrics.get("timings") or {}).get("train"),
    }


# -- report -----------------------------------------------------------------------------------------------------------
def print_report(report: dict[str, Any]) -> None:
    r, meta = report["result"], report["meta"]
    m = r["run_metrics"]
    print(
        f"\nbench_audit ({'quick' if meta['quick'] else 'full'}): fpb_50agree, {m['n_train']} train rows "
        f"(data.max_train_samples={r['train_rows']}), {m['n_eval']} eval rows, audit --folds {r['folds']}; "
        f"run {r['run_seconds']:.0f} s, audit {r['audit_seconds']:.0f} s; {meta['environment'].get('device')}, "
        f"load average {meta['loadavg_start_end'][0][0]:.1f} -> {meta['loadavg_start_end'][1][0]:.1f}"
    )
    for name, (value, lo, hi) in m["metrics"].items():
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        print(f"  {name:<9} {value:.3f}{ci} (95 % bootstrap interval)")
    if m["ece_before"] is not None:
        print(f"  ECE {m['ece_before']:.3f} -> {m['ece_after']:.3f} after calibration (T = {m['temperature']:.3f})")
    if m["accuracy_at_80"]:
        p = m["accuracy_at_80"]
        print(
            f"  accuracy at 80 % coverage: {p['accuracy']:.3f} ({p['n']} rows, confidence >= {p['min_confidence']:.3f})"
        )
    print("audit vs annotator agreement (low = 50-65 % agreement, the rows annotators split on):")
    for name, s in [("all", r["agreement"]), *r["agreement_by_split"].items()]:
        lift = f"{s['lift']:.2f}x" if s["lift"] is not None else "-"
        hit = f"{s['hit_rate']:.3f}" if s["hit_rate"] is not None else "-"
        print(
            f"  {name:<5} {s['flagged']:>4} of {s['n']:>4} flagged; low-agreement share: "
            f"flagged {s['share_of_flagged']:.3f} "
            f"vs base rate {s['base_rate']:.3f} (lift {lift}); hit rate {hit} of {s['low_agreement']} low-agreement "
            f"rows flagged vs {s['other_flag_rate'] or 0:.3f} of the others"
        )
    levels = r["agreement"]["by_level"]
    print("  flag rate by agreement level: " + ", ".join(
        f"{lv} % {v['flag_rate']:.3f} ({v['flagged']}/{v['n']})" for lv, v in levels.items() if v["n"]))  # fmt: skip
    print(f"  pairs (gold -> suggested): {r['audit']['pairs']}")
    print(f"check: {report['verdict']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print_report(json.loads(Path(args.report).read_text()))
        return 0
    data = Path(args.data_dir)
    missing = missing_levels(data)
    if missing:
        print(f"bench_audit: skipped, no {', '.join(missing)} in {data} (the datasets live in ../shared/data)")
        return 0
    if args.by_agreement:
        results = by_agreement(args.by_agreement, data)
        print_by_agreement(results)
        if args.out:
            print(f"results: {write_report(args.out, {'by_agreement': results})}")
        return 0
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    setup_torch(args.threads)
    load_at_start = loadavg()
    result = bench(args)
    report = {
        "meta": {
            "quick": args.quick,
            "overrides": args.overrides,
            "data_dir": str(data.resolve()),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "environment": environment(),
            "loadavg_start_end": [load_at_start, loadavg()],
        },
        "result": result,
        "verdict": verdict(result["agreement"]),
    }
    out = write_report(args.out or DEFAULT_OUT, report)
    print_report(report)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
