"""What `eval` and `predict` score, and how it loads: a run folder, an adapter folder, a Hub repo at a version, or a
base model zero-shot.

Nothing downloaded decides what code runs: `trust_remote_code` comes only from the user's own command line
(`--trust-remote-code`) or their own `--recipe`, never from a recipe found in the target, and the base model of a Hub
adapter is the one its `adapter_config.json` names (said on stderr before it loads).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fintrl.errors import HubError, ModelError, RecipeError, RunFolderError
from fintrl.hub.download import download_repo
from fintrl.hub.ids import is_hub_id
from fintrl.recipe.schema import Recipe, label_names, load_recipe
from fintrl.run_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREDICTIONS, RECIPE, RunFolder
from fintrl.scoring.calibration import Calibration, load_calibration

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fintrl.model.prompts import PromptBuilder
    from fintrl.scoring.scorer import LabelScorer, ScoreResult

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What a Hub adapter repo needs for inference: config, weights, tokenizer, template, recipe and report, and the eval
# rows the dense form is checked on (`fintrl.scoring.inference`)
_INFERENCE_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.yaml", "*.txt", PREDICTIONS]


@dataclass(frozen=True)
class Target:
    """A resolved target: the recipe that says how to prompt and score, and where the adapter (if any) lives."""

    recipe: Recipe
    adapter: str | None  # a local folder
    labels: list[str] | None  # the label set the adapter was trained and scored on, when known
    name: str  # for reports: the repo id, folder or base model as the user gave it
    calibration: Calibration | None = None  # the run's calibration.json, when it has one
    prompt: PromptBuilder | None = None  # the run's prompt.json: the prompt its adapter was trained with

    @property
    def local_folder(self) -> Path | None:
        """The adapter's folder when the user named it on this machine (not a download): what an ensemble folder
        can name as its member."""
        return Path(self.adapter) if self.adapter and Path(self.adapter) == Path(self.name) else None

    def calibrate(self, result: ScoreResult) -> ScoreResult:
        """The scorer's result, calibrated as `eval`, `predict` and `serve` do by default (`Calibration.apply_result`:
        probabilities, and predictions where the map can reorder labels). Unchanged without a calibration, or when
        the result's scoring mode is not the one it was fitted on."""
        return result if self.calibration is None else self.calibration.apply_result(result)

    def label_set(self, command: str) -> list[str]:
        """The labels to score with: the adapter's, else the recipe's `data.labels` (a base model scored zero-shot)."""
        labels = label_names(self.labels or self.recipe.data.labels)
        if labels is None:
            raise RecipeError(
                f"{command} needs the label set: use a run folder / published adapter, "
                "or give data.labels in the recipe"
            )
        return labels

    def prompt_builder(self, labels: list[str] | None = None) -> PromptBuilder:
        """The prompt to ask: the very one the adapter was trained with (its run folder's `prompt.json`), else the
        recipe's over `labels` (default: `label_set`) and the data's task (a base model zero-shot, `--recipe`, or a
        folder made before runs stored their prompt)."""
        from fintrl.data.presets import data_task
        from fintrl.model.prompts import PromptBuilder

        if self.prompt is not None:
            return self.prompt
        return PromptBuilder.resolve(
            self.recipe.prompt, labels or self.label_set("scoring"), data_task(self.recipe.data)
        )

    def scorer(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        mode: str | None = None,
        batch_size: int | None = None,
        labels: list[str] | None = None,
    ) -> LabelScorer:
        """The scorer `predict`, `serve` and Ray's actors use: the target's prompt (over `labels` where the target
        has no label set of its own), the recipe's eval settings (or these), and the prompt's shared prefix run once
        for all its calls (an inference model's weights are fixed)."""
        from fintrl.scoring.scorer import LabelScorer

        builder = self.prompt_builder(labels)
        return LabelScorer.from_eval(
            model, tokenizer, builder, self.recipe.eval, mode=mode, batch_size=batch_size, keep_prefix=True
        )


def split_revision(target: str) -> tuple[str, str | None]:
    """`org/name@v1.0.0` -> ("org/name", "v1.0.0"); a local path keeps any `@` in its name."""
    if "@" in target and not Path(target).exists():
        name, _, revision = target.rpartition("@")
        if not revision:
            raise RecipeError(f"{target}: nothing after '@'; give a version, branch or commit (org/name@v1.0.0)")
        return name, revision
    return target, None


def resolve_target(
    target: str, *, recipe_path: str | None = None, overrides: list[str] = (), trust_remote_code: bool = False
) -> Target:
    """The recipe and adapter for `target`: one run folder, adapter, Hub repo or base model (an ensemble is
    refused: `resolve_targets`).

    ```python
    resolve_target("runs/quickstart").adapter
    resolve_target("your-org/fin-sentiment@v1.0.0").recipe.model.name_or_path  # the base its adapter names
    ```
    """
    options = {"recipe_path": recipe_path, "overrides": overrides, "trust_remote_code": trust_remote_code}
    resolved = resolve_targets(target, **options)
    if len(resolved) > 1:
        raise RecipeError(
            f"{target} is an ensemble of {len(resolved)} adapters, and this command takes one: give one member "
            "(eval, predict and serve take an ensemble)"
        )
    return resolved[0]


def resolve_targets(
    target: str, *, recipe_path: str | None = None, overrides: list[str] = (), trust_remote_code: bool = False
) -> list[Target]:
    """`target` resolved: one Target, or one per member, in order, for an ensemble folder or repo (its
    `ensemble.json`: `RunFolder.ensemble_members`). A downloaded member is named `org/name/member@revision`."""
    name, revision = split_revision(target)
    local = Path(name)
    folder: Path | None = local if local.is_dir() else None
    if folder is None and is_hub_id(name):
        folder = download_repo(name, revision=revision, patterns=_INFERENCE_FILES)
    elif revision is not None:
        raise RecipeError(f"{target}: '@revision' applies to Hub repos only, and {name} is not one")
    downloaded = folder is not None and folder is not local
    options = (recipe_path, overrides, trust_remote_code)
    if folder is None or not RunFolder(folder).is_ensemble:
        return [_checked(target, downloaded, lambda: _resolve(target, name, revision, folder, downloaded, *options))]
    members = _checked(target, downloaded, lambda: RunFolder(folder).ensemble_members(downloaded=downloaded))
    if not downloaded:  # each member as the user would name it
        return [_resolve(str(m), str(m), None, m, False, *options) for m in members]
    at = f"@{revision}" if revision else ""
    return [
        _checked(target, True, lambda m=m: _resolve(f"{name}/{m.name}{at}", name, revision, m, True, *options))
        for m in members
    ]


def _checked(target: str, downloaded: bool, resolve: Callable[[], T]) -> T:
    """A downloaded repo that is not usable is the repo's fault (exit 6), named by the target asked for."""
    try:
        return resolve()
    except (RunFolderError, RecipeError) as err:
        if not downloaded:
            raise
        raise HubError(f"{target}: the downloaded repo is not usable: {err}") from None


def _resolve(
    target: str,
    name: str,
    revision: str | None,
    folder: Path | None,
    downloaded: bool,
    recipe_path: str | None,
    overrides: list[str],
    trust_remote_code: bool,
) -> Target:
    if recipe_path is not None:  # the user's own recipe: its trust_remote_code stands
        recipe = load_recipe(recipe_path, overrides=overrides)
        if trust_remote_code:
            recipe = _with_model(recipe, trust_remote_code=True)
        if folder is not None and (folder / ADAPTER_CONFIG).is_file():
            labels = RunFolder(folder).labels()
            calibration = load_calibration(folder, len(labels) if labels else None)
            return Target(recipe, str(folder), labels, target, calibration)
        if folder is not None and not (folder / "config.json").is_file():
            raise RecipeError(f"{target} holds neither an adapter ({ADAPTER_CONFIG}) nor a model (config.json)")
        return Target(_with_model(recipe, name_or_path=str(folder or name), revision=revision), None, None, target)
    if folder is None or not (folder / RECIPE).is_file():
        raise RecipeError(
            f"{target} is not a fintrl run folder or published adapter: give a recipe (--recipe) for the "
            "data and prompt"
        )
    recipe = _with_model(RunFolder(folder).recipe(overrides), trust_remote_code=trust_remote_code)
    if downloaded:  # the base is the one the adapter config names
        recipe = _with_model(recipe, **_adapter_base(folder))
    run = RunFolder(folder)
    labels, prompt = run.labels(), run.prompt()
    if prompt is not None and labels is not None and prompt.labels != labels:
        raise RunFolderError(f"{folder}: its prompt's labels {prompt.labels} differ from its report's {labels}")
    calibration = load_calibration(folder, len(labels) if labels else None)
    if (folder / ADAPTER_CONFIG).is_file():
        return Target(recipe, str(folder), labels, target, calibration, prompt)
    if (folder / "config.json").is_file():  # a fully fine-tuned run: the folder is the model
        full = _with_model(recipe, name_or_path=str(folder), revision=None)
        return Target(full, None, labels, target, calibration, prompt)
    raise RecipeError(f"{target} holds no adapter or model weights; finish the run with `fintrl run --resume`")


def _with_model(recipe: Recipe, **updates: object) -> Recipe:
    return recipe.model_copy(update={"model": recipe.model.model_copy(update=updates)})


def _adapter_base(folder: Path) -> dict[str, object]:
    config = json.loads((folder / ADAPTER_CONFIG).read_text()) if (folder / ADAPTER_CONFIG).is_file() else {}
    base = config.get("base_model_name_or_path")
    return {"name_or_path": base, "revision": config.get("revision")} if base else {}


def announce(target: Target) -> None:
    """Say on stderr, before it loads, which base (and whose code) and which adapter are loaded."""
    model_section = target.recipe.model
    print(
        f"fintrl: loading base model {model_section.name_or_path}"
        + (f" @ {model_section.revision}" if model_section.revision else "")
        + (" (trusting its remote code)" if model_section.trust_remote_code else "")
        + (f" with adapter {target.name}" if target.adapter else ""),
        file=sys.stderr,
    )


def target_tokenizer(target: Target) -> PreTrainedTokenizerBase:
    """The tokenizer a target is scored with: the adapter's own (with its chat template), else the base model's."""
    from fintrl.model.loading import load_tokenizer

    section = target.recipe.model
    if target.adapter is None:
        return load_tokenizer(section, target.recipe.prompt.system)
    plain = section.model_copy(update={"chat_template": None, "revision": None})
    return load_tokenizer(plain, target.recipe.prompt.system, path=target.adapter)


def load_for_inference(target: Target) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base model (quantized as the recipe says) + the adapter, with the adapter's own tokenizer and chat template."""
    from fintrl.model.loading import load_model

    model_section = target.recipe.model
    announce(target)
    model = load_model(model_section, target.recipe.quantization)
    if target.adapter is None:
        return model, target_tokenizer(target)
    from peft import PeftModel

    require_safetensors(target)
    tokenizer = target_tokenizer(target)
    try:
        return PeftModel.from_pretrained(model, target.adapter), tokenizer
    except RuntimeError as err:
        raise misfit_error(err, target) from None


def require_safetensors(target: Target) -> None:
    """Adapter weights load from safetensors only: a pickle can run code as it loads."""
    adapter = Path(target.adapter)
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in adapter.glob("*.bin")) + sorted(p.name for p in adapter.glob("*.pt"))
        raise ModelError(
            f"adapter {target.name} has no {ADAPTER_WEIGHTS}"
            + (f" (only {', '.join(pickles)}: pickles, which can run code as they load)" if pickles else "")
            + "; fintrl loads adapter weights from safetensors only"
        )


def misfit_error(err: RuntimeError, target: Target) -> Exception:
    """PEFT's shape error as the user's: the adapter was trained on another base."""
    if "size mismatch" not in str(err) and "state_dict" not in str(err):
        return err
    return ModelError(
        f"adapter {target.name} does not fit base model {target.recipe.model.name_or_path} (its weight shapes "
        "differ): it was trained on another base"
    )
