"""PEFT methods side by side: the same recipe, data, steps and scorer, one `peft.method` each, so a user can choose.

Each method is a whole `fintrl run` (`fintrl.runner.run`: train, score the validation split, card) in its own fresh
process (`benchmarks.harness.run_worker`), from one base recipe with the same overrides for every method (rows, steps,
batch, seed) plus the method's own: `peft.method`, its learning rate (each method's usual one, not tuned here) and
its fields. Reported per method: accuracy and macro-F1 on the validation split (fintrl's exact scorer), trainable
parameters (PEFT's count), training seconds (the Trainer's train_runtime), adapter size on disk
(adapter_model.safetensors), and the run's scoring speed. From the repository root:

    python -m benchmarks.bench_peft --quick                        # smoke: tiny model, packaged sample, 4 steps
    python -m benchmarks.bench_peft --data-path ../shared/data/fpb_allagree   # SmolLM2, 4-bit, 40 steps per method
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import environment, loadavg, run_worker, warn_if_loaded, write_report

# method -> its own overrides: the learning rate each is usually trained with (LoRA's is the recipe's), and fields
METHODS: dict[str, list[str]] = {
    "lora": [],
    "dora": [],
    "rslora": [],
    "ia3": ["train.learning_rate=3e-3"],
    "prompt_tuning": ["train.learning_rate=3e-2", "peft.num_virtual_tokens=20"],
    "prefix_tuning": ["train.learning_rate=1e-2", "peft.num_virtual_tokens=20"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_peft", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/fpb_allagree_smollm2.yaml", help="the base recipe every method shares")
    p.add_argument("--data-path", default=None, help="data.path for the recipe (e.g. ../shared/data/fpb_allagree)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny-mistral on the packaged sample, 4 steps")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default 40; quick 4)")
    p.add_argument("--eval-rows", type=int, default=None, help="validation rows scored (default all; quick 16)")
    p.add_argument("--method", action="append", choices=list(METHODS), help="only these methods (repeatable)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per method before its process is stopped")
    p.add_argument("--out", default="runs/bench/bench_peft.json")
    return p.parse_args(argv)


def run_method(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker (fresh process): one whole run with one method; its report's numbers and the adapter's size."""
    from fintrl.model.peft_methods import describe
    from fintrl.recipe.schema import load_recipe
    from fintrl.runner import run

    recipe = load_recipe(spec["recipe"], overrides=spec["overrides"])
    report = run(recipe)
    out = Path(recipe.output_dir)
    return {
        "method": describe(recipe),
        "accuracy": report["accuracy"],
        "f1_macro": report["f1_macro"],
        "trainable_parameters": report["train"]["trainable_parameters"],
        "train_seconds": round(report["train"]["train_runtime"], 1),
        "adapter_bytes": sum(p.stat().st_size for p in out.glob("adapter_model.*")),
        "eval_examples_per_second": report["scoring"]["examples_per_second"],
        "scoring_mode": report["scoring"]["mode"],
        "n_train": report["data"]["n_train"],
        "n_eval": report["data"]["n_eval"],
    }


def common_overrides(args: argparse.Namespace, output_dir: str) -> list[str]:
    steps = args.steps or (4 if args.quick else 40)
    sets = [
        f"train.max_steps={steps}",
        "train.save_steps=1000",
        "eval.curve_points=0",
        "eval.calibration_samples=0",
        "eval.baselines=false",
        f"output_dir={output_dir}",
    ]
    if args.quick:
        sets += ["model.name_or_path=tiny-mistral", "data.preset=quickstart", "quantization=null", "lora.r=4"]
    if args.data_path:
        sets.append(f"data.path={args.data_path}")
    rows = args.eval_rows or (16 if args.quick else None)
    if rows:
        sets.append(f"data.max_eval_samples={rows}")
    return sets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = args.method or list(METHODS)
    load = [loadavg()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fintrl-bench-peft-") as tmp:
        for method in methods:
            overrides = [*common_overrides(args, f"{tmp}/{method}"), f"peft.method={method}", *METHODS[method]]
            print(f"{method}: {' '.join(overrides[-3:])}", file=sys.stderr, flush=True)
            log = Path(args.out).with_suffix(f".{method}.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            spec = {"recipe": args.recipe, "overrides": overrides}
            results[method] = run_worker(
                "benchmarks.bench_peft:run_method", spec, log=log, timeout=args.timeout, name=method
            ) | {"overrides": [o for o in overrides if not o.startswith("output_dir=")]}
    load.append(loadavg())
    warn_if_loaded(load, os.cpu_count())
    report = {"recipe": args.recipe, "quick": args.quick, "results": results, "environment": environment()}
    print(table(results))
    print(f"wrote {write_report(args.out, report)}", file=sys.stderr)
    return 0 if all("error" not in r for r in results.values()) else 1


def table(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table benchmarks/README.md shows."""
    lines = [
        "| method | accuracy | macro-F1 | trainable parameters | training s | adapter on disk | learning rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | |")
            continue
        lr = next((o.split("=")[1] for o in r["overrides"] if o.startswith("train.learning_rate=")), "recipe's")
        lines.append(
            f"| {r['method']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['trainable_parameters']:,} | "
            f"{r['train_seconds']:.0f} | {r['adapter_bytes'] / 1e6:.2f} MB | {lr} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
