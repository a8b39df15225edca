"""Several processes, one run: who is the main process, what the others wait for, and scoring split across them.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fintrl.errors import FintrlError

if TYPE_CHECKING:
    from accelerate import PartialState

    from fintrl.recipe import Recipe
    from fintrl.scoring import LabelScorer, ScoreResult

logger = logging.getLogger(__name__)
T = TypeVar("T")

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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def sharded_training(train: dict[str, Any] | None = None) -> str | None:
    """`fsdp` or `deepspeed` when the weights are sharded across processes (the accelerate config's
    `distributed_type`, or the recipe's `train.fsdp` / `train.deepspeed`), else None (one process, or DDP)."""
    train = train or {}
    if _truthy(os.environ.get("ACCELERATE_USE_FSDP")) or train.get("fsdp"):
        return "fsdp"
    if _truthy(os.environ.get("ACCELERATE_USE_DEEPSPEED")) or train.get("deepspeed"):
        return "deepspeed"
    return None


def state() -> PartialState:
    """accelerate's process state, created as the Trainer will create it (CPU: the gloo backend), so it is shared."""
    import torch
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or _truthy(os.environ.get("ACCELERATE_USE_CPU"))
    return PartialState(cpu=use_cpu)


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


@dataclass(frozen=True)
class Launch:
    """How a run is launched, as far as the checks and the effective batch care: read from an accelerate config
    file (`fintrl validate --accelerate-config`) or from the variables `accelerate launch` sets (`fintrl run`)."""

    kind: str | None  # "fsdp", "deepspeed", or None (one process, DDP)
    processes: int
    fsdp: dict[str, bool] = field(
        default_factory=dict
    )  # use_orig_params, cpu_ram_efficient_loading, sync_module_states
    zero_stage: int | None = None
    source: str = "the launch environment"


FSDP_FLAGS = ("use_orig_params", "cpu_ram_efficient_loading", "sync_module_states")


def launch_from_env() -> Launch:
    fsdp = {
        flag: _truthy(os.environ[f"FSDP_{flag.upper()}"]) for flag in FSDP_FLAGS if f"FSDP_{flag.upper()}" in os.environ
    }
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    return Launch(sharded_training(), world_size(), fsdp, int(stage) if stage.isdigit() else None)


def launch_from_config(path: str | Path, processes: int | None = None) -> Launch:
    """An accelerate config file (recipes/accelerate/*.yaml): its distributed_type, process count, FSDP flags."""
    import yaml

    from fintrl.errors import RecipeError

    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise RecipeError(f"--accelerate-config {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"--accelerate-config {path}: not YAML ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise RecipeError(f"--accelerate-config {path}: no distributed_type; give an accelerate config file")
    kind = {"FSDP": "fsdp", "DEEPSPEED": "deepspeed"}.get(str(config["distributed_type"]).upper())
    raw = config.get("fsdp_config") or {}
    fsdp = {flag: bool(raw[f"fsdp_{flag}"]) for flag in FSDP_FLAGS if f"fsdp_{flag}" in raw}
    stage = (config.get("deepspeed_config") or {}).get("zero_stage")
    n = processes or int(config.get("num_processes") or 1)
    return Launch(kind, n, fsdp, stage, source=f"accelerate config {path}")


def launch_problems(recipe: Recipe, launch: Launch) -> list[str]:
    """Combinations FSDP / DeepSpeed refuse late or train wrong with, each as `key: what; the fix` (`check_recipe`).

    FSDP-QLoRA and ZeRO-3-QLoRA (PEFT's and bitsandbytes' guides): the packed 4-bit weights must be stored in the
    model's float dtype (`bnb_4bit_quant_storage` = `model.dtype`), since both shard float tensors of one dtype; FSDP
    then needs `use_orig_params: false` and rank-0 loading (`cpu_ram_efficient_loading` with `sync_module_states`).
    """
    train = recipe.train or {}
    kind = launch.kind or sharded_training(train)
    if kind is None or (kind == "deepspeed" and launch.zero_stage not in (None, 3)):
        return []
    name = "FSDP" if kind == "fsdp" else "DeepSpeed ZeRO-3"
    where = launch.source if launch.kind else "the recipe's train section"
    quant = recipe.quantization or {}
    problems = []
    if quant.get("load_in_8bit"):
        problems.append(
            f"quantization.load_in_8bit: {name} ({where}) shards 4-bit weights only; use load_in_4bit with "
            f"bnb_4bit_quant_storage equal to model.dtype, or quantization: null"
        )
    if quant.get("load_in_4bit"):
        storage, dtype = quant.get("bnb_4bit_quant_storage"), recipe.model.dtype
        if dtype == "auto":
            problems.append(
                f"model.dtype: auto under {name}-QLoRA ({where}); name it (bfloat16), and set "
                "quantization.bnb_4bit_quant_storage to the same"
            )
        elif storage != dtype:
            problems.append(
                f"quantization.bnb_4bit_quant_storage: {storage or 'unset (uint8)'} does not match model.dtype "
                f"{dtype} under {name} ({where}), which shards only float weights of one dtype; set it to {dtype}"
            )
        flags = {**launch.fsdp, **_recipe_fsdp_flags(train)}
        if kind == "fsdp":
            if flags.get("use_orig_params") is True:
                problems.append(f"fsdp_use_orig_params: true ({where}); FSDP-QLoRA needs false")
            if flags.get("cpu_ram_efficient_loading") is False:
                problems.append(f"fsdp_cpu_ram_efficient_loading: false ({where}); FSDP-QLoRA needs true")
            if flags.get("cpu_ram_efficient_loading") and flags.get("sync_module_states") is False:
                problems.append(
                    f"fsdp_sync_module_states: false ({where}); rank-0 loading (cpu_ram_efficient_loading) needs true"
                )
    return problems


def _recipe_fsdp_flags(train: dict[str, Any]) -> dict[str, bool]:
    """train.fsdp_config's flags (TrainingArguments takes them with or without the `fsdp_` prefix)."""
    raw = train.get("fsdp_config") if isinstance(train.get("fsdp_config"), dict) else {}
    return {k.removeprefix("fsdp_"): bool(v) for k, v in raw.items() if k.removeprefix("fsdp_") in FSDP_FLAGS}


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
            error.shared = True  # type: ignore[attr-defined]  # every process raises it: see fintrl.cli
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


def score(scorer: LabelScorer, texts: list[str], progress: bool = True) -> ScoreResult:
    """`scorer.score(texts)`, with each process scoring a contiguous shard and every process getting all the results
    in the original order (accelerate's `split_between_processes` and `gather_object`). One process: unchanged."""
    if not is_distributed():
        return scorer.score(texts, progress=progress)
    import numpy as np
    from accelerate.utils import gather_object

    from fintrl.scoring import ScoreResult

    texts = list(texts)
    with state().split_between_processes(texts) as shard:
        shard = list(shard)
        if shard:
            mine = scorer.score(shard, progress=progress and is_main())
        else:  # fewer rows than processes
            mine = ScoreResult([], np.zeros((0, len(scorer.label_ids))), scorer.mode)
    parts: list[ScoreResult] = gather_object([mine])
    if sum(len(p.predictions) for p in parts) != len(texts):
        raise RuntimeError(f"gathered {sum(len(p.predictions) for p in parts)} scores for {len(texts)} texts")
    return ScoreResult(
        predictions=[p for part in parts for p in part.predictions],
        probabilities=np.concatenate([part.probabilities for part in parts]),
        mode=scorer.mode,
        n_truncated=sum(part.n_truncated for part in parts),
        raw_outputs=[r for part in parts for r in part.raw_outputs],
        truncated=[t for part in parts for t in part.truncated],
    )


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
