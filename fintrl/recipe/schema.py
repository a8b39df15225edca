"""Recipes: typed, validated YAML describing one fintrl run.

Our own sections are pydantic models (fast, key paths in errors). The `train`, `lora` (or `peft`: another PEFT
method, `fintrl.model.peft_methods`) and `quantization` sections pass through untouched to TRL's `SFTConfig`, PEFT's
`LoraConfig` (or the method's class) and transformers' `BitsAndBytesConfig`, so users read those libraries' docs for
the fields; their keys, types and ranges are checked against the real classes by `fintrl.checks.recipe.check_recipe`
(which
imports them, hence kept out of `load_recipe`), with everything else that needs no weights: presets, paths, the
model, placeholders (`fintrl validate` runs it).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fintrl.errors import RecipeError
from fintrl.recipe.yaml_io import apply_override, fix_yaml_floats, load_yaml, parse_override

logger = logging.getLogger(__name__)
# Method names that keep the `lora:` section (fintrl.model.peft_methods.METHODS' LoRA family, spelt without importing
# PEFT)
_LORA_NAMES = ("lora", "dora", "rslora", "loraconfig")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name_or_path: str = Field(
        description="Hub id, local folder, or an offline name (see `fintrl.model.loading.OFFLINE_MODELS`)."
    )
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = Field(
        None, description="A Jinja chat template (or a path to one) to use instead of the model's."
    )
    trust_remote_code: bool = False
    attn_implementation: str | None = None


Labels = list[str] | dict[int, str]  # label names, or an id -> name map for integer labels
ScoringMode = Literal["auto", "first_token", "loglik", "trie", "generate"]
# Where one data source lives and how its columns read: set per entry in a `data.mixture`.
SOURCE_FIELDS = ("preset", "source", "path", "config_name", "text_column", "label_column")


def label_names(labels: Labels | None) -> list[str] | None:
    """The label names in order, from a list or an id -> name map."""
    return None if labels is None else list(labels.values()) if isinstance(labels, dict) else list(labels)


def _check_labels(v: Labels | None) -> Labels | None:
    names = label_names(v)
    if names is not None:
        if len(names) < 2:
            raise ValueError("needs at least two labels")
        if any(not str(n).strip() for n in names):
            raise ValueError("label names must be non-empty")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate label names: {dupes}")
    return v


class MixtureSource(_Section):
    """One source of a `data.mixture`: where it lives and how its rows join the mixture."""

    preset: str | None = Field(None, description="A named dataset (see `fintrl.data.loading.PRESETS`).")
    source: str | None = Field(
        None, description="Hub dataset id, a folder of split files, or a csv/jsonl/parquet file."
    )
    path: str | None = Field(None, description="Local folder or file that replaces the preset's Hub source.")
    name: str | None = Field(
        None, description="Name in per-source metrics; default: the preset, else the folder/file name."
    )
    weight: float = Field(
        1.0,
        gt=0,
        description="Train rows taken = weight x the source's train rows: 2.0 = every row twice, "
        "0.5 = a seeded half, 1.5 = every row once + a seeded half.",
    )
    label_map: dict[str, str] | None = Field(
        None,
        description="This source's label name -> the mixture's (e.g. bearish: negative); "
        "unmapped labels keep their name.",
    )
    config_name: str | None = None
    text_column: str | None = Field(None, description="Default: the preset's, else `text`.")
    label_column: str | None = Field(None, description="Default: the preset's, else `label`.")
    labels: list[str] | dict[int, str] | None = Field(
        None, description="This source's label names (default: the preset's)."
    )

    @field_validator("labels")
    @classmethod
    def _unique_nonempty(cls, v: list[str] | dict[int, str] | None) -> list[str] | dict[int, str] | None:
        return _check_labels(v)

    @field_validator("label_map")
    @classmethod
    def _nonempty_targets(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and any(not str(n).strip() for n in v.values()):
            raise ValueError("label names must be non-empty")
        return v

    @model_validator(mode="after")
    def _has_source(self) -> MixtureSource:
        if not (self.preset or self.source or self.path):
            raise ValueError("give one of `preset`, `source` or `path`")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.preset or Path(str(self.path or self.source)).name


class DataSection(_Section):
    preset: str | None = Field(None, description="A named dataset (see `fintrl.data.loading.PRESETS`).")
    source: str | None = Field(
        None, description="Hub dataset id, a folder of split files, or a csv/jsonl/parquet file."
    )
    path: str | None = Field(None, description="Local folder or file that replaces the preset's Hub source.")
    config_name: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | dict[int, str] | None = Field(
        None, description="Label names, or an id -> name map for integer labels."
    )
    train_split: str = "train"
    eval_split: str = "validation"
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Carved from train (stratified, seeded) when eval_split is absent."
    )
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(None, gt=0)
    balance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Class balancing by oversampling train rows: class c gets "
        "n_c + balance * (n_max - n_c) rows (0: as is, 1: all as large as the largest). Eval untouched.",
    )
    seed: int = 42
    exclude: str | None = Field(
        None,
        description="An audit.csv from `fintrl audit RUN`: its flagged train rows (matched by text and gold label) "
        "are left out of training; eval rows never.",
    )
    exclude_top: int | None = Field(
        None, gt=0, description="With `exclude`: only the N most confidently disputed flagged rows (default: all)."
    )
    mixture: list[MixtureSource] | None = Field(
        None,
        description="Several sources trained together (instead of preset/source/path): train rows weighted per "
        "source, label sets mapped (`label_map`) into one, eval = every source's eval split, scored per source and "
        "combined. `labels` then orders the mixture's label set; max_train_samples caps the mixed train rows, "
        "max_eval_samples each source's eval rows; splits, validation_fraction and seed apply to every source.",
    )

    @field_validator("labels")
    @classmethod
    def _unique_nonempty(cls, v: list[str] | dict[int, str] | None) -> list[str] | dict[int, str] | None:
        return _check_labels(v)

    @property
    def label_names(self) -> list[str] | None:
        return label_names(self.labels)

    @model_validator(mode="after")
    def _exclude_top_needs_exclude(self) -> DataSection:
        if self.exclude_top is not None and self.exclude is None:
            raise ValueError("data.exclude_top needs data.exclude (the audit.csv whose flagged rows to leave out)")
        return self

    @model_validator(mode="after")
    def _has_source(self) -> DataSection:
        if self.mixture is not None:
            per_source = [
                k for k in SOURCE_FIELDS if getattr(self, k) != type(self).model_fields[k].default
            ]  # by value: dumped recipes list defaults
            if per_source:
                raise ValueError(f"`mixture` replaces {sorted(per_source)}: set them in each mixture entry")
            if not self.mixture:
                raise ValueError("`mixture` needs at least one source")
            names = [m.display_name for m in self.mixture]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"mixture: duplicate source names {dupes}; give each entry a distinct `name`")
        elif not (self.preset or self.source or self.path):
            raise ValueError("give one of `preset`, `source` or `path` (or a `mixture` of sources)")
        return self


class PromptSection(_Section):
    system: str | None = Field(None, description="System prompt; none by default (no hidden default either).")
    instruction: str = Field(
        "Classify the {task} of this financial text. Answer with one of: {labels}.",
        description="Placeholders: {task}, {labels}.",
    )
    template: str = Field("{instruction}\n\n{text}", description="User message; placeholders {instruction}, {text}.")
    task: str | None = Field(
        None, description="What {task} says (sentiment, topic, ...); default: the data's (a preset's, else `class`)."
    )
    verbalizers: dict[str, str] | None = Field(None, description="label -> answer text; defaults to the label name.")

    @field_validator("template")
    @classmethod
    def _template_has_text(cls, v: str) -> str:
        if "{text}" not in v:  # the full placeholder check reports with the rest (`fintrl.checks.recipe`)
            raise ValueError("must contain the {text} placeholder")
        return v


class EvalSection(_Section):
    mode: ScoringMode = "auto"
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(512, gt=8, description="Prompt tokens kept; longer texts are truncated (and counted).")
    baselines: bool = True
    curve_points: int = Field(
        0,
        ge=0,
        description="Learning curve: score `curve_samples` validation rows this many times, "
        "evenly over training, plus once before it (training_loss.png, metrics.json `learning_curve`).",
    )
    curve_samples: int = Field(256, gt=0, description="Validation rows (a fixed seeded sample) scored per curve point.")
    calibration_samples: int = Field(
        256,
        ge=0,
        description="Train rows held out of training (a seeded stratified sample, at most 10 % of train) and scored "
        "once after it to fit the map that calibrates the probabilities (calibration.json); 0: no calibration.",
    )
    calibration_method: Literal["temperature", "vector"] = Field(
        "temperature",
        description="temperature: one T, the predicted labels never change; vector: a weight and a bias per label "
        "(can undo a bias toward one label; predictions follow the calibrated probabilities). Either is kept only "
        "where it lowers NLL on held-out rows it was not fitted on (docs/evaluation.md#calibration).",
    )


class PublishSection(_Section):
    repo_id: str | None = None
    version: str | None = None
    private: bool = False
    base_model: str | None = Field(
        None,
        description="The base model's Hub id, named in the published adapter and recipe "
        "(default: the recipe's model when it is a Hub id or an offline name of one).",
    )


class Recipe(_Section):
    model: ModelSection
    quantization: dict[str, Any] | None = Field(
        default_factory=lambda: {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
        description="transformers.BitsAndBytesConfig fields; null for no quantization.",
    )
    lora: dict[str, Any] | None = Field(
        default_factory=lambda: {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"},
        description="peft.LoraConfig fields; null for full fine-tuning (unless `peft:` names a method).",
    )
    peft: dict[str, Any] | None = Field(
        None,
        description="The PEFT method and its fields: `method` (lora, dora, rslora, ia3, prompt_tuning, prefix_tuning, "
        "or a PEFT config class name such as LoHaConfig) + that config class's fields; the LoRA family starts from "
        "`lora:`. Absent: LoRA with the `lora:` fields (see fintrl.model.peft_methods).",
    )
    data: DataSection
    prompt: PromptSection = PromptSection()
    train: dict[str, Any] = Field(default_factory=dict, description="trl.SFTConfig fields.")
    eval: EvalSection = EvalSection()
    publish: PublishSection = PublishSection()
    output_dir: str = "runs/fintrl"
    seed: int = 42
    seeds: list[int] | None = Field(
        None,
        min_length=2,
        description="Train one run per seed (output_dir/seed<S>) and score their ensemble (output_dir/ensemble): "
        "the adapters' calibrated probabilities averaged; with publish.repo_id the ensemble is published as one repo "
        "(docs/commands.md#fintrl-run).",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_owns_lora(cls, raw: Any) -> Any:
        """`lora:` holds LoRA's fields; under another `peft.method` it does not apply, and becomes null (said once)."""
        peft = raw.get("peft") if isinstance(raw, dict) else None
        if isinstance(peft, dict) and isinstance(peft.get("method"), str):
            if peft["method"].lower() not in _LORA_NAMES and raw.get("lora", "default") is not None:
                if raw.get("lora", "default") != "default":
                    logger.warning("lora: not used by peft.method %s (its fields go under peft:)", peft["method"])
                raw = {**raw, "lora": None}
        return raw

    @field_validator("peft")
    @classmethod
    def _has_method(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and (not isinstance(v.get("method"), str) or not v["method"].strip()):
            raise ValueError("needs `method:` (lora, dora, rslora, ia3, prompt_tuning, prefix_tuning, or a PEFT class)")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        if self.quantization and self.lora is None and self.peft is None:
            raise ValueError(
                "quantization: a 4/8-bit model cannot be fully fine-tuned; "
                "add a `lora:` section or set quantization: null"
            )
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} lists a seed twice; each trains one run")
        for key in ("output_dir", "seed"):
            if key in self.train:
                raise ValueError(f"train.{key}: set it at the top level (`{key}:`), not under train")
        return self


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            known = _known_keys(Recipe, parent)
            hint = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean `{hint[0]}`?)" if hint else f"; expected one of {sorted(known)}")
        else:
            msg = e["msg"]
            if e["type"] not in ("value_error", "missing"):
                msg += f" (got {e.get('input')!r})"
        lines.append(f"{path or '<recipe>'}: {msg}")
    return "; ".join(lines)


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    for part in path:
        if isinstance(part, int):  # a list index (data.mixture.0)
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model in `M`, `M | None`, `list[M]` or `list[M] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def load_recipe(path: str | Path, *, overrides: list[str] = (), output_dir: str | None = None) -> Recipe:
    """Read a YAML recipe, apply `--set` overrides, validate its sections. Imports nothing heavy.

    >>> load_recipe("recipes/quickstart.yaml", overrides=["lora.r=32"]).lora["r"]
    32
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not UTF-8 text; a recipe is a UTF-8 YAML file") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: YAML syntax error: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (model, data, train, ...)")
    for item in overrides:
        apply_override(raw, *parse_override(item))
    if output_dir is not None:
        raw["output_dir"] = output_dir
    return recipe_from_dict(fix_yaml_floats(raw), source=str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(f"{source}: invalid recipe: {_format_validation_error(err)}") from None


def dump_recipe(recipe: Recipe, path: Path) -> None:
    raw = recipe.model_dump(mode="json")
    if raw["peft"] is None:  # absent reads the same, keeps recipes from before `peft:` unchanged, and lets --set add it
        del raw["peft"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
