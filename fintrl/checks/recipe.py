"""Everything `fintrl validate` (and `fintrl run`, before it loads anything) can check without weights or network.

`check_recipe` reports every problem at once, each as `key.path: what is wrong; the fix`, joined with "; " on one
line (a `RecipeError`, exit code 2):

- `train`, `lora`, `peft`, `quantization`: known methods and fields (did-you-mean), each value against the library
  field's type and choices, the ranges the libraries leave to crash later (learning_rate > 0, r >= 1, at least one
  training step, ...), then the real `SFTConfig` / PEFT config / `BitsAndBytesConfig`, built by the functions a run
  builds them with; a quantized base for a method PEFT has no 4-bit layers for;
- data: presets exist, `path`s exist, a `source` is an existing path or a Hub dataset id (syntax only);
- model: an offline name, a local folder with config.json, or a Hub id `org/name` (syntax only);
- prompt placeholders, a chat template file, verbalizers (when the recipe or preset names the labels);
- publish: repo id and semantic version.

TRL, PEFT and transformers are imported inside the functions (a few seconds), so `load_recipe` stays light.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from fintrl.checks.launch import Launch, launch_from_env, launch_problems
from fintrl.checks.library_fields import library_problems
from fintrl.errors import RecipeError
from fintrl.hub.ids import hub_id_problem
from fintrl.recipe.placeholders import INSTRUCTION_FIELDS, TEMPLATE_FIELDS, placeholder_problems
from fintrl.recipe.schema import DataSection, MixtureSource, ModelSection, PublishSection, Recipe

SEMVER = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")  # what `fintrl publish --version` takes (tags are vMAJOR.MINOR.PATCH)


def check_recipe(recipe: Recipe, *, launch: Launch | None = None) -> None:
    """Raise one `RecipeError` naming every problem (key path and fix) that can be found without weights or network.

    `launch`: how the run is launched (an accelerate config, for `fintrl validate --accelerate-config`); by default
    the variables `accelerate launch` set, so an FSDP run with a recipe FSDP cannot train is refused before it loads."""
    problems = [
        *_model_problems(recipe.model),
        *library_problems(recipe),
        *launch_problems(recipe, launch or launch_from_env()),
        *_data_problems(recipe.data),
        *_prompt_problems(recipe),
        *_objective_problems(recipe),
        *_publish_problems(recipe.publish),
        *_seeds_problems(recipe),
    ]
    if problems:
        raise RecipeError("invalid recipe: " + "; ".join(problems))


# --- model, data, prompt, publish ----------------------------------------------------------------------------------


def _model_problems(section: ModelSection) -> list[str]:
    from fintrl.model.loading import OFFLINE_MODELS

    problems = []
    name = section.name_or_path
    local = Path(name)
    if name in OFFLINE_MODELS:
        pass
    elif local.is_dir():
        if not (local / "config.json").is_file():
            problems.append(
                f"model.name_or_path: {name} holds no config.json; point at a folder written by save_pretrained"
            )
    elif local.exists():
        problems.append(f"model.name_or_path: {name} is a file; give the model's folder")
    else:
        why = (
            f"no such folder {name}"
            if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            else hub_id_problem(name, "local folder, offline model or Hub model id", namespace=True)
        )
        if why:
            hint = difflib.get_close_matches(local.name, OFFLINE_MODELS, n=1)
            problems.append(
                f"model.name_or_path: {why}; "
                + (
                    f"did you mean `{hint[0]}`?"
                    if hint
                    else f"give a Hub id (org/name), a local model folder, or an offline model {sorted(OFFLINE_MODELS)}"
                )
            )
    template = section.chat_template
    if template and "{" not in template and (template.endswith(".jinja") or "/" in template or "\\" in template):
        if not Path(template).is_file():
            problems.append(
                f"model.chat_template: no such file {template}; give an existing .jinja file or the template itself"
            )
    return problems


def _data_problems(section: DataSection) -> list[str]:
    entries: list[tuple[str, DataSection | MixtureSource]] = (
        [(f"data.mixture.{i}", m) for i, m in enumerate(section.mixture)] if section.mixture else [("data", section)]
    )
    problems = []
    for where, entry in entries:
        problems += _source_problems(where, entry.preset, entry.path, entry.source)
    if section.exclude and not Path(section.exclude).expanduser().is_file():
        problems.append(f"data.exclude: no such file {section.exclude} (give the audit.csv `fintrl audit RUN` wrote)")
    return problems


def _source_problems(where: str, preset: str | None, path: str | None, source: str | None) -> list[str]:
    from fintrl.data.files import SPLIT_SUFFIXES
    from fintrl.data.presets import PRESETS

    problems = []
    if preset is not None and preset not in PRESETS:
        hint = difflib.get_close_matches(preset, PRESETS, n=1)
        problems.append(
            f"{where}.preset: unknown preset {preset!r}"
            + (f" (did you mean `{hint[0]}`?)" if hint else f"; use one of {sorted(PRESETS)}")
        )
    if path is not None and not Path(path).expanduser().exists():
        problems.append(
            f"{where}.path: no such file or folder {path}; give an existing folder of split files or a "
            f"{'/'.join(SPLIT_SUFFIXES)} file (relative paths start where fintrl runs)"
        )
    if source is not None and not Path(source).expanduser().exists():
        if source.startswith((".", "/", "~")) or "\\" in source or Path(source).suffix in SPLIT_SUFFIXES:
            problems.append(
                f"{where}.source: no such file or folder {source}; give an existing path or a Hub dataset id"
            )
        else:
            why = hub_id_problem(source, "Hub dataset id", namespace=False)
            if why:
                problems.append(f"{where}.source: {why}; give a Hub dataset id (org/name) or an existing local path")
    return problems


def _prompt_problems(recipe: Recipe) -> list[str]:
    prompt = recipe.prompt
    problems = [
        *placeholder_problems("prompt.instruction", prompt.instruction, INSTRUCTION_FIELDS),
        *placeholder_problems("prompt.template", prompt.template, TEMPLATE_FIELDS),
    ]
    labels = _known_labels(recipe.data)
    if prompt.verbalizers and labels is not None:
        unknown = sorted(set(prompt.verbalizers) - set(labels))
        answers = [prompt.verbalizers.get(n, n) for n in labels]
        if unknown:
            problems.append(f"prompt.verbalizers: {unknown} are not labels; use labels from {labels}")
        elif len(set(answers)) != len(answers) or not all(a.strip() for a in answers):
            problems.append(f"prompt.verbalizers: answers must be distinct and non-empty, got {answers}; change them")
    return problems


def _objective_problems(recipe: Recipe) -> list[str]:
    """`train.objective: label_softmax` trains the probabilities the `first_token`/`trie` scorer reads, one example
    per row (`fintrl.model.label_tokens.label_softmax_loss`)."""
    if recipe.train.get("objective") != "label_softmax":
        return []
    problems = []
    if recipe.eval.mode == "loglik":
        problems.append(
            "train.objective: label_softmax trains the probabilities trie scoring reads, not eval.mode loglik's; "
            "use eval.mode auto (or trie), or train.objective token_ce"
        )
    if recipe.train.get("padding_free"):
        problems.append("train.objective: label_softmax needs one example per row; remove train.padding_free")
    return problems


def _known_labels(section: DataSection) -> list[str] | None:
    """The label names when the recipe or its preset says them (else the data does, and only a run reads it)."""
    from fintrl.data.presets import PRESETS

    if section.labels is not None:
        return [str(n) for n in (section.labels.values() if isinstance(section.labels, dict) else section.labels)]
    if section.mixture is None and section.preset in PRESETS:
        return list(PRESETS[section.preset].labels)
    return None


def _publish_problems(section: PublishSection) -> list[str]:
    problems = []
    if section.repo_id is not None:
        why = hub_id_problem(section.repo_id, "Hub repo id", namespace=True)
        if why:
            problems.append(f"publish.repo_id: {why}; e.g. your-org/fin-sentiment")
    if section.base_model is not None:
        why = hub_id_problem(section.base_model, "Hub model id", namespace=True)
        if why:
            problems.append(f"publish.base_model: {why}; e.g. mistralai/Mistral-7B-v0.1")
    if section.version is not None and not SEMVER.fullmatch(section.version.strip()):
        problems.append(
            f"publish.version: {section.version!r} is not a semantic version; use vMAJOR.MINOR.PATCH, e.g. v1.1.0"
        )
    return problems


def _seeds_problems(recipe: Recipe) -> list[str]:
    if recipe.seeds is None:
        return []
    if recipe.eval.mode == "generate":
        return ["seeds: an ensemble averages label probabilities, and eval.mode generate has none"]
    return []
