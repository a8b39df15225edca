"""An ensemble's model card (`fintrl publish ENSEMBLE_FOLDER`): rendered from `model_cards/fintrl_ensemble.md` with
huggingface_hub's `ModelCard`. It says what the ensemble is (the members, how their probabilities are combined), how to
use it (`fintrl predict|serve|eval REPO` resolve the repo as the ensemble; one member loads with PEFT from its
subfolder), the ensemble's metrics beside each member's on the same rows, and the versions. Like every fintrl card it
names models and data by portable values only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fintrl.hub.card import (
    EXAMPLE_TEXT,
    HEADLINE,
    base_model_name,
    hub_card_data,
    metric_cell,
    template_path,
    version_rows,
)
from fintrl.hub.ids import is_hub_id
from fintrl.hub.staging import member_names, portable_report
from fintrl.run_folder import CONFUSION_MATRIX_PNG, METRICS, PREDICTIONS, RECIPE, RELIABILITY_PNG, RunFolder
from fintrl.transaction import run_name

CARD_TEMPLATE = "fintrl_ensemble.md"


def render_ensemble_card(
    folder: Path,
    *,
    repo_id: str | None = None,
    versions: list[dict[str, Any]] | None = None,
    version: str | None = None,
    base_model: str | None = None,
    comparison: dict[str, Any] | None = None,
) -> str:
    """The card of an ensemble folder (the same keywords as `fintrl.hub.card.render_card`, so publishing calls
    either).

    ```python
    print(render_ensemble_card(Path("runs/fpb-seeds/ensemble"), repo_id="org/fin-ensemble", base_model="org/base"))
    ```
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    run = RunFolder(folder)
    members = run.ensemble_members(downloaded=False)
    names = member_names(members)
    recipes = [RunFolder(member).recipe() for member in members]
    metrics = portable_report(run.metrics())
    data, record = metrics["data"], metrics.get("ensemble") or {}
    builder = RunFolder(members[0]).prompt()
    base = base_model_name(recipes[0], base_model)
    repo_id = repo_id or f"your-org/{run_name(folder)}"
    per_member = record.get("per_member") or [{} for _ in members]
    columns = ("accuracy", "f1_macro", "nll", "ece")
    rows = [
        {"name": name, "seed": recipe.seed, **{key: metric_cell(scores, key) for key in columns}}
        for name, recipe, scores in zip(names, recipes, per_member)
    ]
    card_data = hub_card_data(
        data,
        base,
        relation="adapter",
        library="peft",
        tags=["fintrl", "finance", "text-classification", "lora", "ensemble", "trl", "sft"]
        + (["qlora"] if recipes[0].quantization else []),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(CARD_TEMPLATE)),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        version=version,
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if is_hub_id(base) else None,
        quantized=bool(recipes[0].quantization),
        members=rows,
        first=names[0],
        calibrated=any(record.get("calibrated") or []),
        task=data.get("task"),
        labels=data["labels"],
        answers=builder.answers if builder else data["labels"],
        example_text=EXAMPLE_TEXT,
        example_messages=json.dumps(builder.messages(EXAMPLE_TEXT), ensure_ascii=False) if builder else None,
        ensemble={key: metric_cell(metrics, key) for _, _, key, _ in HEADLINE},
        ensemble_row={key: metric_cell(metrics, key, intervals=False) for key in columns},
        n_eval=data.get("n_eval"),
        eval_split=data.get("eval_split"),
        data_source=data.get("source"),
        scoring_mode=(metrics.get("scoring") or {}).get("mode"),
        environment=metrics.get("environment") or {},
        confusion_png=CONFUSION_MATRIX_PNG if (folder / CONFUSION_MATRIX_PNG).is_file() else None,
        reliability_png=RELIABILITY_PNG if (folder / RELIABILITY_PNG).is_file() else None,
        comparison=comparison,
        recipe_file=RECIPE,
        metrics_file=METRICS,
        predictions_file=PREDICTIONS,
        versions=version_rows(versions, metrics),
    )
    return str(card)
