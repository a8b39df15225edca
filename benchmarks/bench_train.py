"""Training throughput: fintrl's trainer (recipe + TRAIN_DEFAULTS, QLoRA NF4) against TRL's SFTTrainer defaults.

Every variant trains the same 4-bit model with the same LoRA config, batch size and data for `--steps` optimizer
steps, each in its own subprocess (so peak memory does not mix), in one run on one machine:
- `trl_default`: `SFTTrainer` with `SFTConfig` holding only what it needs to run here (output_dir, report_to none,
  max_steps, batch size; on CPU use_cpu=True, bf16=False). TRL defaults then apply: gradient checkpointing on,
  random sampler (no length grouping), LoRA adapters cast to bf16 for the quantized model.
- `fintrl`: `fintrl.train.build_trainer` with the recipe's settings (TRAIN_DEFAULTS under the recipe's `train:`).
- `fintrl[KEY=VALUE,...]`: fintrl with overrides (`--variant`), to justify a default with a ratio.

Tokens are the non-padding tokens (attention_mask sum) of the batches the trainer actually consumed, counted by
wrapping its data collator; tokens/s = real tokens / train time. Peak memory: process peak RSS on CPU
(getrusage), peak allocated VRAM (torch.cuda.max_memory_allocated) on GPU. The baseline trainer, the counting and
the worker processes are `benchmarks.harness`'s. From the repository root:

    python -m benchmarks.bench_train --quick --model tiny-mistral
    python -m benchmarks.bench_train --model smollm2-135m-instruct --data-path ../shared/data/fpb_allagree \\
        --variant group_by_length=false --variant gradient_checkpointing=true
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    environment,
    loadavg,
    run_worker,
    stopwatch,
    warn_if_loaded,
    write_report,
)
from benchmarks.training import build_bench_trainer, measure_training

SECTIONS = ("model", "quantization", "lora", "data", "prompt", "train", "eval", "seed")
ALIASES = {  # shorthand -> recipe override (values parsed as YAML, as `fintrl run --set`)
    "group_by_length": lambda v: f"train.train_sampling_strategy={'group_by_length' if _truthy(v) else 'random'}",
    # fintrl's trainer with TRL's own compute_loss: isolates the shared-prefix / answer-only LM head loss
    "trl_loss": lambda v: f"{TRL_LOSS}={_truthy(v)}",
}
TRL_LOSS = "bench.trl_loss"  # handled by the worker, not a recipe key


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="tiny-mistral", help="offline name (tiny-mistral, smollm2-135m-instruct), folder or Hub id"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: --steps 6")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 30; quick 6)")
    p.add_argument(
        "--recipe",
        default=str(REPO / "recipes" / "quickstart.yaml"),
        help="recipe giving quantization, LoRA, prompt and train settings (model and data are replaced)",
    )
    p.add_argument(
        "--data-path", default=None, help="a folder of train/validation CSVs (default: the `quickstart` preset)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="per-device batch size for every variant (default: the recipe's)"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="an extra fintrl variant; keys are SFTConfig fields (train.*) or recipe paths (lora.r=8); "
        "`group_by_length=true|false` is shorthand for train.train_sampling_strategy. Repeatable.",
    )
    p.add_argument("--no-trl", action="store_true", help="skip the TRL-defaults baseline (ratios then against fintrl)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads in each worker (default: torch's choice)"
    )
    p.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; the fastest is kept")
    p.add_argument("--out", default="runs/bench/bench_train.json", help="results JSON (worker logs next to it)")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 30)
    return args


def split_variant(text: str) -> list[str]:
    """`a=1,b=[x,y]` -> ["a=1", "b=[x,y]"] (commas inside brackets stay)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def variant_overrides(text: str) -> list[str]:
    out = []
    for item in split_variant(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected KEY=VALUE")
        key = key.strip()
        if key in ALIASES:
            out.append(ALIASES[key](value))
        elif key.split(".")[0] in SECTIONS:
            out.append(f"{key}={value}")
        else:
            out.append(f"train.{key}={value}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# worker: one variant, in its own process (harness.run_worker)
# ---------------------------------------------------------------------------------------------------------------
def train_variant(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fintrl.checks.library_fields import check_library_fields
    from fintrl.data.loading import load_labeled_data
    from fintrl.model.loading import load_model, load_tokenizer
    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import load_recipe

    overrides = [f"model.name_or_path={spec['model']}", f"train.max_steps={spec['steps']}"]
    if spec.get("data_path"):
        overrides += ["data.preset=null", f"data.path={spec['data_path']}"]
    if spec.get("batch_size"):
        overrides.append(f"train.per_device_train_batch_size={spec['batch_size']}")
    trl_loss = f"{TRL_LOSS}=True" in spec.get("overrides", [])
    overrides += [o for o in spec.get("overrides", []) if not o.startswith(TRL_LOSS)]
    recipe = load_recipe(spec["recipe"], overrides=overrides)
    check_library_fields(recipe)

    data = load_labeled_data(recipe.data)
    tokenizer = load_tokenizer(recipe.model, recipe.prompt.system)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    with stopwatch() as load:
        model = load_model(recipe.model, recipe.quantization)

    with tempfile.TemporaryDirectory(prefix="fintrl-bench-") as tmp:
        trainer = build_bench_trainer(spec["kind"], recipe, model, tokenizer, builder, data.train, tmp)
        if trl_loss:
            from trl import SFTTrainer

            trainer.compute_loss = SFTTrainer.compute_loss.__get__(trainer)
        measured = measure_training(trainer, warmup_steps=1)  # steady: steps 2..N, without the first's one-off costs

    steady, peak_vram = measured.pop("after_warmup"), measured["peak_vram_bytes"]
    return {
        "kind": spec["kind"],
        "overrides": spec.get("overrides", []),
        **measured,
        "steady": steady,
        "load_model_s": load.seconds,
        "peak_vram_mb": peak_vram / 2**20 if peak_vram is not None else None,
        "n_train_rows": len(data.train),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------------
# parent: run every variant in a subprocess, print the table
# ---------------------------------------------------------------------------------------------------------------
def run_variant(name: str, spec: dict[str, Any], log_dir: Path, tag: str) -> dict[str, Any]:
    log = log_dir / f"{tag}.log"
    result = run_worker("benchmarks.bench_train:train_variant", spec, log=log, name=f"variant {name}", tail_lines=25)
    if "error" not in result:
        print(
            f"{name}: {result['train_seconds']:.1f} s training, {result['process_seconds']:.0f} s with start-up",
            file=sys.stderr,
        )
    return {"name": name, "log": str(log), **result}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_path = str(Path(args.data_path).resolve()) if args.data_path else None
    if data_path and not Path(data_path).exists():
        raise SystemExit(f"--data-path {args.data_path}: does not exist")
    base = {
        "model": args.model,
        "recipe": str(Path(args.recipe).resolve()),
        "steps": args.steps,
        "data_path": data_path,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    variants: list[tuple[str, dict[str, Any]]] = []
    if not args.no_trl:
        variants.append(("trl_default", {**base, "kind": "trl_default"}))
    variants.append(("fintrl", {**base, "kind": "fintrl"}))
    for text in args.variant:
        variants.append((f"fintrl[{text}]", {**base, "kind": "fintrl", "overrides": variant_overrides(text)}))

    out = Path(args.out)
    log_dir = out.with_suffix("").with_name(out.stem + "_logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    load_at_start = loadavg()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for rep in range(args.repeats):  # interleaved, so outside load hits every variant alike
        for i, (name, spec) in enumerate(variants):
            runs[name].append(run_variant(name, spec, log_dir, f"{i}_{spec['kind']}_r{rep + 1}"))
    best = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        best[name] = max(ok, key=lambda r: r["tokens_per_second"]) if ok else rs[-1]
        best[name]["all_tokens_per_second"] = [r.get("tokens_per_second") for r in rs]

    report = {
        "benchmark": "bench_train",
        "args": vars(args),
        "model": args.model,
        "data": data_path or "preset quickstart (packaged sample)",
        "environment": environment(),
        "loadavg_start_end": [load_at_start, loadavg()],
        "variants": best,
    }
    print_table(report)
    write_report(out, report)
    print(f"\nresults: {out} (worker logs in {log_dir})")
    return 0 if all("error" not in r for r in best.values()) else 1


def print_table(report: dict[str, Any]) -> None:
    variants = report["variants"]
    ref_trl = variants.get("trl_default")
    ref_fintrl = variants.get("fintrl")
    load = report["loadavg_start_end"]
    any_ok = next((r for r in variants.values() if "error" not in r), None)
    print(
        f"\nbench_train: {report['model']}, data {report['data']}, {report['args']['steps']} steps, "
        f"batch {any_ok['settings']['per_device_train_batch_size'] if any_ok else '?'}, "
        f"{report['environment']['device']}, {any_ok['torch_threads'] if any_ok else '?'} threads, "
        f"best of {report['args']['repeats']}; load average {load[0][0]:.1f} -> {load[1][0]:.1f}\n"
    )
    mem_col = "peak VRAM MB" if report["environment"]["device"] != "cpu" else "peak RSS MB"
    print(
        f"| variant                        | tok/s | ex/s | steady tok/s | pad % | {mem_col:>12} "
        "| x TRL | x fintrl | settings |"
    )
    print(
        "|--------------------------------|------:|-----:|-------------:|------:|-------------:|------:|---------:|----------|"
    )
    for name, r in variants.items():
        if "error" in r:
            print(f"| {name:<30} | failed ({r['error']}, see {r['log']}) |")
            continue
        mem = r["peak_vram_mb"] if r["peak_vram_mb"] is not None else r["peak_rss_mb"]
        x_trl = r["tokens_per_second"] / ref_trl["tokens_per_second"] if ref_trl and "error" not in ref_trl else None
        x_fin = (
            r["tokens_per_second"] / ref_fintrl["tokens_per_second"]
            if ref_fintrl and "error" not in ref_fintrl
            else None
        )
        s = r["settings"]
        settings = (
            f"gc={'on' if s['gradient_checkpointing'] else 'off'}, sampler={s['train_sampling_strategy']}, "
            f"adapters={'/'.join(s['adapter_dtypes'])}"
        )
        steady = r["steady"]["tokens_per_second"] if r["steady"] else None
        print(
            f"| {name:<30} | {r['tokens_per_second']:5.0f} | {r['examples_per_second']:4.2f} | "
            f"{'-' if steady is None else format(steady, '12.0f'):>12} | {r['padding_fraction']:5.1%} | {mem:12.0f} | "
            f"{'-' if x_trl is None else format(x_trl, '5.2f'):>5} "
            f"| {'-' if x_fin is None else format(x_fin, '8.2f'):>8} | "
            f"{settings} |"
        )
    print(
        "tok/s = non-padding tokens fed / train time (all steps); steady = steps 2..N; pad % = padding share of the "
        "batches; x = tok/s ratio"
    )
    warn_if_loaded(load, report["environment"]["cpu_count"])


if __name__ == "__main__":
    sys.exit(main())
