"""Training: the recipe's `train:` section becomes TRL's `SFTConfig` (plus fintrl's `objective`); TRL's `SFTTrainer`
(with a leaner loss for classification batches, `FintrlSFTTrainer`) does the rest."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from fintrl import distributed, tracking
from fintrl.errors import RecipeError
from fintrl.metrics.plots import plot_training_curve
from fintrl.model.label_tokens import LabelTokens, label_softmax_loss
from fintrl.model.loading import has_cuda, trainable_4bit
from fintrl.model.peft_methods import peft_config, virtual_cache
from fintrl.model.prefix import expand_cache, run_prefix
from fintrl.recipe.schema import Recipe
from fintrl.run_folder import CHECKPOINTS, TRAIN_LOG, TRAINING_CURVE_PNG
from fintrl.transaction import last_checkpoint

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import EvalSection

logger = logging.getLogger(__name__)

# (step, the point's metrics with their bootstrap `intervals`): what it raises stops training
CurveHook = Callable[[int, dict[str, Any]], None]

# fintrl's defaults under the recipe's `train:` values, each measured in benchmarks/README.md. Classification prompts
# are short and answers a few tokens: length-grouped batches cut padding from 27 % to 3 %; no activation (gradient)
# checkpointing (1.9x the tokens/s on CPU; GPU recipes for 7B models turn it on for memory); a checkpoint every 50
# steps makes --resume useful.
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
    "activation_checkpointing": False,
}


OBJECTIVES = ("token_ce", "label_softmax")


@dataclass
class FintrlSFTConfig(SFTConfig):
    """TRL's SFTConfig and the one field fintrl's trainer adds: what the loss is."""

    objective: Literal["token_ce", "label_softmax"] = field(
        default="token_ce",
        metadata={
            "help": "token_ce: cross-entropy of the answer's tokens (TRL's completion-only loss). label_softmax: "
            "cross-entropy of the gold label against the other labels, from the probabilities the scorer reads "
            "(each branching step of the label trie renormalised over its children), so training optimises what is "
            "evaluated.",
            "choices": list(OBJECTIVES),
        },
    )


def sft_config(recipe: Recipe, run_dir: Path) -> FintrlSFTConfig:
    """SFTConfig with fintrl's defaults below the recipe's values, and CPU-safe precision on machines without CUDA."""
    fields = {**TRAIN_DEFAULTS, **tracking.run_defaults(recipe, time.strftime("%Y%m%d-%H%M%S")), **recipe.train}
    if "gradient_checkpointing" in recipe.train:  # transformers 5's old name, ignored by it once the new one is set
        fields["activation_checkpointing"] = fields.pop("gradient_checkpointing")
    if has_cuda():
        fields.setdefault("bf16", True)
    else:
        for flag in ("bf16", "fp16"):
            if recipe.train.get(flag):
                logger.warning("train.%s ignored: no CUDA device (bf16 is slower than fp32 on CPU here)", flag)
            fields[flag] = False
        fields["use_cpu"] = True
        if distributed.is_distributed():
            fields.setdefault("ddp_backend", "gloo")  # several CPU processes (torchrun, accelerate launch --multi_cpu)
    if distributed.is_distributed():
        # LoRA's every parameter takes part in each forward: DDP's search for unused ones is an extra graph walk per
        # step (it warns so); a recipe that leaves some unused sets train.ddp_find_unused_parameters: true
        fields.setdefault("ddp_find_unused_parameters", False)
    try:
        return FintrlSFTConfig(output_dir=str(run_dir / CHECKPOINTS), seed=recipe.seed, **fields)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"train: {err}") from None


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Tokens every row starts with (chat template + instruction), all before the first scored label."""
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(0).int().cumprod(0).sum().item()
    scored = (labels != -100).any(0).nonzero()
    first_label = scored[0].item() if len(scored) else input_ids.shape[1]
    return int(min(same, first_label - 1))


class FintrlSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with a loss that skips what classification batches make needless.

    - The prompt prefix shared by every row of a batch is run once and its KV cache expanded to the batch (its
      gradient flows back through the expansion), instead of once per row.
    - The LM head is applied only where a label token is scored (a few answer tokens per example); TRL's fused head
      does that on Triton devices only and scores every position elsewhere.
    - Prompt learning (prompt/prefix tuning): the virtual tokens run once too, ahead of the prefix, at the positions
      PEFT's forward gives them (`fintrl.model.peft_methods.virtual_cache`).
    The loss and its gradient are those of TRL's completion-only loss (tests check both); other setups
    (gradient checkpointing, padding-free batches, logits requested, several processes) use TRL's path unchanged.
    With `objective: label_softmax` the loss is `label_softmax_loss` on the same logits, on either path.
    """

    def __init__(self, *trainer_args: Any, label_tokens: LabelTokens, **trainer_kwargs: Any) -> None:
        super().__init__(*trainer_args, **trainer_kwargs)
        self.label_tokens = label_tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        import torch

        by_label = self.args.objective == "label_softmax"
        if return_outputs or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if (
            self.args.gradient_checkpointing
            # DDP/FSDP/DeepSpeed sync gradients in their wrapper's forward, which the fast path would bypass
            or self.accelerator.num_processes > 1
            or "attention_mask" not in inputs
        ):
            if not by_label:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            targets = inputs["labels"][:, 1:]
            logits = model(**forward, use_cache=False).logits[:, :-1][targets != -100].float()
        else:
            logits, targets = self._answer_logits(model, inputs)
        scored = targets != -100
        mode = "train" if model.training else "eval"
        if by_label:
            loss, rows, correct = label_softmax_loss(logits, targets[scored], scored.nonzero()[:, 0], self.label_tokens)
            loss = loss / max(rows, 1)
            # a mean over this micro-batch's rows: divided by the accumulation steps here where the trainer (which
            # expects a loss normalised by num_items_in_batch, the token count of all steps) leaves that to the loss
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            if scaled or self.compute_loss_func:
                loss = loss / self.current_gradient_accumulation_steps
            self._metrics[mode]["label_accuracy"].append(correct / max(rows, 1))
        else:
            per_token = torch.nn.functional.cross_entropy(logits, targets[scored], reduction="none")
            items = scored.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
            loss = per_token.sum() / items
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            accuracy = (logits.argmax(-1) == targets[scored]).float().mean().item()
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += int(inputs["attention_mask"].sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss

    def _answer_logits(self, model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        """The fast path: the logits at the scored answer tokens (row-major) and the targets, from one pass over the
        batch after its shared prefix."""
        import torch

        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        # Prompt learning: its virtual tokens first, as PEFT's forward puts them (one row, expanded with the prefix)
        start = virtual_cache(model, backbone)
        n_virtual = start.get_seq_length() if start is not None else 0
        prefix = shared_prefix_length(ids, mask, labels) if len(ids) > 1 else 0
        cache = start
        if prefix >= 2:
            cache = run_prefix(backbone, ids[:1, :prefix], causal_lm.config, cache=start)
        else:
            prefix = 0
        cache = expand_cache(cache, len(ids), causal_lm.config) if cache is not None else None
        positions = torch.arange(n_virtual + prefix, n_virtual + ids.shape[1], device=ids.device).expand(len(ids), -1)
        hidden = backbone(
            input_ids=ids[:, prefix:],
            attention_mask=torch.cat([mask.new_ones(len(ids), n_virtual), mask], dim=-1),
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state
        targets = labels[:, prefix + 1 :]  # hidden state t predicts token t + 1
        return causal_lm.get_output_embeddings()(hidden[:, :-1][targets != -100]).float(), targets


class LearningCurve(TrainerCallback):
    """Scores a fixed validation sample with the exact label scorer before training and `eval.curve_points` times
    during it.

    Each point lands in the trainer's log history (`curve_accuracy`, `curve_f1_macro`), hence in train_log.jsonl and
    training_loss.png: where a run stops improving shows whether more epochs or a different setting could help.
    The time it takes is kept apart (`seconds`) so that training throughput is not understated.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        builder: PromptBuilder,
        section: EvalSection,
        texts: list[str],
        gold: list[int],
        on_point: CurveHook | None = None,
    ) -> None:
        self.tokenizer, self.builder, self.section = tokenizer, builder, section
        self.texts, self.gold, self.on_point = texts, gold, on_point
        self.due: set[int] = set()
        self.seconds = 0.0

    def _score(self, state, model) -> None:  # noqa: ANN001
        from fintrl.evaluation.report import curve_point
        from fintrl.scoring.scorer import LabelScorer

        start = time.perf_counter()
        scorer = LabelScorer.from_eval(model, self.tokenizer, self.builder, self.section)
        result = scorer.score_sharded(self.texts, progress=False)  # a shard per process, gathered
        metrics = curve_point(self.gold, result.predictions, self.builder.labels)
        model.train()
        state.log_history.append(
            {
                "step": state.global_step,
                "epoch": state.epoch or 0.0,
                "curve_accuracy": round(metrics["accuracy"], 4),
                "curve_f1_macro": round(metrics["f1_macro"], 4),
                "curve_samples": len(self.texts),
            }
        )
        self.seconds += time.perf_counter() - start
        logger.info(
            "learning curve, step %d: accuracy %.3f, macro-F1 %.3f",
            state.global_step,
            metrics["accuracy"],
            metrics["f1_macro"],
        )
        if self.on_point is not None:  # a sweep's pruner weighs the point against its own noise
            self.on_point(state.global_step, metrics)

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        points = self.section.curve_points
        self.due = {round(state.max_steps * k / points) for k in range(1, points + 1)}
        if state.global_step == 0:  # not again when resuming
            self._score(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step in self.due:
            self._score(state, model)


def build_trainer(
    recipe: Recipe,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    builder: PromptBuilder,
    rows: Dataset,
    run_dir: Path,
    callbacks: list[TrainerCallback] | None = None,
) -> SFTTrainer:
    """The trainer of `rows` (text, label) as the prompt's conversations; the loss on the answers only."""
    import torch

    trainer = FintrlSFTTrainer(
        model=model,
        args=sft_config(recipe, run_dir),
        train_dataset=builder.sft_dataset(rows),
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
        callbacks=callbacks,
        label_tokens=LabelTokens.build(model, tokenizer, builder),
    )
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
    args = trainer.args
    batch = {
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch_size": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
    }
    logger.info(
        "training on %d process%s: %s",
        args.world_size,
        "es" if args.world_size > 1 else "",
        distributed.describe_batch(batch, args.world_size),
    )
    with trainable_4bit(trainer.model):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    model = save_adapter(trainer, run_dir)
    if distributed.is_main():  # one writer; the others' copies are the same
        trainer.processing_class.save_pretrained(run_dir)
        with (run_dir / TRAIN_LOG).open("w") as f:
            for entry in trainer.state.log_history:
                f.write(json.dumps(entry) + "\n")
        plot_training_curve(trainer.state.log_history, run_dir / TRAINING_CURVE_PNG)
    trainable, total = parameter_counts(model)
    return {
        "resumed_from": Path(checkpoint).name if checkpoint else None,  # a checkpoint's name: no local path
        "trainable_parameters": trainable,
        "total_parameters": total,
        **batch,
        **result.metrics,
    }


def save_adapter(trainer: SFTTrainer, run_dir: Path) -> PreTrainedModel:
    """Write the adapter into run_dir from the main process; returns the (unwrapped) trained model.

    FSDP and DeepSpeed ZeRO-3 hold a shard of each weight per process: every process takes part in gathering the
    whole state dict (accelerate's `get_state_dict`, as `Trainer.save_model` does), then the main process writes it."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if distributed.is_main():
            model.save_pretrained(run_dir, state_dict=state_dict)
    elif distributed.is_main():
        model.save_pretrained(run_dir)
    return model


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters; PEFT's count, which unpacks 4-bit weights, when the model has an adapter."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())
