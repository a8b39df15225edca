"""Inference forms: a run's adapter scored on its 4-bit base (`--exact-4bit`, as trained) against the dense merged form
fintrl loads by default where it agrees (`fintrl.scoring.inference`).

In one run, on one run folder and the same texts, each form loaded in its own fresh process (so peak memory is its
own; `benchmarks.harness.run_worker`), one after the other:
- **single-text latency**: each of `--single` texts scored alone (`scorer.score([text])`, as a one-client server
  does), after two warm-up calls; median and p90 in ms;
- **throughput**: the `--n` texts scored in one call at the recipe's eval batch size (best of `--repeats`), examples/s;
- **agreement** on those texts: labels the same, max |dp| (the same check `load_inference` runs on the eval rows);
- **peak memory** (process peak RSS, or VRAM on a GPU) and load time.
The agreement check is run (and cached) first, in a worker of its own, so no form's process pays for it. Three
variants: `dense`, `4bit` (the same scorer on the 4-bit form), and `4bit-before` (the 4-bit form with the scorer's
prefix run again on every call, as every command scored before the dense form and the kept prefix existed). Ratios:
latency over dense latency, dense throughput over the other's. From the repository root:

    python -m benchmarks.bench_inference                                  # runs/quickstart, 200 texts
    python -m benchmarks.bench_inference --quick --target RUN_FOLDER      # smoke: 24 texts, 4 single
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_scoring import load_texts
from benchmarks.harness import environment, loadavg, peak_memory, reset_peak_memory, run_worker, stopwatch, write_report

FORMS = ("dense", "4bit", "4bit-before")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="runs/quickstart", help="a run folder (default: runs/quickstart)")
    p.add_argument("--quick", action="store_true", help="smoke run: --n 24, --single 4, 1 repeat")
    p.add_argument("--n", type=int, default=None, help="texts for throughput and agreement (default 200; quick 24)")
    p.add_argument("--single", type=int, default=None, help="texts timed one at a time (default 30; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="throughput repeats, best kept (default 2; quick 1)")
    p.add_argument("--data", help="a text,label CSV (default: FPB all-agree validation, else the packaged sample)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's)")
    p.add_argument("--out", default="runs/bench/bench_inference.json", help="results JSON")
    args = p.parse_args(argv)
    args.n = args.n or (24 if args.quick else 200)
    args.single = args.single or (4 if args.quick else 30)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


def check_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run (or read) the agreement check `load_inference` caches, so the form workers find it done."""
    from fintrl.scoring.inference import load_inference
    from fintrl.scoring.targets import resolve_target

    form = load_inference(resolve_target(spec["target"])).form
    return {"inference": form.record()}


def form_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One form: load, single-text latencies, throughput on every text, its predictions, its peak memory."""
    import numpy as np

    from fintrl.scoring.inference import load_inference
    from fintrl.scoring.targets import resolve_target

    reset_peak_memory()
    target = resolve_target(spec["target"])
    with stopwatch() as load:
        loaded = load_inference(target, exact_4bit=spec["form"] != "dense")
    scorer = target.scorer(loaded.model, loaded.tokenizer)
    scorer.keep_prefix = spec["form"] != "4bit-before"
    texts, single = spec["texts"], spec["texts"][: spec["single"]]
    for text in single[:2]:
        scorer.score([text], progress=False)  # warm-up: first calls pay one-off costs
    latencies = []
    for text in single:
        with stopwatch() as clock:
            scorer.score([text], progress=False)
        latencies.append(clock.seconds)
    times, result = [], None
    for _ in range(spec["repeats"]):
        with stopwatch() as clock:
            result = scorer.score(texts, progress=False)
        times.append(clock.seconds)
    ms = np.array(latencies) * 1000
    return {
        "form": loaded.form.record(),
        "load_seconds": load.seconds,
        "mode": result.mode,
        "batch_size": scorer.batch_size,
        "single_ms": {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "all": ms.tolist()},
        "throughput_seconds": times,
        "examples_per_second": len(texts) / min(times),
        "predictions": list(result.predictions),
        "probabilities": result.probabilities.tolist(),
        **peak_memory(),
    }


def agreement(dense: dict[str, Any], exact: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    same = np.asarray(dense["predictions"]) == np.asarray(exact["predictions"])
    delta = np.abs(np.asarray(dense["probabilities"]) - np.asarray(exact["probabilities"]))
    return {"n": int(same.size), "same_label": int(same.sum()), "max_abs_dprob": float(delta.max())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.target) / "adapter_config.json").is_file():
        raise SystemExit(f"--target {args.target}: not a run folder with an adapter (train one: make quickstart)")
    source, texts, _ = load_texts(args.data, args.n)
    logs = Path(args.out).with_suffix("")
    logs.mkdir(parents=True, exist_ok=True)
    load_start = loadavg()
    spec = {"target": args.target, "threads": args.threads}
    start = time.perf_counter()
    check = run_worker("benchmarks.bench_inference:check_worker", spec, log=logs / "check.log")
    if "error" in check:
        raise SystemExit(f"the agreement check failed: {check['error']} (log: {logs / 'check.log'})")
    chosen = check["inference"]
    print(f"inference form chosen: {chosen['form']} ({chosen['dtype']}): {chosen['reason']}")
    results: dict[str, dict[str, Any]] = {}
    for form in FORMS:
        job = {**spec, "form": form, "texts": texts, "single": args.single, "repeats": args.repeats}
        results[form] = run_worker("benchmarks.bench_inference:form_worker", job, log=logs / f"{form}.log")
        if "error" in results[form]:
            raise SystemExit(f"the {form} worker failed: {results[form]['error']} (log: {logs / f'{form}.log'})")
        r = results[form]
        print(
            f"  {form:>5} ({r['form']['form']}, {r['form']['dtype']}): single text {r['single_ms']['median']:.0f} ms "
            f"median, {r['examples_per_second']:.1f} examples/s on {len(texts)}, peak RSS {r['peak_rss_mb']:.0f} MiB"
        )
    dense = results["dense"]
    ratios = {
        other: {
            "single_text_latency_over_dense": results[other]["single_ms"]["median"] / dense["single_ms"]["median"],
            "throughput_dense_over_it": dense["examples_per_second"] / results[other]["examples_per_second"],
            "peak_rss_dense_over_it": dense["peak_rss_mb"] / results[other]["peak_rss_mb"],
        }
        for other in FORMS[1:]
    }
    agree = agreement(dense, results["4bit"])
    env = environment(threads=args.threads)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"data": str(source)},
        "environment": env,
        "loadavg_start_end": [load_start, loadavg()],
        "check": chosen,
        "forms": {name: {k: v for k, v in r.items() if k not in ("probabilities",)} for name, r in results.items()},
        "agreement": agree,
        "ratios": ratios,
        "seconds": time.perf_counter() - start,
    }
    out = write_report(args.out, report)
    print()
    print("| form | dtype | single text p50 ms | p90 ms | examples/s | peak RSS MiB | load s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['form']['dtype']} | {r['single_ms']['median']:.0f} | {r['single_ms']['p90']:.0f} | "
            f"{r['examples_per_second']:.1f} | {r['peak_rss_mb']:.0f} | {r['load_seconds']:.1f} |"
        )
    print()
    for other, r in ratios.items():
        print(
            f"dense vs {other}: {r['single_text_latency_over_dense']:.2f}x lower single-text latency, "
            f"{r['throughput_dense_over_it']:.2f}x throughput, x{r['peak_rss_dense_over_it']:.2f} peak memory"
        )
    same = f"{agree['same_label']}/{agree['n']}"
    print(f"dense vs 4bit: labels the same on {same} texts, max |dp| {agree['max_abs_dprob']:.2g}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
