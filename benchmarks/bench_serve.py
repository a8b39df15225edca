"""Serving throughput and latency: two `fintrl serve` processes compared, each at its own settings.

`--compare batching` (default): dynamic batching on (--max-batch-size 32) against off (1). `--compare form`: the dense
merged form (fintrl's default where it agrees with the adapter) against `--exact-4bit` (the 4-bit base + adapter),
both batching.

A bounded load test on loopback, in one run against one served run folder: the two servers are started side by side;
at each concurrency level (1, 8, 32 clients, each sending one text per request and the next as soon as it is answered)
a fixed number of requests goes to one server, then the same to the other. Reported per level and server:
requests/second, p50/p95/p99 latency, the batches the server ran (its /info counters), the mean batch size, and the
**overhead**: p50 latency over the server's own scoring time per batch (what a request costs beyond the model); then
first-server over second-server ratios, measured in the same run. The labels of both servers are compared too. From
the repository root:

    python -m benchmarks.bench_serve                                   # runs/quickstart, 200 requests per level
    python -m benchmarks.bench_serve --compare form --concurrency 1,8  # dense merged vs --exact-4bit
    python -m benchmarks.bench_serve --quick --target RUN_FOLDER       # smoke: 24 requests, levels 1 and 8
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import REPO, environment, loadavg, write_report

TEXTS = REPO / "fintrl" / "resources" / "quickstart" / "validation.csv"
SERVING = re.compile(r"fintrl: serving .* on (http://\S+) ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="runs/quickstart", help="what `fintrl serve` serves (default: runs/quickstart)")
    p.add_argument("--quick", action="store_true", help="smoke run: 24 requests per level, levels 1 and 8")
    p.add_argument(
        "--compare", choices=("batching", "form"), default="batching", help="batching on/off, or dense/--exact-4bit"
    )
    p.add_argument("--requests", type=int, default=None, help="requests per level and server (default 200; quick 24)")
    p.add_argument("--concurrency", default=None, help="client counts, comma-separated (default 1,8,32; quick 1,8)")
    p.add_argument("--max-batch-size", type=int, default=32, help="the batching server's --max-batch-size")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="the batching server's --max-wait-ms")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per server (OMP_NUM_THREADS; default: torch's)"
    )
    p.add_argument("--load-timeout", type=float, default=600, help="seconds a server may take to load its model")
    p.add_argument("--out", default="runs/bench/bench_serve.json", help="results JSON")
    args = p.parse_args(argv)
    args.requests = args.requests or (24 if args.quick else 200)
    args.levels = [int(c) for c in (args.concurrency or ("1,8" if args.quick else "1,8,32")).split(",")]
    return args


def load_texts() -> list[str]:
    with TEXTS.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row["text"].strip()]


class Server:
    """One `fintrl serve` process on a free loopback port; `stop()` sends Ctrl-C (SIGINT), then kills if need be."""

    def __init__(self, target: str, flags: list[str], log: Path, timeout: float, threads: int | None) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fintrl", "serve", target, "--port", "0", *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                env={**os.environ, "TQDM_DISABLE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})},
            )
        self.url = self._wait(timeout)

    def _wait(self, timeout: float) -> str:
        deadline, url = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"`fintrl serve` exited ({self.proc.returncode}); its log: {self.log}")
            match = url or SERVING.search(self.log.read_text(errors="replace"))
            url = url or (match.group(1) if match else None)
            if url:
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"`fintrl serve` was not ready after {timeout:.0f} s; its log: {self.log}")

    def info(self) -> dict[str, Any]:
        return httpx.get(self.url + "/info", timeout=30).json()

    def counters(self) -> dict[str, Any]:
        return self.info()["counters"]

    def peak_rss_mb(self) -> float | None:
        """The server process's peak resident memory (Linux /proc), in MiB."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


async def load_test(url: str, texts: list[str], n: int, concurrency: int) -> dict[str, Any]:
    """`n` requests, one text each, from `concurrency` clients that each send the next as soon as one is answered."""
    latencies, labels, sent = [0.0] * n, [""] * n, 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def client_loop() -> None:
            nonlocal sent
            while sent < n:
                i, sent = sent, sent + 1
                start = time.perf_counter()
                answer = await client.post(url + "/classify", json={"text": texts[i % len(texts)]})
                latencies[i] = time.perf_counter() - start
                answer.raise_for_status()
                labels[i] = answer.json()["label"]

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": wall,
        "requests_per_second": n / wall,
        **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)},
        "mean_ms": float(ms.mean()),
        "labels": labels,
    }


def measure(server: Server, texts: list[str], n: int, concurrency: int) -> dict[str, Any]:
    before = server.counters()
    row = asyncio.run(load_test(server.url, texts, n, concurrency))
    after = server.counters()
    batches = after["batches"] - before["batches"]
    score_ms = 1000 * (after["score_seconds"] - before["score_seconds"]) / batches
    return {
        **row,
        "batches": batches,
        "mean_batch_size": (after["texts_scored"] - before["texts_scored"]) / batches,
        "score_ms_per_batch": score_ms,
        "overhead_p50_over_score": row["p50_ms"] / score_ms,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | server | req/s | p50 ms | p95 ms | p99 ms | batches | mean batch | score ms/batch | p50 / score |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['server']} | {r['requests_per_second']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['batches']} | {r['mean_batch_size']:.1f} | "
            f"{r['score_ms_per_batch']:.0f} | {r['overhead_p50_over_score']:.2f} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], first: str, second: str) -> list[dict[str, Any]]:
    """First server over second, per concurrency level."""
    out = []
    for a in (r for r in rows if r["server"] == first):
        b = next(r for r in rows if r["server"] == second and r["concurrency"] == a["concurrency"])
        out.append(
            {
                "concurrency": a["concurrency"],
                "throughput": a["requests_per_second"] / b["requests_per_second"],
                "p50": a["p50_ms"] / b["p50_ms"],
                "p99": a["p99_ms"] / b["p99_ms"],
                "same_labels": a["labels"] == b["labels"],
            }
        )
    return out


def server_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    """The two servers compared, by name, first over second."""
    batching = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    if args.compare == "form":
        return {"dense": batching, "4bit": [*batching, "--exact-4bit"]}
    return {"on": batching, "off": ["--max-batch-size", "1", "--max-wait-ms", "0"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = load_texts()
    logs = Path(args.out).with_suffix("")
    load_start = loadavg()
    flags = server_flags(args)
    first, second = flags
    print(f"starting two `fintrl serve {args.target}` processes ({first}, {second}) ...")
    servers: dict[str, Server] = {}
    try:
        start = time.perf_counter()
        for name, server_args in flags.items():
            log = logs / f"server_{name}.log"
            servers[name] = Server(args.target, server_args, log, args.load_timeout, args.threads)
        print(f"both ready in {time.perf_counter() - start:.0f} s; warming up")
        inference = {name: server.info().get("inference") for name, server in servers.items()}
        for server in servers.values():  # first requests pay one-off costs (allocations, kernels)
            measure(server, texts, 8, 4)
        rows = []
        for concurrency in args.levels:  # each level on both servers back to back: outside load hits both alike
            for name, server in servers.items():
                row = {"server": name, **measure(server, texts, args.requests, concurrency)}
                rows.append(row)
                print(
                    f"  {concurrency:>3} clients, {name:>5}: {row['requests_per_second']:6.1f} req/s, "
                    f"p50 {row['p50_ms']:6.0f} ms, p99 {row['p99_ms']:6.0f} ms, mean batch {row['mean_batch_size']:.1f}"
                    f", p50 / scoring {row['overhead_p50_over_score']:.2f}"
                )
    finally:
        peak_rss = {name: server.peak_rss_mb() for name, server in servers.items()}
        codes = {name: server.stop() for name, server in servers.items()}
    load_end = loadavg()
    env = environment()
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "servers": {"flags": flags, "exit_codes": codes, "peak_rss_mb": peak_rss, "inference": inference},
        "environment": env,
        "loadavg_start_end": [load_start, load_end],
        "rows": rows,
        "ratios": {"of": [first, second], "rows": ratios(rows, first, second)},
    }
    out = write_report(args.out, report)
    print()
    print(table(rows))
    print()
    for r in report["ratios"]["rows"]:
        print(
            f"{r['concurrency']:>3} clients: {first} / {second} = {r['throughput']:.2f}x throughput, "
            f"p50 latency x{r['p50']:.2f}, p99 x{r['p99']:.2f}; same labels: {r['same_labels']}"
        )
    for name, form in inference.items():
        if form:
            print(f"{name}: {form['form']} ({form['dtype']}): {form['reason']}")
    print("server peak memory: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in peak_rss.items() if v is not None))
    cpus = env.get("cpu_count") or 1  # the servers and clients keep the CPUs busy themselves (load ~cpus at the end)
    if max(load_start[0], load_end[0]) > cpus + 1:
        print(
            f"warning: load average above {cpus + 1} ({cpus} CPUs, plus this benchmark's own load): other work "
            "may have shared the machine; the ratios are noisy"
        )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
