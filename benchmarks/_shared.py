"""What the benchmarks measure fintrl against, defined once."""

from __future__ import annotations

from typing import Any


def trl_default_trainer(model: Any, tokenizer: Any, dataset: Any, lora: dict[str, Any] | None, batch_size: int,
                        steps: int, output_dir: str) -> Any:
    """TRL's `SFTTrainer` as a new user gets it: only what running needs (on CPU: `use_cpu`, no bf16), TRL defaults
    for the rest (gradient checkpointing, random sampler, bf16 adapters for a quantized model)."""
    from trl import SFTConfig, SFTTrainer

    from fintrl.models import has_cuda, lora_config

    required: dict[str, Any] = {} if has_cuda() else {"use_cpu": True, "bf16": False}
    config = SFTConfig(output_dir=output_dir, report_to="none", max_steps=steps, per_device_train_batch_size=batch_size,
                       **required)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora_config(lora))


def instrument(trainer: Any) -> tuple[list[dict[str, int]], list[float]]:
    """Count the tokens of every batch the trainer consumes (by wrapping its collator) and clock each step's end.

    Returns the live lists: per-batch counts (`tokens` = attention-mask sum, `padded_tokens`, `loss_tokens`) and
    step end times (`time.perf_counter`, after a CUDA sync)."""
    import time

    import torch
    from transformers import TrainerCallback

    batches: list[dict[str, int]] = []
    ends: list[float] = []
    inner = trainer.data_collator

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = inner(features)
        ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
        batches.append({"examples": len(features),
                        "tokens": int(mask.sum()) if mask is not None else int(ids.numel()),  # padding-free: no pads
                        "padded_tokens": int(ids.numel()),
                        "loss_tokens": int((labels != -100).sum()) if labels is not None else 0})
        return batch

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    trainer.data_collator = counting_collator
    trainer.add_callback(StepClock())
    return batches, ends
