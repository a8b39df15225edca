"""Batch scoring throughput: `fintrl predict --engine ray` with 1 and 2 workers against single-process `fintrl predict`.

One run, one target, the same N texts: the single-process command (`--input texts.txt --output p.jsonl`) is the
baseline; then `--engine ray --num-workers W` for each W (a local Ray cluster on this machine, started and stopped by
the command, unless --address names a running one). Each is the real command in a fresh process, timed end to end
(model loading and Ray's start-up included: what a user waits for) and, for Ray, the scoring phase the command
reports. Reported: examples/s of each and the ratio to the baseline measured in the same run, and whether every
label agrees with the baseline's. From the repository root:

    python -m benchmarks.bench_ray                               # runs/quickstart, 600 TFNS texts, 1 and 2 workers
    python -m benchmarks.bench_ray --quick --target RUN_FOLDER   # smoke: 48 texts
    python -m benchmarks.bench_ray --address auto --workers 1,2,4,8 --gpus-per-worker 1   # on a running cluster
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, SHARED_DATA, environment, loadavg, write_report

PACKAGED = REPO / "fintrl" / "resources" / "quickstart" / "validation.csv"
SUMMARY = re.compile(r"(\d+) rows scored in ([\d.]+) s \(([\d.]+) examples/s\)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="runs/quickstart", help="what is scored (default: runs/quickstart)")
    p.add_argument("--data", default=None, help="a CSV with a text column (default: TFNS validation, else packaged)")
    p.add_argument("--n", type=int, default=None, help="texts (default 600; quick 48)")
    p.add_argument("--quick", action="store_true", help="smoke run: 48 texts")
    p.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated (default 1,2)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="--num-gpus-per-worker (default: CPU)")
    p.add_argument("--shard-rows", type=int, default=100, help="--shard-rows (default 100: batches to share out)")
    p.add_argument("--address", default=None, help="a running Ray cluster (default: a local one per command)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds each command may take")
    p.add_argument("--out", default="runs/bench/bench_ray.json", help="results JSON")
    args = p.parse_args(argv)
    args.n = args.n or (48 if args.quick else 600)
    args.worker_counts = [int(w) for w in args.workers.split(",")]
    return args


def load_texts(data: str | None, n: int) -> tuple[list[str], str]:
    path = Path(data) if data else SHARED_DATA / "tfns" / "validation.csv"
    if not path.is_file():
        path = PACKAGED
    with path.open(newline="", encoding="utf-8") as f:
        texts = [" ".join(row["text"].split()) for row in csv.DictReader(f) if row["text"].strip()]  # one line each
    return [texts[i % len(texts)] for i in range(n)], str(path)


def run_command(argv: list[str], log: Path, timeout: float) -> float:
    """The command in a fresh process from the repository root; its wall seconds (it must succeed)."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "fintrl.cli.main", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "TQDM_DISABLE": "1"},
            timeout=timeout,
        ).returncode
    if code:
        raise SystemExit(f"`fintrl {' '.join(argv[:3])} ...` exited {code}; its log: {log}")
    return time.perf_counter() - start


def ray_rows(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return sorted(pq.read_table(sorted(folder.glob("part-*.parquet"))).to_pylist(), key=lambda r: r["row"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts, source = load_texts(args.data, args.n)
    logs = Path(args.out).with_suffix("")
    logs.mkdir(parents=True, exist_ok=True)
    load_start = loadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fintrl-bench-ray-") as tmp:
        work = Path(tmp)
        (work / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        with (work / "texts.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text"], *([t] for t in texts)])
        print(f"{args.n} texts from {source}; target {args.target}")

        seconds = run_command(
            ["predict", args.target, "--input", str(work / "texts.txt"), "--output", str(work / "local.jsonl")],
            logs / "single_process.log",
            args.timeout,
        )
        baseline = [json.loads(line)["label"] for line in (work / "local.jsonl").read_text().splitlines()]
        rows.append(
            {"engine": "single process", "workers": 1, "seconds": seconds, "examples_per_second": args.n / seconds}
        )
        print(f"  single process: {seconds:6.1f} s, {args.n / seconds:6.2f} examples/s")

        for workers in args.worker_counts:
            out = work / f"ray-{workers}"
            argv_ray = ["predict", args.target, "--engine", "ray", "--input", str(work / "texts.csv")]
            argv_ray += ["--output", str(out), "--num-workers", str(workers), "--shard-rows", str(args.shard_rows)]
            argv_ray += ["--address", args.address] if args.address else []
            argv_ray += ["--num-gpus-per-worker", str(args.gpus_per_worker)] if args.gpus_per_worker else []
            log = logs / f"ray_{workers}.log"
            seconds = run_command(argv_ray, log, args.timeout)
            found = SUMMARY.search(log.read_text(errors="replace"))
            labels = [r["label"] for r in ray_rows(out)]
            row = {
                "engine": "ray",
                "workers": workers,
                "seconds": seconds,
                "examples_per_second": args.n / seconds,
                "scoring_phase_examples_per_second": float(found.group(3)) if found else None,
                "same_labels_as_single_process": labels == baseline,
            }
            rows.append(row)
            print(
                f"  ray, {workers} worker(s): {seconds:6.1f} s, {row['examples_per_second']:6.2f} examples/s "
                f"(scoring phase {row['scoring_phase_examples_per_second']}); same labels: {labels == baseline}"
            )
    load_end = loadavg()
    base = rows[0]["examples_per_second"]
    for row in rows:
        row["ratio_to_single_process"] = row["examples_per_second"] / base
    env = environment()
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"data": source},
        "environment": env,
        "loadavg_start_end": [load_start, load_end],
        "rows": rows,
    }
    out_path = write_report(args.out, report)
    print()
    print("| engine | workers | seconds | examples/s | x single process | same labels |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        same = r.get("same_labels_as_single_process", "(baseline)")
        print(
            f"| {r['engine']} | {r['workers']} | {r['seconds']:.1f} | {r['examples_per_second']:.2f} | "
            f"{r['ratio_to_single_process']:.2f} | {same} |"
        )
    cpus = env.get("cpu_count") or 1  # Ray's own processes (raylet, GCS, actors) add about 1 at the end
    if max(load_start[0], load_end[0]) > cpus + 1:
        print(
            f"warning: load average above {cpus + 1} ({cpus} CPUs + Ray's own): other work may have shared the machine"
        )
    print(f"results: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
