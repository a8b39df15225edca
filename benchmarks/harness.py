"""What every benchmark shares: the environment it ran in, workers in fresh processes, timing and memory (the
trainers and their instrumentation are in `benchmarks/training.py`).

A measurement that must not share warm caches, allocator state, torch threads or peak-memory counters with the
others runs in its own Python process:

    result = run_worker("benchmarks.bench_train:train_variant", spec, log=Path("runs/bench/x.log"), timeout=600)

runs `train_variant(spec)` under `python -m benchmarks.harness` (from the repository root) and returns the dict it
returned, plus `process_seconds` and the worker's `environment()`; or `{"error": ..., "process_seconds": ...}` when it
failed or ran past `timeout` (its whole process group is killed, as it is when the parent is interrupted).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LIBRARIES = (
    "fintrl",
    "torch",
    "transformers",
    "trl",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "tokenizers",
    "pyarrow",
)
K = TypeVar("K")


# -- environment ------------------------------------------------------------------------------------------------
def environment(**extra: Any) -> dict[str, Any]:
    """Where a benchmark ran: Python and library versions (None when not installed), machine, CPU count and torch
    threads, `device` (the GPU's name, else "cpu") with the GPU's memory, CUDA version and capability, and `paths`:
    where each library already imported was loaded from (gpu_check carries its own copies). `extra` adds keys."""
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for name in LIBRARIES:
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:  # e.g. fintrl from a checkout on PYTHONPATH
            env[name] = getattr(sys.modules.get(name), "__version__", None)
    env["paths"] = {
        name: str(Path(sys.modules[name].__file__).parent.parent)
        for name in LIBRARIES
        if getattr(sys.modules.get(name), "__file__", None)
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            device=props.name,
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        env.update(device="cpu", gpu=None)
    return {**env, **extra}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: every report records them at its start and end."""
    return list(os.getloadavg())


def warn_if_loaded(load_start_end: list[list[float]], cpu_count: int | None) -> None:
    """Say so under a table when the 1-minute load average went above the CPU count during the run."""
    if max(load_start_end[0][0], load_start_end[1][0]) > (cpu_count or 1):
        print(
            f"warning: load average above the {cpu_count} CPUs: other work shared the machine, ratios are noisy "
            "(use --repeats)"
        )


def setup_torch(threads: int | None = None) -> None:
    """Quiet transformers (errors only, no progress bars) and pin torch's intra-op threads when `threads` is set."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """The results JSON (folders created as needed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out


# -- workers: one function, one fresh process -----------------------------------------------------------------------
def dataset_bench(
    name: str, args: Any, rows: Callable[[], list[dict[str, Any]]], render: Callable[[dict[str, Any]], str]
) -> int:
    """A real-data benchmark's main: `--report` prints an earlier results JSON; else every `args.datasets` must be in
    ../shared/data, `rows()` measures, and the report (rows + environment) is written to `args.out` and printed."""
    if args.report:
        print(render(json.loads(Path(args.report).read_text())))
        return 0
    missing = [d for d in args.datasets if not (SHARED_DATA / d / "train.csv").is_file()]
    if missing:
        print(f"{name}: no data for {missing} under {SHARED_DATA}", file=sys.stderr)
        return 2
    measured = rows()
    report = {"meta": {"environment": environment(), "load_end": loadavg(), "quick": args.quick}, "rows": measured}
    write_report(args.out, report)
    print(render(report))
    return 0


def run_worker(
    target: str,
    spec: dict[str, Any],
    *,
    log: Path,
    timeout: float | None = None,
    name: str | None = None,
    tail_lines: int = 30,
) -> dict[str, Any]:
    """Run `target` ("package.module:function", called with `spec`, returning a JSON-able dict) in a fresh Python
    process from the repository root, its stdout and stderr to `log`. `spec["threads"]` sets torch's threads there.

    Returns the worker's dict with `environment` (the worker's own `environment()`, unless it set one) and
    `process_seconds`; on failure, `{"error": "exit N" | "stopped at the time budget after S s", "process_seconds"}`,
    with the log's last lines printed to stderr."""
    name = name or target
    with tempfile.TemporaryDirectory(prefix="fintrl-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "benchmarks.harness", target, str(spec_path), str(result_path)]
        start = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                env={**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"},
            )
            try:
                code: int | None = proc.wait(timeout=None if timeout is None else max(timeout, 1))
            except subprocess.TimeoutExpired:
                code = None
            finally:  # past the timeout, or the parent interrupted (Ctrl-C): the worker and its children go too
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        wall = time.perf_counter() - start
        if code == 0 and result_path.is_file():
            return {**json.loads(result_path.read_text()), "process_seconds": wall}
    why = (
        f"stopped at the time budget after {wall:.0f} s"
        if code is None
        else f"exit {code}"
        if code
        else "no result written"
    )
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-tail_lines:])
    print(f"{name} failed ({why}); last lines of its log {log}:\n{tail}", file=sys.stderr)
    return {"error": why, "process_seconds": wall}


def worker_main(argv: list[str]) -> int:
    """The worker process: `python -m benchmarks.harness package.module:function SPEC.json RESULT.json`."""
    if len(argv) != 3:
        raise SystemExit(
            "usage: python -m benchmarks.harness package.module:function SPEC.json RESULT.json "
            "(run by harness.run_worker)"
        )
    target, spec_path, result_path = argv
    module, _, function = target.partition(":")
    fn = getattr(importlib.import_module(module), function)
    spec = json.loads(Path(spec_path).read_text())
    setup_torch(spec.get("threads"))
    result = fn(spec)
    result.setdefault("environment", environment())
    Path(result_path).write_text(json.dumps(result))
    return 0


# -- timing and memory ----------------------------------------------------------------------------------------------
def sync() -> None:
    """Wait for queued CUDA work (a no-op on CPU): GPU timings would otherwise measure only the launches."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Stopwatch:
    start: float
    seconds: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """`with stopwatch() as clock: ...` then `clock.seconds` (wall time, CUDA synchronised at both ends)."""
    sync()
    clock = Stopwatch(time.perf_counter())
    yield clock
    sync()
    clock.seconds = time.perf_counter() - clock.start


def round_robin(
    tasks: dict[K, Callable[[], Any]], repeats: int, on_time: Callable[[int, K, float], None] | None = None
) -> tuple[dict[K, list[float]], dict[K, Any]]:
    """Time every task `repeats` times, round-robin: on a shared machine a burst of outside load then hits every task
    alike instead of one of them. Warm them up first. Returns each task's times and its last output;
    `on_time(repeat, key, seconds)` is called after each."""
    times: dict[K, list[float]] = {key: [] for key in tasks}
    outputs: dict[K, Any] = {}
    for rep in range(repeats):
        for key, fn in tasks.items():
            with stopwatch() as clock:
                outputs[key] = fn()
            times[key].append(clock.seconds)
            if on_time:
                on_time(rep, key, clock.seconds)
    return times, outputs


def rss_mb() -> float | None:
    """The process's resident memory now, in MiB (None where it cannot be read)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
    return None


def reset_peak_memory() -> int | None:
    """Collect garbage and restart CUDA's peak counters; returns the VRAM allocated now (None on CPU)."""
    import gc

    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_memory() -> dict[str, Any]:
    """Process peak RSS (MiB, over the whole process) and peak VRAM allocated / reserved since the last reset."""
    import resource

    import torch

    cuda = torch.cuda.is_available()
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "peak_vram_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_vram_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
    }


if __name__ == "__main__":
    from benchmarks.harness import worker_main as _worker_main  # the module proper, not this __main__ copy

    sys.exit(_worker_main(sys.argv[1:]))
