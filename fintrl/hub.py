"""The Hub side: model cards rendered from `model_cards/`, publishing run folders as versioned repos."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fintrl.recipe import RecipeError

logger = logging.getLogger(__name__)

CARD_TEMPLATE = "fintrl_adapter.md"
HUB_BASE_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # offline name -> Hub id


def template_path() -> Path:
    """The card template: packaged inside the wheel, or the repo's `model_cards/` in a source checkout."""
    here = Path(__file__).parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        if (folder / CARD_TEMPLATE).is_file():
            return folder / CARD_TEMPLATE
    raise FileNotFoundError(f"{CARD_TEMPLATE} not found next to the fintrl package")


def _read_run(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    from fintrl.runner import METRICS_FILE, load_run_recipe

    recipe = load_run_recipe(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise RecipeError(f"{run_dir} has no {METRICS_FILE}: run `fintrl run` (or `fintrl eval`) first")
    return recipe, json.loads(metrics_path.read_text())


def base_model_id(name_or_path: str) -> str:
    return HUB_BASE_IDS.get(name_or_path, name_or_path)


def is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and name.count("/") == 1


def render_card(run_dir: Path, repo_id: str | None = None, versions: list[dict[str, Any]] | None = None) -> str:
    """The model card of a run folder: Hub metadata (incl. model-index) + usage, prompt, metrics, data, limits."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from fintrl.data import PromptBuilder

    recipe, metrics = _read_run(run_dir)
    data = metrics["data"]
    labels = data["labels"]
    builder = PromptBuilder(recipe.prompt, labels, data.get("task"))
    base = base_model_id(recipe.model.name_or_path)
    repo_id = repo_id or recipe.publish.repo_id or f"your-org/{run_dir.resolve().name}"
    dataset_id = data["source"] if is_hub_id(data["source"]) else None
    license_ = data.get("license") if data.get("license") not in (None, "unknown") else None
    eval_results = [
        EvalResult(task_type="text-classification", task_name="Financial text classification",
                   dataset_type=dataset_id or "custom", dataset_name=recipe.data.preset or Path(data["source"]).name,
                   dataset_split=data["eval_split"], metric_type=name, metric_name=pretty, metric_value=round(metrics[key], 4))
        for name, pretty, key in (("accuracy", "Accuracy", "accuracy"), ("f1", "Macro F1", "f1_macro"),
                                  ("f1", "Weighted F1", "f1_weighted"))
    ]
    card_data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        base_model_relation="adapter" if is_hub_id(base) else None,
        library_name="peft", pipeline_tag="text-generation", license=license_,
        datasets=[dataset_id] if dataset_id else None, language=["en"],
        tags=["fintrl", "finance", "text-classification", "lora", "trl", "sft"] + (["qlora"] if recipe.quantization else []),
        model_name=repo_id, eval_results=eval_results,
    )
    train_log = run_dir / "train_log.jsonl"
    losses = [json.loads(line).get("loss") for line in train_log.read_text().splitlines()] if train_log.exists() else []
    losses = [x for x in losses if x is not None]
    versions = versions or [{"version": "unpublished", "date": "-", "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}]
    card = ModelCard.from_template(
        card_data, template_path=str(template_path()),
        title=repo_id.split("/")[-1], repo_id=repo_id, task=builder.task,
        labels=labels, answers=builder.answers, base_model_display=base,
        base_model_url=f"https://huggingface.co/{base}" if is_hub_id(base) else base,
        quantized=bool(recipe.quantization), quantization=recipe.quantization, lora=recipe.lora,
        train_args=metrics.get("train_args", recipe.train), example_messages=json.dumps(builder.messages("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."), ensure_ascii=False),
        pipeline_extra="", max_new_tokens=max(8, max(len(a) for a in builder.answers) // 2 + 4),
        user_template=recipe.prompt.template.format(instruction=builder.instruction, text="{text}"),
        system=recipe.prompt.system, metrics=metrics, baselines=metrics.get("baselines", {}),
        n_eval=data["n_eval"], n_train=data["n_train"], eval_split=data["eval_split"],
        scoring_mode=metrics["scoring"]["mode"], max_length=metrics["scoring"]["max_length"],
        train_seconds=round(metrics.get("train", {}).get("train_runtime", 0)), train_loss=losses[-1] if losses else None,
        data_source=data["source"], data_license=data.get("license"), train_counts=data["label_counts"]["train"],
        versions=versions,
    )
    return str(card)


def write_card(run_dir: Path, repo_id: str | None = None, versions: list[dict[str, Any]] | None = None) -> Path:
    path = run_dir / "README.md"
    path.write_text(render_card(run_dir, repo_id, versions))
    return path
