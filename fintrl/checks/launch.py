"""How a run is launched, and what that asks of its recipe: the effective batch, and the combinations FSDP and
DeepSpeed refuse late or train wrong with (`fintrl validate --accelerate-config`, `fintrl run` under a launcher)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.distributed import sharded_training, truthy, world_size
from fintrl.errors import RecipeError

if TYPE_CHECKING:
    from fintrl.recipe.schema import Recipe


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
        flag: truthy(os.environ[f"FSDP_{flag.upper()}"]) for flag in FSDP_FLAGS if f"FSDP_{flag.upper()}" in os.environ
    }
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    return Launch(sharded_training(), world_size(), fsdp, int(stage) if stage.isdigit() else None)


def launch_from_config(path: str | Path, processes: int | None = None) -> Launch:
    """An accelerate config file (recipes/accelerate/*.yaml): its distributed_type, process count, FSDP flags."""
    import yaml

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
