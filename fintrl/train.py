"""Training: the recipe's `train:` section becomes TRL's `SFTConfig`; TRL's `SFTTrainer` does the rest."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.models import has_cuda, lora_config
from fintrl.recipe import Recipe, RecipeError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import SFTConfig, SFTTrainer

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"

# fintrl's defaults under the recipe's `train:` values. Classification prompts are short and answers are a
# few tokens: length-grouped batches waste little padding; a checkpoint every 50 steps makes --resume useful.
TRAIN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 1,
    "max_length": 512,
    "report_to": "none",
    "train_sampling_strategy": "group_by_length",
    "gradient_checkpointing": False,
}


def sft_config(recipe: Recipe, run_dir: Path) -> SFTConfig:
    """SFTConfig with fintrl's defaults below the recipe's values, and CPU-safe precision on machines without CUDA."""
    from trl import SFTConfig

    fields = {**TRAIN_DEFAULTS, **recipe.train}
    if has_cuda():
        fields.setdefault("bf16", True)
    else:
        for flag in ("bf16", "fp16"):
            if recipe.train.get(flag):
                logger.warning("train.%s ignored: no CUDA device (bf16 is slower than fp32 on CPU here)", flag)
            fields[flag] = False
        fields["use_cpu"] = True
    try:
        return SFTConfig(output_dir=str(run_dir / CHECKPOINTS), seed=recipe.seed, **fields)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"train: {err}") from None


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = run_dir / CHECKPOINTS
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def build_trainer(recipe: Recipe, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_dataset: Dataset,
                  run_dir: Path) -> SFTTrainer:
    import torch
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=sft_config(recipe, run_dir), train_dataset=train_dataset,
                         processing_class=tokenizer, peft_config=lora_config(recipe.lora))
    if not has_cuda():
        # TRL casts QLoRA adapters to bf16 (the paper's GPU recipe); on CPU fp32 adapters are faster and
        # keep small AdamW updates from rounding away.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return trainer


def train(trainer: SFTTrainer, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Train (resuming from the last checkpoint when asked), write the adapter + tokenizer + log into run_dir."""
    checkpoint = last_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", run_dir / CHECKPOINTS)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.model.save_pretrained(run_dir)
    trainer.processing_class.save_pretrained(run_dir)
    with (run_dir / "train_log.jsonl").open("w") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    return {"resumed_from": checkpoint, **result.metrics}
