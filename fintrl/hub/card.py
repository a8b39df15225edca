"""What a run shows the world: its model card.

The card is rendered from `model_cards/fintrl_adapter.md` with what the run folder holds (recipe, report, training
log, adapter files): Hub metadata with a `model-index` the Hub reads (only for data that is a Hub dataset), usage
snippets that run as printed, how the metrics were measured, the training settings as YAML, the frameworks' versions,
and each dataset's caveats. It names models and data by portable values only - a Hub id, a preset's name, a folder's
name - never a path of this machine (`portable_name`).

```python
print(render_card(Path("runs/quickstart"), repo_id="your-org/fin-sentiment"))
```
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fintrl.hub.ids import is_hub_id
from fintrl.hub.staging import portable_name, portable_report
from fintrl.run_folder import (
    CARD,
    CONFUSION_MATRIX_PNG,
    COVERAGE_PNG,
    METRICS,
    RECIPE,
    RELIABILITY_PNG,
    TRAIN_LOG,
    TRAINING_CURVE_PNG,
    Report,
    RunFolder,
)
from fintrl.transaction import run_name

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCardData

    from fintrl.recipe.schema import Recipe

CARD_TEMPLATE = "fintrl_adapter.md"
EXAMPLE_TEXT = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
HEADLINE = (
    ("accuracy", "Accuracy", "accuracy", None),
    ("f1", "Macro F1", "f1_macro", {"average": "macro"}),
    ("f1", "Weighted F1", "f1_weighted", {"average": "weighted"}),
)  # (metric id, name, report key, args)


def template_path(name: str = CARD_TEMPLATE) -> Path:
    """A card template: packaged inside the wheel, or the repo's `model_cards/` in a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "model_cards", package.parent / "model_cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found next to the fintrl package")


def base_model_name(recipe: Recipe, base_model: str | None = None) -> str:
    """The base model as the card names it: the given Hub id (or the recipe's publish.base_model), else the recipe's
    model, portable."""
    return base_model or recipe.publish.base_model or portable_name(recipe.model.name_or_path) or ""


def eval_results(recipe: Recipe, metrics: Report) -> list[EvalResult]:
    """model-index entries for every evaluation set that is a Hub dataset (the Hub's model-index names one: local data
    has none, so it gets none): accuracy, and F1 with `args.average` macro / weighted, per dataset config and split."""
    from huggingface_hub import EvalResult

    data = metrics["data"]
    if data.get("mixture"):
        sources = [(p, p["name"], metrics.get("per_source", {}).get(p["name"])) for p in data["mixture"]]
    else:
        sources = [(data, recipe.data.preset or data["source"], metrics)]
    return [
        EvalResult(
            task_type="text-classification",
            task_name="Financial text classification",
            dataset_type=source["source"],
            dataset_name=name,
            dataset_config=source.get("config_name"),
            dataset_split=source.get("eval_split"),
            dataset_revision=source.get("revision"),
            metric_type=metric,
            metric_name=pretty,
            metric_value=round(scores[key], 4),
            metric_args=args,
        )
        for source, name, scores in sources
        if scores is not None and is_hub_id(source.get("source"))
        for metric, pretty, key, args in HEADLINE
    ]


def _yaml(node: Any) -> str:
    return yaml.safe_dump(node, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100).rstrip()


def _settings(recipe: Recipe, metrics: Report, total_steps: int | None) -> tuple[str, str | None]:
    """The training settings as a YAML block, and what `warmup_steps` below 1 means (a ratio of the total steps)."""
    train = dict(metrics.get("train_args") or recipe.train)
    sections = {"quantization": recipe.quantization, "lora": recipe.lora, "peft": recipe.peft, "train": train}
    text = _yaml({k: v for k, v in sections.items() if v})
    warmup = train.get("warmup_steps")
    if not isinstance(warmup, (int, float)) or not 0 < warmup < 1:
        return text, None
    steps = (
        f"ceil({warmup:g} x {total_steps}) = {math.ceil(warmup * total_steps)} of {total_steps} steps"
        if total_steps
        else "of the total steps"
    )
    text = text.replace(f"  warmup_steps: {warmup}", f"  warmup_steps: {warmup}  # a ratio: {warmup:.0%} of the steps")
    return text, (
        f"`warmup_steps: {warmup:g}` is a ratio: transformers reads a value below 1 as a fraction of the "
        f"total training steps, so the learning rate warmed up over {warmup:.0%} of them ({steps})."
    )


def metric_cell(report: dict[str, Any], key: str, *, intervals: bool = True, bold: bool = False) -> str:
    """A metric as a card's table shows it: `0.857 [0.843, 0.871]` with the report's interval (the value alone where it
    has none), `-` where the report lacks the metric."""
    value = report.get(key)
    if value is None:
        return "-"
    text = f"**{value:.3f}**" if bold else f"{value:.3f}"
    interval = (report.get("intervals") or {}).get(key) if intervals else None
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text


def version_rows(versions: list[dict[str, Any]] | None, metrics: Report) -> list[dict[str, Any]]:
    """The card's version table: the published versions, or this folder's own metrics as `unpublished`."""
    return versions or [
        {"version": "unpublished", "date": "-", "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}
    ]


def _headline(metrics: Report, bold: bool = True) -> dict[str, str]:
    """Each headline metric as the card shows it: `**0.857** [0.843, 0.871]` (the value alone for an older report)."""
    return {key: metric_cell(metrics, key, bold=bold) for key in ("accuracy", "f1_macro", "f1_weighted", "mcc")}


def _train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / TRAIN_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def _caveats(recipe: Recipe) -> list[tuple[str, str]]:
    """(source name, caveat) for each source of the data: a preset's own, else a reminder that nobody wrote one."""
    from fintrl.data.presets import PRESETS

    data = recipe.data
    entries = (
        [(m.display_name, m.preset) for m in data.mixture]
        if data.mixture
        else [(data.preset or portable_name(data.path or data.source) or "data", data.preset)]
    )
    return [
        (
            name,
            PRESETS[preset].caveat
            if preset in PRESETS and PRESETS[preset].caveat
            else "not a fintrl preset: its provenance, licence and biases are for its publisher to state.",
        )
        for name, preset in entries
    ]


def hub_card_data(
    data: dict[str, Any], base: str, *, relation: str, library: str, tags: list[str], **fields: Any
) -> ModelCardData:
    """The card's metadata, shared by adapter and merged-model cards: the base and how this repo relates to it
    (`adapter`, `merge`; named only for a Hub id), the Hub datasets, the data's licence, and the tags."""
    from huggingface_hub import ModelCardData

    sources = data.get("mixture") or [data]
    dataset_ids = [s["source"] for s in sources if is_hub_id(s.get("source"))]
    return ModelCardData(
        base_model=base if is_hub_id(base) else None,
        base_model_relation=relation if is_hub_id(base) else None,
        library_name=library,
        pipeline_tag="text-generation",
        license=data.get("license") if data.get("license") not in (None, "unknown") else None,
        datasets=dataset_ids or None,
        language=["en"],
        tags=tags,
        **fields,
    )


def render_card(
    run_dir: Path,
    *,
    repo_id: str | None = None,
    versions: list[dict[str, Any]] | None = None,
    version: str | None = None,
    base_model: str | None = None,
    comparison: dict[str, Any] | None = None,
) -> str:
    """The model card of a run folder: Hub metadata (incl. model-index) + usage, prompt, metrics, training, data.

    `repo_id` fills the snippets (default: the recipe's publish.repo_id); `version` (when publishing) pins the PEFT
    snippet to that tag; `versions` fills the history table; `base_model` is the base's Hub id (default: the recipe's
    model, when it is a Hub id or an offline name of one); `comparison` (`fintrl.metrics.paired.with_previous`, when
    publishing over an earlier version) fills "Compared with the previous version".

    ```python
    card = render_card(Path("runs/quickstart"), repo_id="org/fin", version="v1.0.0", base_model="org/base")
    ```
    """
    from huggingface_hub import ModelCard

    from fintrl.model.peft_methods import card_method

    run = RunFolder(run_dir).require_finished("card")
    recipe, metrics = run.recipe(), portable_report(run.metrics())
    method = card_method(recipe)
    data = metrics["data"]
    builder = run.prompt()
    base = base_model_name(recipe, base_model)
    repo_id = repo_id or recipe.publish.repo_id or f"your-org/{run_name(run_dir)}"
    results = eval_results(recipe, metrics)
    card_data = hub_card_data(
        data,
        base,
        relation="adapter",
        library="peft",
        tags=["fintrl", "finance", "text-classification", *method["tags"], "trl", "sft"]
        + (["qlora"] if recipe.quantization and "lora" in method["tags"] else []),
        model_name=repo_id if results else None,
        eval_results=results or None,
    )
    log = _train_log(run_dir)
    losses = [entry["loss"] for entry in log if entry.get("loss") is not None]
    total_steps = max((entry.get("step") or 0 for entry in log), default=0) or None
    settings, warmup_note = _settings(recipe, metrics, total_steps)
    train = metrics.get("train") or {}
    quantization = {
        k: v for k, v in (recipe.quantization or {}).items() if k != "bnb_4bit_compute_dtype" or v != "auto"
    }  # auto: fintrl's choice per device, said in words
    adapter_bytes = sum(p.stat().st_size for p in Path(run_dir).glob("adapter_model.*"))
    counts = data["label_counts"]["train"]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        version=version,
        task=builder.task,
        labels=data["labels"],
        answers=builder.answers,
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if is_hub_id(base) else None,
        quantized=bool(recipe.quantization),
        **{k: v for k, v in method.items() if k != "tags"},
        has_peft=recipe.peft is not None,
        has_lora=recipe.lora is not None,
        bnb_kwargs=", ".join(f"{k}={v!r}" for k, v in quantization.items()),
        auto_compute_dtype=(recipe.quantization or {}).get("bnb_4bit_compute_dtype", "auto") == "auto",
        example_messages=json.dumps(builder.messages(EXAMPLE_TEXT), ensure_ascii=False),
        example_text=EXAMPLE_TEXT,
        max_new_tokens=max(8, max(len(a) for a in builder.answers) // 2 + 4),
        user_template=builder.user_message("{text}"),
        system=builder.system,
        metrics=metrics,
        provenance=metrics.get("provenance"),
        headline=_headline(metrics),
        mcc=_headline(metrics, bold=False)["mcc"],
        intervals=metrics.get("intervals"),
        calibration=metrics.get("calibration"),
        coverage=metrics.get("coverage"),
        comparison=comparison,
        baselines=metrics.get("baselines", {}),
        n_eval=data["n_eval"],
        n_train=data["n_train"],
        eval_split=data["eval_split"],
        scoring_mode=metrics["scoring"]["mode"],
        max_length=metrics["scoring"]["max_length"],
        has_model_index=bool(results),
        caveats=_caveats(recipe),
        settings=settings,
        warmup_note=warmup_note,
        train_seconds=round(train.get("train_runtime", 0)),
        train_loss=losses[-1] if losses else None,
        trainable=train.get("trainable_parameters"),
        total_parameters=train.get("total_parameters"),
        adapter_size=_size(adapter_bytes) if adapter_bytes else None,
        environment=metrics.get("environment") or {},
        data_source=data["source"],
        data_config=data.get("config_name"),
        mixture=data.get("mixture") or [],
        excluded=data.get("excluded"),
        dataset_url=f"https://huggingface.co/datasets/{data['source']}" if is_hub_id(data["source"]) else None,
        data_license=data.get("license"),
        train_counts=", ".join(f"{k} {v}" for k, v in counts.items()),
        **{
            key: name if (Path(run_dir) / name).is_file() else None
            for key, name in (
                ("confusion_png", CONFUSION_MATRIX_PNG),
                ("reliability_png", RELIABILITY_PNG),
                ("curve_png", TRAINING_CURVE_PNG),
                ("coverage_png", COVERAGE_PNG),
            )
        },
        recipe_file=RECIPE,
        metrics_file=METRICS,
        versions=version_rows(versions, metrics),
    )
    return str(card)


def write_card(
    run_dir: Path,
    *,
    repo_id: str | None = None,
    versions: list[dict[str, Any]] | None = None,
    base_model: str | None = None,
) -> Path:
    """Render the card into the run folder's README.md (what `fintrl card` and every run do); returns its path."""
    path = Path(run_dir) / CARD
    path.write_text(render_card(run_dir, repo_id=repo_id, versions=versions, base_model=base_model))
    return path
