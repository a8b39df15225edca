"""The Hub side: model cards rendered from `model_cards/`, publishing run folders as versioned repos.

A published version is one commit holding the whole run folder (minus `checkpoints/`) plus a `vX.Y.Z` tag on it.
Tags are never moved, so `revision="v1.1.0"` always loads the same adapter, card, recipe and metrics.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fintrl.errors import RecipeError
from fintrl.recipe import Recipe

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

CARD_TEMPLATE = "fintrl_adapter.md"
HUB_BASE_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # offline name -> Hub id
VERSION_TAG = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def template_path() -> Path:
    """The card template: packaged inside the wheel, or the repo's `model_cards/` in a source checkout."""
    here = Path(__file__).parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        if (folder / CARD_TEMPLATE).is_file():
            return folder / CARD_TEMPLATE
    raise FileNotFoundError(f"{CARD_TEMPLATE} not found next to the fintrl package")


def _read_run(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    from fintrl.runner import METRICS_FILE, load_run_recipe

    if not run_dir.is_dir():
        raise RecipeError(f"{run_dir}: no such run folder")
    recipe = load_run_recipe(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise RecipeError(f"{run_dir} has no {METRICS_FILE}: run `fintrl run` (or `fintrl eval`) first")
    return recipe, json.loads(metrics_path.read_text())


def base_model_id(name_or_path: str) -> str:
    return HUB_BASE_IDS.get(name_or_path, name_or_path)


def is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and name.count("/") == 1


def render_card(run_dir: Path, repo_id: str | None = None, versions: list[dict[str, Any]] | None = None,
                version: str | None = None) -> str:
    """The model card of a run folder: Hub metadata (incl. model-index) + usage, prompt, metrics, data, limits.
    `version` (when publishing) adds the snippet that loads exactly that tag; `versions` fills the history table."""
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
        version=version, max_new_tokens=max(8, max(len(a) for a in builder.answers) // 2 + 4),
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


@dataclass(frozen=True)
class Published:
    repo_id: str
    version: str
    commit: str
    url: str


def parse_version(text: str) -> tuple[int, int, int]:
    """`v1.2.3` (or `1.2.3`) -> (1, 2, 3): versions are semantic so they sort and bump without surprises."""
    match = VERSION_TAG.fullmatch("v" + text.strip().removeprefix("v"))
    if match is None:
        raise RecipeError(f"version {text!r} is not a semantic version: use vMAJOR.MINOR.PATCH, e.g. v1.1.0")
    major, minor, patch = map(int, match.groups())
    return major, minor, patch


def next_version(taken: list[str]) -> str:
    """v1.0.0 first, then the highest version with its minor number bumped."""
    if not taken:
        return "v1.0.0"
    major, minor, _ = max(map(parse_version, taken))
    return f"v{major}.{minor + 1}.0"


def _version_tags(api: HfApi, repo_id: str) -> dict[str, str]:
    """`vX.Y.Z` tag -> commit sha; other tags are not fintrl versions and are left alone."""
    return {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags if VERSION_TAG.fullmatch(t.name)}


def _file_at(repo_id: str, filename: str, commit: str) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=commit)).read_text()
    except EntryNotFoundError:
        return None


def _version_record(api: HfApi, repo_id: str, tag: str, commit: str) -> dict[str, Any]:
    """What a version is, read from the files at its tag (not from a side index that could drift)."""
    from fintrl.runner import METRICS_FILE, RECIPE_FILE

    metrics = json.loads(_file_at(repo_id, METRICS_FILE, commit) or "{}")
    adapter = json.loads(_file_at(repo_id, "adapter_config.json", commit) or "{}")
    data = (yaml.safe_load(_file_at(repo_id, RECIPE_FILE, commit) or "{}") or {}).get("data", {})
    date = api.list_repo_commits(repo_id, revision=commit)[0].created_at
    return {"version": tag, "date": date.strftime("%Y-%m-%d"), "commit": commit,
            "base_model": adapter.get("base_model_name_or_path"),
            "data": data.get("preset") or data.get("source") or data.get("path"),
            "n_train": metrics.get("data", {}).get("n_train"), "n_eval": metrics.get("data", {}).get("n_eval"),
            **{k: metrics.get(k) for k in ("accuracy", "f1_macro", "f1_weighted")}}


def list_versions(repo_id: str) -> list[dict[str, Any]]:
    """Every published version of a repo, highest first: date, commit, base model, data and headline metrics."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi()
    try:
        tags = _version_tags(api, repo_id)
    except RepositoryNotFoundError:
        raise RecipeError(f"{repo_id}: no such repo on {api.endpoint} (or the token cannot see it)") from None
    ordered = sorted(tags, key=parse_version, reverse=True)
    return [_version_record(api, repo_id, tag, tags[tag]) for tag in ordered]


def published_base(recipe_base: str, saved_base: str) -> str:
    """The base named in the uploaded adapter_config.json: offline names become their Hub ids; Hub ids and local
    folders stay as PEFT saved them (a folder only loads on this machine, hence the warning)."""
    if recipe_base in HUB_BASE_IDS:
        return HUB_BASE_IDS[recipe_base]
    if not is_hub_id(saved_base):
        logger.warning("base model %s is a local folder: the published adapter loads only where that folder exists",
                       saved_base)
    return saved_base


def _stage(run_dir: Path, staging: Path, recipe: Recipe, card: str) -> None:
    """Copy the run's top-level files (not `checkpoints/`, no dotfiles) and point the adapter at a loadable base;
    the run folder itself is left untouched."""
    for path in sorted(run_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, staging / path.name)
    config_path = staging / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = published_base(recipe.model.name_or_path, config["base_model_name_or_path"])
    config["revision"] = config.get("revision") or recipe.model.revision  # PEFT loads the base at this revision
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (staging / "README.md").write_text(card)


def publish(run_dir: Path, repo_id: str, version: str | None = None, private: bool = False) -> Published:
    """Upload a run folder as one commit and tag it `version` (default: the next minor version).

    Everything that can refuse (run folder, token, version) is checked before anything is uploaded; the tag is
    created only after the commit succeeded, so a failed upload leaves no version behind.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import RepositoryNotFoundError

    run_dir = Path(run_dir)
    recipe, metrics = _read_run(run_dir)
    if not (run_dir / "adapter_config.json").is_file():
        raise RecipeError(f"{run_dir} holds no adapter (adapter_config.json): only LoRA runs can be published")
    if get_token() is None:
        raise RecipeError("publishing needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi()
    try:
        head = api.model_info(repo_id)
    except RepositoryNotFoundError:
        head = None
    if head is not None and private and not head.private:
        raise RecipeError(f"{repo_id} exists and is public: --private cannot hide it; change its visibility on the Hub")
    history = list_versions(repo_id) if head is not None else []
    taken = [v["version"] for v in history]
    version = "v{}.{}.{}".format(*parse_version(version)) if version else next_version(taken)
    if version in taken:
        raise RecipeError(f"{repo_id} already has {version} and published versions are immutable: "
                          f"publish as {next_version(taken)} (--version) instead")
    current = {"version": version, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
               "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}
    versions = sorted([current, *history], key=lambda v: parse_version(v["version"]), reverse=True)
    card = render_card(run_dir, repo_id, versions, version)
    summary = f"{version}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}"
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fintrl-publish-") as tmp:
        _stage(run_dir, Path(tmp), recipe, card)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=f"fintrl {summary}",
                                   delete_patterns="*",  # the commit holds exactly this version's files
                                   parent_commit=head.sha if head is not None else None)
    api.create_tag(repo_id, tag=version, revision=commit.oid, tag_message=summary)
    (run_dir / "README.md").write_text(card)
    logger.info("published %s %s (commit %s)", repo_id, version, commit.oid)
    return Published(repo_id, version, commit.oid, f"{api.endpoint}/{repo_id}/tree/{version}")
