"""What calibration costs and buys: each recipe trained with `eval.calibration_samples` 256 (rows held out of training
to fit the temperature) against 0 (every train row trained on, no calibration), on validation, per seed.

For each dataset and seed it prints both runs' accuracy and macro-F1 with intervals, `fintrl compare`'s paired
verdict (B = no hold-out against A = hold-out: does training on the held-out rows gain accuracy?), the calibrated
run's ECE and NLL before -> after, and whether the cross-fitted check kept its temperature, and why.

    python -m benchmarks.bench_calibration --datasets fiqa --seeds 42          # ~30 min on 2 CPU cores
    python -m benchmarks.bench_calibration --quick                            # smoke: tiny random model
    python -m benchmarks.bench_calibration --report runs/bench/calibration.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, SHARED_DATA, dataset_bench, stopwatch

RECIPES = {"fpb_50agree": "fpb_50agree_smollm2", "fiqa": "fiqa_smollm2", "tfns": "tfns_smollm2"}
QUICK = ["model.name_or_path=tiny-mistral", "data.max_train_samples=64", "train.max_steps=2", "eval.curve_points=0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 7])
    p.add_argument("--samples", type=int, default=256, help="eval.calibration_samples of the calibrated run")
    p.add_argument(
        "--quick", action="store_true", help="tiny random model, 64 train rows, 2 steps (numbers mean nothing)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--runs-dir", default="runs/bench/calibration")
    p.add_argument("--out", default="runs/bench/calibration.json")
    p.add_argument("--report", metavar="RESULTS.json", help="run nothing: print an earlier results JSON")
    p.add_argument("--reuse", action="store_true", help="keep finished run folders of an earlier call (no retraining)")
    return p.parse_args(argv)


def train(dataset: str, seed: int, samples: int, args: argparse.Namespace) -> tuple[Path, float]:
    from fintrl.recipe.schema import load_recipe
    from fintrl.runner import run

    out = Path(args.runs_dir) / f"{dataset}-seed{seed}-cal{samples}"
    overrides = [
        f"data.path={SHARED_DATA / dataset}",
        f"seed={seed}",
        f"data.seed={seed}",
        f"eval.calibration_samples={samples}",
        "eval.baselines=false",
        *(QUICK if args.quick else []),
        *args.overrides,
    ]
    recipe = load_recipe(REPO / "recipes" / f"{RECIPES[dataset]}.yaml", overrides=overrides, output_dir=str(out))
    if args.reuse and (out / "metrics.json").is_file():
        return out, json.loads((out / "metrics.json").read_text()).get("timings", {}).get("train")
    with contextlib.redirect_stdout(sys.stderr), stopwatch() as clock:
        run(recipe, overwrite=out.exists())
    return out, round(clock.seconds, 1)


def row(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from fintrl.evaluation.compare import compare

    held, held_s = train(dataset, seed, args.samples, args)
    whole, whole_s = train(dataset, seed, 0, args)
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (held, whole))
    calibration = a.get("calibration") or {}
    check = calibration.get("check") or {}
    verdict = compare(str(held), str(whole))
    return {
        "dataset": dataset,
        "seed": seed,
        "held_out": {k: a[k] for k in ("accuracy", "f1_macro")} | {"intervals": a["intervals"], "seconds": held_s},
        "all_rows": {k: b[k] for k in ("accuracy", "f1_macro")} | {"intervals": b["intervals"], "seconds": whole_s},
        "compare": {"verdict": verdict["verdict"], "mcnemar": verdict["mcnemar"]},
        "calibration": {
            "fitted_temperature": check.get("fitted_temperature"),
            "kept": check.get("kept"),
            "reason": check.get("reason"),
            "ece": [calibration.get("before", {}).get("ece"), calibration.get("after", {}).get("ece")],
            "nll": [calibration.get("before", {}).get("nll"), calibration.get("after", {}).get("nll")],
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "| dataset | seed | acc held-out 256 | acc all rows | macro-F1 256 / all | T fitted, kept? "
        "| ECE before -> after | paired verdict (all rows vs 256) |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in report["rows"]:
        h, w, c = r["held_out"], r["all_rows"], r["calibration"]
        ece = " -> ".join(f"{v:.3f}" for v in c["ece"] if v is not None)
        kept = "n/a" if c["kept"] is None else f"{c['fitted_temperature']:.3f}, {'kept' if c['kept'] else 'not kept'}"
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {h['accuracy']:.3f} | {w['accuracy']:.3f} | "
            f"{h['f1_macro']:.3f} / {w['f1_macro']:.3f} | {kept} | {ece} | {r['compare']['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return dataset_bench(
        "bench_calibration", args, lambda: [row(d, s, args) for d in args.datasets for s in args.seeds], render
    )


if __name__ == "__main__":
    sys.exit(main())
