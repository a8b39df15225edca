"""Several processes, one run: who is the main process, what the others wait for, and work split across them.

`fintrl run` works unchanged under a launcher that starts one process per device (`accelerate launch`, `torchrun`):
every process trains its slice of each batch (DDP, FSDP or DeepSpeed, as the accelerate config says), each scores a
contiguous shard of the eval rows, and the main process (global rank 0) alone takes the run folder's lock, writes
its files, swaps it into place and publishes. Nothing here starts processes or assumes a launcher: the world is
read from the variables every launcher sets (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`), and the process group is
accelerate's `PartialState`, the one the Trainer uses (created here first with the same arguments, so it is one).

Failures: a step that only the main process runs (`on_main`) hands its error to every process, which raise it too,
so no process waits for a main process that has given up. A failure elsewhere (one rank out of memory mid-step)
ends that process; the launcher (torchrun's elastic agent, which `accelerate launch` uses) then stops the others.
The run's work folder is left for `--resume` or `--overwrite` as after any interrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from fintrl.errors import FintrlError

if TYPE_CHECKING:
    from accelerate import PartialState


logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Set by `accelerate launch` from the config file's distributed_type: training that shards the weights themselves.
SHARDED_ENV = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def world_size() -> int:
    """Processes in this run (1 without a launcher); read from the environment, so it costs no import."""
    return _env_int("WORLD_SIZE", default=1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _env_int("RANK", default=0)


def local_rank() -> int:
    """This process's rank on its machine: the GPU it uses (0 without a launcher)."""
    return _env_int("LOCAL_RANK", default=0)


def is_main() -> bool:
    """The process that writes the run folder, prints results and publishes."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def sharded_training(train: dict[str, Any] | None = None) -> str | None:
    """`fsdp` or `deepspeed` when the weights are sharded across processes (the accelerate config's
    `distributed_type`, or the recipe's `train.fsdp` / `train.deepspeed`), else None (one process, or DDP)."""
    train = train or {}
    if truthy(os.environ.get("ACCELERATE_USE_FSDP")) or train.get("fsdp"):
        return "fsdp"
    if truthy(os.environ.get("ACCELERATE_USE_DEEPSPEED")) or train.get("deepspeed"):
        return "deepspeed"
    return None


def effective_batch(train: dict[str, Any], processes: int) -> tuple[int, int, int, int]:
    """(per-device batch, processes, accumulation steps, their product): the examples behind one optimizer step.
    `train`: the SFTConfig values in force (fintrl's defaults under the recipe's)."""
    per_device = int(train["per_device_train_batch_size"])
    accumulation = int(train.get("gradient_accumulation_steps") or 1)
    return per_device, processes, accumulation, per_device * processes * accumulation


def describe_batch(train: dict[str, Any], processes: int) -> str:
    per_device, n, accumulation, total = effective_batch(train, processes)
    processes_text = f"{n} process{'es' if n > 1 else ''}"
    return f"effective batch {total} = {per_device} per device x {processes_text} x {accumulation} accumulation"


def state() -> PartialState:
    """accelerate's process state, created as the Trainer will create it (CPU: the gloo backend), so it is shared."""
    import torch
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or truthy(os.environ.get("ACCELERATE_USE_CPU"))
    return PartialState(cpu=use_cpu)


class RelayedError(FintrlError):
    """The main process's failure, raised on another process (its one-line message; the main process printed it)."""

    relayed = True


def _relay(kind: type[BaseException], message: str, exit_code: int) -> BaseException:
    """The main process's exception, rebuilt on another process: the same class when it takes a message."""
    if issubclass(kind, KeyboardInterrupt):
        return KeyboardInterrupt()
    if issubclass(kind, FintrlError):
        with contextlib.suppress(Exception):
            err = kind(message)
            err.relayed = True  # type: ignore[attr-defined]
            return err
    err = RelayedError(f"the main process failed: {kind.__name__}: {message}")
    err.exit_code = exit_code
    return err


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only; every process returns its result, or raises its error.

    It is also a barrier: the other processes wait here until the main process has finished `fn`."""
    if not is_distributed():
        return fn()
    from accelerate.utils import broadcast_object_list

    state()
    box: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            box = [("ok", fn())]
        except BaseException as err:  # noqa: BLE001 - handed to every process, then raised here too
            error = err
            box = [("error", type(err), " ".join(str(err).split()), getattr(err, "exit_code", 1))]
    broadcast_object_list(box, from_process=0)
    if error is not None:
        with contextlib.suppress(AttributeError):
            error.shared = True  # type: ignore[attr-defined]  # every process raises it: see fintrl.cli.main
        raise error
    status, *rest = box[0]
    if status == "error":
        relayed = _relay(*rest)
        relayed.shared = True  # type: ignore[attr-defined]
        raise relayed
    return rest[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process first, then the others (shared caches: data files, an offline model built on first use)."""
    if not is_distributed():
        yield
        return
    with state().main_process_first():
        yield


def wait_for_everyone() -> None:
    if is_distributed():
        state().wait_for_everyone()


def split_and_gather(items: list[T], fn: Callable[[list[T]], R]) -> list[R]:
    """`fn` on this process's contiguous shard of `items` (possibly empty); every process gets every shard's result in
    rank order, so concatenating them keeps the items' order (accelerate's `split_between_processes` and
    `gather_object`). One process: `[fn(items)]`."""
    if not is_distributed():
        return [fn(list(items))]
    from accelerate.utils import gather_object

    with state().split_between_processes(list(items)) as shard:
        mine = fn(list(shard))
    return gather_object([mine])


def shutdown() -> None:
    """Tear the process group down before the interpreter exits. Left to the interpreter's exit, gloo's threads can
    abort the process ("terminate called without an active exception"), so a launcher sees SIGABRT, not the exit code.
    Local, not a collective: each process calls it once, after its last collective."""
    if not is_distributed() or "torch.distributed" not in sys.modules:  # nothing was started: no torch import here
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def whole_weights() -> Iterator[None]:
    """Load a model whole on every process after sharded training: without FSDP's rank-0-only loading (its variables
    hidden) or DeepSpeed ZeRO-3's partitioned initialisation (transformers' global config unset: training is over)."""
    saved = {
        name: os.environ.pop(name) for name in (*SHARDED_ENV, "FSDP_CPU_RAM_EFFICIENT_LOADING") if name in os.environ
    }
    with contextlib.suppress(ImportError):
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    try:
        yield
    finally:
        os.environ.update(saved)
