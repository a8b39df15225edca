"""What a run shows the world: its model card, and the portable copy of its files that `fintrl.hub` publishes.

The card is rendered from `model_cards/fintrl_adapter.md` with what the run folder holds (recipe, report, training
log, adapter files): Hub metadata with a `model-index` the Hub reads (only for data that is a Hub dataset), usage
snippets that run as printed, how the metrics were measured, the training settings as YAML, the frameworks' versions,
and each dataset's caveats. It names models and data by portable values only - a Hub id, a preset's name, a folder's
name - never a path of this machine (`portable_name`).

`stage` builds a version to publish: the run's files, the adapter pointing at the base's Hub id
(`base_model_hub_id`), the recipe and report with portable values, the card; then it refuses the lot if any text file
still names a path of this machine (the run's, data's, model's, home, working or temp folder).

>>> print(render_card(Path("runs/quickstart"), repo_id="your-org/fin-sentiment"))
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fintrl.errors import RecipeError, RunFolderError
from fintrl.run_folder import (
    ADAPTER_CONFIG,
    CARD,
    CONFUSION_MATRIX_PNG,
    METRICS,
    RECIPE,
    RELIABILITY_PNG,
    TRAIN_LOG,
    TRAINING_CURVE_PNG,
    Report,
    RunFolder,
)

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

    from fintrl.recipe import Recipe

CARD_TEMPLATE = "fintrl_adapter.md"
EXAMPLE_TEXT = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
HEADLINE = (
    ("accuracy", "Accuracy", "accuracy", None),
    ("f1", "Macro F1", "f1_macro", {"average": "macro"}),
    ("f1", "Weighted F1", "f1_weighted", {"average": "weighted"}),
)  # (metric id, name, report key, args)


def template_path() -> Path:
    """The card template: packaged inside the wheel, or the repo's `model_cards/` in a source checkout."""
    here = Path(__file__).parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        if (folder / CARD_TEMPLATE).is_file():
            return folder / CARD_TEMPLATE
    raise FileNotFoundError(f"{CARD_TEMPLATE} not found next to the fintrl package")


def is_hub_id(name: str | None) -> bool:
    """`org/name` that is not a path on this machine (absolute, relative, `~` or existing)."""
    return (
        isinstance(name, str)
        and name.count("/") == 1
        and not name.startswith(("/", ".", "~"))
        and not Path(name).expanduser().exists()
    )


def portable_name(name: str | None) -> str | None:
    """What may leave this machine for a model or data location: an offline name's Hub id, a Hub id as it is, else the
    name of the local folder or file (never its path).

    >>> portable_name("smollm2-135m-instruct"), portable_name("/home/me/data/fpb"), portable_name("org/x@v1.0.0")
    ('HuggingFaceTB/SmolLM2-135M-Instruct', 'fpb', 'org/x@v1.0.0')
    """
    from fintrl.models import hub_id

    if not name:
        return name
    mapped = hub_id(name)
    return mapped if is_hub_id(mapped) else Path(mapped).name or mapped


def portable_recipe(recipe: Recipe, *, base_model: str, run_name: str) -> dict[str, Any]:
    """The recipe as published: the base model's Hub id, data locations and output folder by name, a chat template
    file by its contents."""
    raw = recipe.model_dump(mode="json")
    raw["model"]["name_or_path"] = base_model
    template = raw["model"].get("chat_template")
    try:
        if template and Path(template).expanduser().is_file():
            raw["model"]["chat_template"] = Path(template).expanduser().read_text()
    except OSError:  # a template itself, too long to be a file name
        pass
    for section in (raw["data"], *(raw["data"].get("mixture") or [])):
        for key in ("path", "source"):
            section[key] = portable_name(section.get(key))
    raw["output_dir"] = run_name
    return raw


def portable_report(metrics: Report) -> Report:
    """The report with its model and data locations as portable names (a run made before they were portable)."""
    out = json.loads(json.dumps(metrics))
    if out.get("model"):
        out["model"] = portable_name(out["model"])
    data = out.get("data") or {}
    for source in (data, *(data.get("mixture") or [])):
        if source.get("source"):
            source["source"] = portable_name(source["source"])
    if (out.get("train") or {}).get("resumed_from"):
        out["train"]["resumed_from"] = Path(out["train"]["resumed_from"]).name
    return out


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
    sections = {"quantization": recipe.quantization, "lora": recipe.lora, "train": train}
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


def _train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / TRAIN_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def _caveats(recipe: Recipe) -> list[tuple[str, str]]:
    """(source name, caveat) for each source of the data: a preset's own, else a reminder that nobody wrote one."""
    from fintrl.presets import PRESETS

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


def render_card(
    run_dir: Path,
    *,
    repo_id: str | None = None,
    versions: list[dict[str, Any]] | None = None,
    version: str | None = None,
    base_model: str | None = None,
) -> str:
    """The model card of a run folder: Hub metadata (incl. model-index) + usage, prompt, metrics, training, data.

    `repo_id` fills the snippets (default: the recipe's publish.repo_id); `version` (when publishing) pins the PEFT
    snippet to that tag; `versions` fills the history table; `base_model` is the base's Hub id (default: the recipe's
    model, when it is a Hub id or an offline name of one).

    >>> card = render_card(Path("runs/quickstart"), repo_id="org/fin", version="v1.0.0", base_model="org/base")
    """
    from huggingface_hub import ModelCard, ModelCardData

    from fintrl.data import PromptBuilder

    run = RunFolder(run_dir).require_finished("card")
    recipe, metrics = run.recipe(), portable_report(run.metrics())
    data = metrics["data"]
    builder = PromptBuilder(recipe.prompt, data["labels"], data.get("task"))
    base = base_model_name(recipe, base_model)
    repo_id = repo_id or recipe.publish.repo_id or f"your-org/{Path(run_dir).resolve().name}"
    results = eval_results(recipe, metrics)
    sources = data.get("mixture") or [data]
    dataset_ids = [s["source"] for s in sources if is_hub_id(s.get("source"))]
    license_ = data.get("license") if data.get("license") not in (None, "unknown") else None
    card_data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        base_model_relation="adapter" if is_hub_id(base) else None,
        library_name="peft",
        pipeline_tag="text-generation",
        license=license_,
        datasets=dataset_ids or None,
        language=["en"],
        tags=["fintrl", "finance", "text-classification", "lora", "trl", "sft"]
        + (["qlora"] if recipe.quantization else []),
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
        bnb_kwargs=", ".join(f"{k}={v!r}" for k, v in quantization.items()),
        auto_compute_dtype=(recipe.quantization or {}).get("bnb_4bit_compute_dtype", "auto") == "auto",
        example_messages=json.dumps(builder.messages(EXAMPLE_TEXT), ensure_ascii=False),
        example_text=EXAMPLE_TEXT,
        max_new_tokens=max(8, max(len(a) for a in builder.answers) // 2 + 4),
        user_template=recipe.prompt.template.format(instruction=builder.instruction, text="{text}"),
        system=recipe.prompt.system,
        metrics=metrics,
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
        dataset_url=f"https://huggingface.co/datasets/{data['source']}" if is_hub_id(data["source"]) else None,
        data_license=data.get("license"),
        train_counts=", ".join(f"{k} {v}" for k, v in counts.items()),
        **{
            key: name if (Path(run_dir) / name).is_file() else None
            for key, name in (
                ("confusion_png", CONFUSION_MATRIX_PNG),
                ("reliability_png", RELIABILITY_PNG),
                ("curve_png", TRAINING_CURVE_PNG),
            )
        },
        recipe_file=RECIPE,
        metrics_file=METRICS,
        versions=versions
        or [{"version": "unpublished", "date": "-", "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}],
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


def base_model_hub_id(recipe: Recipe, base_model: str | None = None) -> str:
    """The base model's Hub id, as the published adapter_config.json and recipe.yaml name it: `base_model` (from
    `--base-model`, else the recipe's publish.base_model) or the recipe's model when it is a Hub id or an offline name
    of one. A base that exists only on this machine is refused: the adapter would load nowhere else."""
    from fintrl.checks import hub_id_problem
    from fintrl.models import hub_id

    given = base_model or recipe.publish.base_model
    if given:  # the user's word that it is a Hub id: only its spelling is checked
        why = hub_id_problem(given, "Hub model id", namespace=True)
        if why:
            raise RecipeError(f"--base-model / publish.base_model: {why}; e.g. mistralai/Mistral-7B-v0.1")
        return given
    name = hub_id(recipe.model.name_or_path)
    if not is_hub_id(name):
        raise RecipeError(
            f"the base model {recipe.model.name_or_path} has no Hub id, so the published adapter would "
            "load only on this machine: name the base's Hub id with --base-model ORG/NAME (or "
            "publish.base_model in the recipe)"
        )
    return name


def _local_paths(run_dir: Path, recipe: Recipe, saved_base: str | None) -> list[str]:
    """This machine's folders that no published file may name: the run's, the data's, the base model's (and fintrl's
    model cache), home, the working folder and the temp folder; each as given and resolved, longest first."""
    from fintrl.models import fintrl_home
    from fintrl.presets import PRESETS

    places: list[Any] = [
        run_dir,
        recipe.output_dir,
        fintrl_home(),
        Path.home(),
        Path.cwd(),
        tempfile.gettempdir(),
        recipe.model.name_or_path,
        saved_base,
        recipe.model.chat_template,
    ]
    for source in (recipe.data, *(recipe.data.mixture or [])):
        places += [source.path, source.source, PRESETS[source.preset].source if source.preset in PRESETS else None]
    found: set[str] = set()
    for place in filter(None, places):
        try:
            path = Path(place).expanduser()
            if path.is_absolute() or path.exists():
                found |= {str(path.absolute()).rstrip("/"), str(path.resolve()).rstrip("/")}
        except (OSError, RuntimeError, ValueError):  # a chat template, not a path
            continue
    return sorted(found - {""}, key=len, reverse=True)


def _check_no_local_paths(staging: Path, places: list[str], run_dir: Path) -> None:
    """Refuse to publish a staged text file that names one of `places` (a path of this machine)."""
    pattern = re.compile(r"(?<![\w.~-])(?:" + "|".join(map(re.escape, places)) + r")(?![\w.-])")
    for name, path in staged_files(staging).items():
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            match = pattern.search(data.decode("utf-8"))
        except UnicodeDecodeError:  # binary: weights, images
            continue
        if match:
            raise RunFolderError(
                f"{name} of {run_dir} holds a path of this machine ({match.group()}), and fintrl "
                "publishes no local paths: remove it there, or from the recipe value it comes from"
            )


def stage(run_dir: Path, staging: Path, *, recipe: Recipe, card: str, base: str) -> None:
    """Copy the run's top-level files (not `checkpoints/`, no dotfiles), point the adapter at the base's Hub id, give
    the recipe and report portable values, check that no local path remains; the run folder is left untouched."""
    run = RunFolder(run_dir)
    for path in sorted(run_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, staging / path.name)
    config = json.loads(run.file(ADAPTER_CONFIG).read_text())
    saved_base = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = base
    config["revision"] = config.get("revision") or recipe.model.revision  # PEFT loads the base at this revision
    (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    recipe_raw = portable_recipe(recipe, base_model=base, run_name=run_dir.resolve().name)
    (staging / RECIPE).write_text(yaml.safe_dump(recipe_raw, sort_keys=False, allow_unicode=True))
    metrics = run.metrics()
    if portable_report(metrics) != metrics:  # a run made before reports were portable
        (staging / METRICS).write_text(json.dumps(portable_report(metrics), indent=2))
    (staging / CARD).write_text(card)
    _check_no_local_paths(staging, _local_paths(run_dir, recipe, saved_base), run_dir)


def staged_files(staging: Path) -> dict[str, Path]:
    """Every file of a staged version, by its path in the repo."""
    return {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}
