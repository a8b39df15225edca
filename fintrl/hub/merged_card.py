"""A merged export's model card, and what publishing one (`fintrl publish OUT --merged`) checks first.

The card is rendered from `model_cards/fintrl_merged.md` with huggingface_hub's `ModelCard` and `ModelCardData`:
`base_model` is the base's Hub id with `base_model_relation: merge` (the adapter's weights are folded into it), the
usage is a plain `pipeline("text-generation", model=REPO)`, and it says how far the merged model's predictions are
from the adapter's (measured by the export on the run's eval rows), and that a QLoRA adapter was merged into the
unquantized base. Like every fintrl card it names models and data by portable values only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fintrl.errors import RunFolderError
from fintrl.hub.ids import is_hub_id
from fintrl.hub.staging import portable_report
from fintrl.run_folder import ADAPTER_CONFIG, EXPORT_INFO, METRICS, PREDICTIONS, RECIPE, RunFolder
from fintrl.transaction import run_name

CARD_TEMPLATE = "fintrl_merged.md"


def is_export(folder: Path) -> bool:
    return (Path(folder) / EXPORT_INFO).is_file()


def require_publishable(folder: Path, *, merged: bool) -> None:
    """A merged export is published with --merged, and only a merged export is; an ensemble folder's members are runs
    with adapters: one line saying which it is."""
    folder = Path(folder)
    if RunFolder(folder).is_ensemble:
        if merged:
            raise RunFolderError(f"{folder} is an ensemble: publish it without --merged (its adapters in subfolders)")
        for member in RunFolder(folder).ensemble_members(downloaded=False):
            RunFolder(member).require_finished("publish")
            require_publishable(member, merged=False)
        return
    if merged and not is_export(folder):
        raise RunFolderError(
            f"{folder} is not a merged export (no {EXPORT_INFO}): make one with `fintrl export RUN --merged OUT`, "
            "or publish the run's adapter without --merged"
        )
    if not merged and is_export(folder):
        raise RunFolderError(f"{folder} is a merged export: publish it with --merged (to a repo of its own)")
    if not merged and not (folder / ADAPTER_CONFIG).is_file():
        raise RunFolderError(f"{folder} holds no adapter ({ADAPTER_CONFIG}): only LoRA runs can be published")


def render_merged_card(
    folder: Path,
    *,
    repo_id: str | None = None,
    versions: list[dict[str, Any]] | None = None,
    version: str | None = None,
    base_model: str | None = None,
    comparison: dict[str, Any] | None = None,
) -> str:
    """The card of a merged export (the same keywords as `fintrl.hub.card.render_card`, so publishing calls either).

    ```python
    print(render_merged_card(Path("runs/quickstart-merged"), repo_id="org/fin-merged", base_model="org/base"))
    ```
    """
    from huggingface_hub import ModelCard

    from fintrl.hub.card import hub_card_data, metric_cell, template_path, version_rows

    folder = Path(folder)
    run = RunFolder(folder)
    info = json.loads(run.file(EXPORT_INFO).read_text())
    metrics = portable_report(run.metrics())
    data = metrics["data"]
    source = info["merged_from"]
    base = base_model or source.get("base_model") or ""
    repo_id = repo_id or f"your-org/{run_name(folder)}"
    quantization = source.get("trained_quantization")
    card_data = hub_card_data(
        data,
        base,
        relation="merge",
        library="transformers",
        tags=["fintrl", "finance", "text-classification", "lora", "merge", "trl", "sft"]
        + (["qlora"] if quantization else []),
    )

    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(CARD_TEMPLATE)),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        version=version,
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if is_hub_id(base) else None,
        adapter_repo=source.get("adapter_repo"),
        run=source.get("run"),
        dtype=info["dtype"],
        dequantized=not info["merged"]["unquantized_base"],
        quantization=", ".join(f"{k}={v!r}" for k, v in (quantization or {}).items()),
        task=data.get("task"),
        labels=info["labels"],
        answers=info["answers"],
        system=info["prompt"]["system"],
        user_template=info["prompt"]["user_template"],
        example_messages=json.dumps(info["prompt"]["example_messages"], ensure_ascii=False),
        generation=info["generation"],
        agreement=info["agreement"],
        accuracy=metric_cell(metrics, "accuracy"),
        f1_macro=metric_cell(metrics, "f1_macro"),
        f1_weighted=metric_cell(metrics, "f1_weighted"),
        mcc=f"{metrics['mcc']:.3f}",
        n_eval=info["agreement"]["n"],
        eval_split=data.get("eval_split"),
        data_source=data.get("source"),
        environment=metrics.get("environment") or {},
        comparison=comparison,
        export_file=EXPORT_INFO,
        recipe_file=RECIPE,
        metrics_file=METRICS,
        predictions_file=PREDICTIONS,
        versions=version_rows(versions, metrics),
    )
    return str(card)
