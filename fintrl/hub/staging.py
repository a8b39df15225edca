"""What a publish uploads: the run's files made portable. The adapter names the base by its Hub id
(`base_model_hub_id`), the recipe and report carry portable values (a Hub id, a preset's name, a folder's name:
`portable_name`), and `stage` refuses the lot if any text file still names a path of this machine (the run's, data's,
model's, home, working or temp folder)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fintrl.errors import RecipeError, RunFolderError
from fintrl.hub.ids import hub_id_problem, is_hub_id
from fintrl.run_folder import ADAPTER_CONFIG, CARD, METRICS, RECIPE, Report, RunFolder
from fintrl.transaction import run_name

if TYPE_CHECKING:
    from fintrl.recipe.schema import Recipe


def portable_name(name: str | None) -> str | None:
    """What may leave this machine for a model or data location: an offline name's Hub id, a Hub id as it is, else the
    name of the local folder or file (never its path).

    >>> portable_name("smollm2-135m-instruct"), portable_name("/home/me/data/fpb"), portable_name("org/x@v1.0.0")
    ('HuggingFaceTB/SmolLM2-135M-Instruct', 'fpb', 'org/x@v1.0.0')
    """
    from fintrl.model.loading import hub_id

    if not name:
        return name
    mapped = hub_id(name)
    return mapped if is_hub_id(mapped) else Path(mapped).name or mapped


def portable_recipe(recipe: Recipe, *, base_model: str, folder_name: str) -> dict[str, Any]:
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
        for key in ("path", "source", "exclude"):
            if key in section:
                section[key] = portable_name(section.get(key))
    raw["output_dir"] = folder_name
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


def base_model_hub_id(recipe: Recipe, base_model: str | None = None) -> str:
    """The base model's Hub id, as the published adapter_config.json and recipe.yaml name it: `base_model` (from
    `--base-model`, else the recipe's publish.base_model) or the recipe's model when it is a Hub id or an offline name
    of one. A base that exists only on this machine is refused: the adapter would load nowhere else."""
    from fintrl.model.loading import hub_id

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
    from fintrl.data.presets import PRESETS
    from fintrl.model.loading import fintrl_home

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


def _copy_files(folder: Path, staging: Path) -> None:
    """A folder's top-level files (not its subfolders, no dotfiles); a symbolic link refuses the publish."""
    staging.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_symlink():  # its target may be anything on this machine (a token, a key): never uploaded
            raise RunFolderError(
                f"{path} is a symbolic link (to {os.readlink(path)}); fintrl uploads nothing from outside the run "
                "folder: put the file itself there, or remove the link"
            )
        if path.is_file():
            shutil.copy2(path, staging / path.name, follow_symlinks=False)


def stage(run_dir: Path, staging: Path, *, recipe: Recipe, card: str | None, base: str) -> None:
    """Copy the run's top-level files (not `checkpoints/`, no dotfiles), point the adapter at the base's Hub id, give
    the recipe and report portable values, check that no local path remains; the run folder is left untouched.
    `card` None: no card (an ensemble's member: the ensemble's card describes it)."""
    run = RunFolder(run_dir)
    _copy_files(run_dir, staging)
    saved_base = None
    if run.file(ADAPTER_CONFIG).is_file():  # a merged export (`fintrl export --merged`) has none
        config = json.loads(run.file(ADAPTER_CONFIG).read_text())
        saved_base = config.get("base_model_name_or_path")
        config["base_model_name_or_path"] = base
        config["revision"] = config.get("revision") or recipe.model.revision  # PEFT loads the base at this revision
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    recipe_raw = portable_recipe(recipe, base_model=base, folder_name=run_name(run_dir))
    (staging / RECIPE).write_text(yaml.safe_dump(recipe_raw, sort_keys=False, allow_unicode=True))
    metrics = run.metrics()
    if portable_report(metrics) != metrics:  # a run made before reports were portable
        (staging / METRICS).write_text(json.dumps(portable_report(metrics), indent=2))
    if card is None:
        (staging / CARD).unlink(missing_ok=True)
    else:
        (staging / CARD).write_text(card)
    _check_no_local_paths(staging, _local_paths(run_dir, recipe, saved_base), run_dir)


def member_names(members: list[Path]) -> list[str]:
    """Each ensemble member's subfolder in the repo: its run folder's name (`seed42`), numbered where names repeat."""
    names: list[str] = []
    for member in members:
        name = run_name(member)
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


def stage_ensemble(folder: Path, staging: Path, *, members: list[Path], card: str, base: str) -> None:
    """An ensemble folder as one repo: its report, predictions, plots and card at the top, each member's run staged
    (`stage`, without a card) into a subfolder named by `member_names`, and `ensemble.json` naming those subfolders;
    the report names the members by them. No local path may remain, in any file."""
    run = RunFolder(folder)
    _copy_files(folder, staging)
    names = member_names(members)
    metrics = portable_report(run.metrics()) | {"model": base}
    record = metrics.get("ensemble") or {}
    record.pop("source", None)
    record["members"] = names
    for entry, name in zip(record.get("per_member") or [], names):
        entry["name"] = name
    (staging / METRICS).write_text(json.dumps(metrics, indent=2))
    (staging / CARD).write_text(card)
    RunFolder(staging).write_ensemble([staging / name for name in names])
    recipes = [RunFolder(member).recipe() for member in members]
    for member, name, recipe in zip(members, names, recipes):
        stage(member, staging / name, recipe=recipe, card=None, base=base)
    places = [p for member, recipe in zip(members, recipes) for p in _local_paths(member, recipe, None)]
    _check_no_local_paths(
        staging, sorted({*places, *_local_paths(folder, recipes[0], None)}, key=len, reverse=True), folder
    )


def staged_files(staging: Path) -> dict[str, Path]:
    """Every file of a staged version, by its path in the repo."""
    return {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}
