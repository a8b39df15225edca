"""The trainers benchmarks measure, and how: TRL's `SFTTrainer` with TRL's defaults as the baseline beside fintrl's
own trainer, and the instrumentation that counts what a trainer consumed (tokens through its data collator, each
step clocked, memory at peak). `bench_train` and `gpu_check` measure training through these.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.harness import peak_memory, reset_peak_memory, rss_mb, stopwatch, sync


def trl_default_trainer(recipe: Any, model: Any, tokenizer: Any, dataset: Any, output_dir: str) -> Any:
    """TRL's `SFTTrainer` as a new user gets it, on the recipe's LoRA config, batch size and `max_steps`: only what
    running needs (on CPU: `use_cpu`, no bf16), TRL defaults for the rest (gradient checkpointing, random sampler,
    bf16 adapters for a quantized model)."""
    from trl import SFTConfig, SFTTrainer

    from fintrl.model.loading import has_cuda, lora_config
    from fintrl.train import TRAIN_DEFAULTS

    train = {**TRAIN_DEFAULTS, **recipe.train}
    required: dict[str, Any] = {} if has_cuda() else {"use_cpu": True, "bf16": False}
    config = SFTConfig(
        output_dir=output_dir,
        report_to="none",
        max_steps=train.get("max_steps", -1),
        per_device_train_batch_size=train["per_device_train_batch_size"],
        **required,
    )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.lora),
    )


def build_bench_trainer(
    kind: str, recipe: Any, model: Any, tokenizer: Any, builder: Any, rows: Any, output_dir: str
) -> Any:
    """`kind` "trl_default": `trl_default_trainer`; anything else: fintrl's own `build_trainer` with the recipe."""
    from fintrl.train import build_trainer

    if kind == "trl_default":
        return trl_default_trainer(recipe, model, tokenizer, builder.sft_dataset(rows), output_dir)
    return build_trainer(recipe, model, tokenizer, builder, rows, Path(output_dir))


def instrument(trainer: Any) -> tuple[list[dict[str, int]], list[float]]:
    """Count the tokens of every batch the trainer consumes (by wrapping its collator) and clock each step's end.

    Returns the live lists: per-batch counts (`tokens` = attention-mask sum, `padded_tokens`, `loss_tokens`) and
    step end times (`time.perf_counter`, after a CUDA sync)."""
    from transformers import TrainerCallback

    batches: list[dict[str, int]] = []
    ends: list[float] = []
    inner = trainer.data_collator

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = inner(features)
        ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
        batches.append(
            {
                "examples": len(features),
                "tokens": int(mask.sum()) if mask is not None else int(ids.numel()),  # padding-free: no pads
                "padded_tokens": int(ids.numel()),
                "loss_tokens": int((labels != -100).sum()) if labels is not None else 0,
            }
        )
        return batch

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            ends.append(time.perf_counter())

    trainer.data_collator = counting_collator
    trainer.add_callback(StepClock())
    return batches, ends


def trainer_settings(trainer: Any) -> dict[str, Any]:
    """The settings that decide a trainer's speed and memory, as it will run."""
    args = trainer.args
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    return {
        "trainer": type(trainer).__name__,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "train_sampling_strategy": str(getattr(args, "train_sampling_strategy", "")),
        "bf16": bool(args.bf16),
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "max_length": getattr(args, "max_length", None),
        "padding_free": bool(getattr(args, "padding_free", False)),
        "adapter_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in trainable}),
        "trainable_params": sum(p.numel() for p in trainable),
    }


def measure_training(trainer: Any, warmup_steps: int = 1) -> dict[str, Any]:
    """Train once, instrumented: settings, steps, the non-padding `tokens` (and examples, padded and loss tokens) of
    the batches the optimizer steps consumed, tokens/s and examples/s over all steps and `after_warmup` (over the
    steps after `warmup_steps`; None without such steps), per-step seconds, the loss, and memory before and at peak."""
    batches, step_ends = instrument(trainer)
    settings = trainer_settings(trainer)
    rss_before = rss_mb()
    vram_before = reset_peak_memory()
    with stopwatch() as clock:
        output = trainer.train()
    steps, ga = trainer.state.global_step, settings["gradient_accumulation_steps"]
    used = batches[: steps * ga]  # the dataloader may collate a batch ahead

    def totals(part: list[dict[str, int]], seconds: float) -> dict[str, Any]:
        tokens, examples = sum(b["tokens"] for b in part), sum(b["examples"] for b in part)
        return {"tokens": tokens, "tokens_per_second": tokens / seconds, "examples_per_second": examples / seconds}

    after = None
    if warmup_steps >= 1 and len(step_ends) > warmup_steps:
        seconds = step_ends[-1] - step_ends[warmup_steps - 1]
        after = {"steps": steps - warmup_steps, "seconds": seconds, **totals(used[warmup_steps * ga :], seconds)}
    padded, tokens = sum(b["padded_tokens"] for b in used), sum(b["tokens"] for b in used)
    return {
        "settings": settings,
        "steps": steps,
        "examples": sum(b["examples"] for b in used),
        **totals(used, clock.seconds),
        "padded_tokens": padded,
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "loss_tokens": sum(b["loss_tokens"] for b in used),
        "train_seconds": clock.seconds,
        "after_warmup": after,
        "step_seconds": [b - a for a, b in zip([clock.start, *step_ends], step_ends)],
        "train_loss": output.training_loss,
        "rss_before_train_mb": rss_before,
        "vram_before_train_bytes": vram_before,
        **peak_memory(),
    }
