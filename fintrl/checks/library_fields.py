"""The pass-through sections (`train`, `lora`, `quantization`) checked against the real TRL, PEFT and transformers
classes: unknown fields (did you mean), value types, ranges the libraries leave to a crash, and the classes built."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import importlib.util
import inspect
import logging
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from fintrl.errors import RecipeError
from fintrl.recipe.schema import Recipe
from fintrl.recipe.yaml_io import looks_numeric

# BitsAndBytesConfig.__init__ has no annotations: its fields' types, as its post_init and bitsandbytes take them.
_DTYPES = Literal["float32", "bfloat16", "float16"]
# Trackers a recipe names in train.report_to, and how to install each (transformers' callbacks import them)
TRACKERS = {"trackio": "pip install 'fintrl[track]'", "mlflow": "pip install mlflow", "wandb": "pip install wandb"}


BNB_TYPES: dict[str, Any] = {
    "load_in_8bit": bool,
    "load_in_4bit": bool,
    "llm_int8_threshold": float,
    "llm_int8_skip_modules": list[str] | None,
    "llm_int8_enable_fp32_cpu_offload": bool,
    "llm_int8_has_fp16_weight": bool,
    "bnb_4bit_compute_dtype": Literal["auto"] | _DTYPES | None,  # auto: fintrl's (the model's compute dtype)
    "bnb_4bit_quant_type": Literal["nf4", "fp4"],
    "bnb_4bit_use_double_quant": bool,
    "bnb_4bit_quant_storage": Literal["float16", "float32", "int8", "uint8", "float64", "bfloat16"] | None,
}


REQUIREMENTS: dict[str, Callable[[Any], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
}


# Ranges the libraries accept at construction and fail on (or silently misuse) later: requirement, example.
RANGES: dict[str, dict[str, tuple[str, str]]] = {
    "train": {
        "learning_rate": ("> 0", "e.g. 2e-4"),
        "per_device_train_batch_size": (">= 1", "e.g. 8"),
        "per_device_eval_batch_size": (">= 1", "e.g. 8"),
        "gradient_accumulation_steps": (">= 1", "1 for none"),
        "max_length": (">= 1", "e.g. 512, or null for no truncation"),
        "warmup_steps": (">= 0", "a step count, or a fraction of the steps below 1"),
        "weight_decay": (">= 0", "0 for none"),
        "max_grad_norm": (">= 0", "e.g. 1.0, 0 for no clipping"),
        "logging_steps": ("> 0", "a step count, or a fraction of the steps below 1"),
        "save_steps": ("> 0", "a step count, or a fraction of the steps below 1"),
        "eval_steps": ("> 0", "a step count, or a fraction of the steps below 1"),
        "adam_beta1": ("in [0, 1)", "e.g. 0.9"),
        "adam_beta2": ("in [0, 1)", "e.g. 0.999"),
        "adam_epsilon": (">= 0", "e.g. 1e-8"),
    },
    "lora": {
        "r": (">= 1", "e.g. 16"),
        "lora_alpha": ("> 0", "e.g. twice r"),
        "lora_dropout": ("in [0, 1)", "e.g. 0.05"),
    },
    "quantization": {"llm_int8_threshold": ("> 0", "e.g. 6.0")},
}
# `peft:` fields by name: r is a rank in every PEFT method that has one
RANGES["peft"] = {**RANGES["lora"], "num_virtual_tokens": (">= 1", "e.g. 20")}


def check_library_fields(recipe: Recipe) -> None:
    """Only the `train`, `lora` and `quantization` sections (fields, types, ranges, the real library classes)."""
    problems = library_problems(recipe)
    if problems:
        raise RecipeError("invalid recipe: " + "; ".join(problems))


def library_problems(recipe: Recipe) -> list[str]:
    with _quiet():  # bitsandbytes logs a warning on import (no `kernels` package for its CPU kernel)
        from peft import LoraConfig
        from transformers import BitsAndBytesConfig

        from fintrl.model.loading import bnb_config, lora_config, torch_dtype
        from fintrl.model.peft_methods import method_problems, peft_config
        from fintrl.train import TRAIN_DEFAULTS, FintrlSFTConfig, sft_config

    bnb_fields = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    sections: list[tuple[str, dict[str, Any] | None, type, dict[str, Any], dict[str, Any], Callable[[], object]]] = [
        (
            "quantization",
            recipe.quantization,
            BitsAndBytesConfig,
            {k: BNB_TYPES.get(k, Any) for k in bnb_fields},
            {},
            lambda: bnb_config(recipe.quantization, torch_dtype(recipe.model.dtype)),
        ),
        ("lora", recipe.lora, LoraConfig, *_dataclass_types(LoraConfig), lambda: lora_config(recipe.lora)),
        (
            "train",
            recipe.train,
            FintrlSFTConfig,
            *_dataclass_types(FintrlSFTConfig),
            lambda: sft_config(recipe, Path(recipe.output_dir)),
        ),
    ]
    problems, method_cls = method_problems(recipe)  # peft.method: known (did you mean), supported, QLoRA
    if method_cls is not None:
        own = {k: v for k, v in (recipe.peft or {}).items() if k != "method"}
        sections.insert(2, ("peft", own, method_cls, *_dataclass_types(method_cls), lambda: peft_config(recipe)))
    for name, values, cls, hints, fields, build in sections:
        if values is None:  # no quantization / full fine-tuning
            continue
        found, bad = [], set()
        for key, value in values.items():
            if key not in hints:
                hint = difflib.get_close_matches(key, hints, n=1)
                problem = "unknown field" + (
                    f" (did you mean `{hint[0]}`?)" if hint else f"; see the {cls.__name__} fields"
                )
            elif name in ("lora", "peft") and key == "task_type":
                problem = "fintrl sets it (CAUSAL_LM); remove it"
            else:
                problem = _value_problem(name, key, value, hints[key], fields.get(key))
            if problem:
                found.append(f"{name}.{key}: {problem}")
                bad.add(key)
        defaults = {**{k: f.default for k, f in fields.items()}, **(TRAIN_DEFAULTS if name == "train" else {})}
        found += _range_problems(name, {k: v for k, v in values.items() if k not in bad}, defaults, bad)
        if not found:
            with _quiet():
                try:
                    build()
                except Exception as err:  # a value the library refuses (TypeError, ValueError, AttributeError...)
                    found.append(_library_error(name, values, cls.__name__, err))
        problems += found
    return problems


def _dataclass_types(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    return {k: hints.get(k, Any) for k in fields}, fields


def _value_problem(section: str, key: str, value: Any, hint: Any, field: dataclasses.Field | None) -> str | None:
    choices = _choices(hint, field)
    if section == "train" and key == "report_to":
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        choices = ["all", "none", *INTEGRATION_TO_CALLBACK]
        for item in value if isinstance(value, list) else []:
            if isinstance(item, str) and item not in choices:
                return _not_a_choice(item, choices)
        for item in value if isinstance(value, list) else [value]:
            if item in TRACKERS and importlib.util.find_spec(item) is None:  # else the trainer fails after loading
                return f"{item} is not installed: {TRACKERS[item]}"
    if isinstance(value, str) and choices:
        return None if _is_choice(value, choices) else _not_a_choice(value, choices)
    return _type_problem(value, hint)


def _choices(hint: Any, field: dataclasses.Field | None) -> list[str]:
    """The strings a field takes: Literal values, enum values (the libraries convert strings to the enum), or the
    dataclass field's `choices` metadata."""
    out: list[str] = []
    for arg in _union_args(hint):
        if typing.get_origin(arg) is Literal:
            out += [v for v in typing.get_args(arg) if isinstance(v, str)]
        elif isinstance(arg, type) and issubclass(arg, enum.Enum):
            out += [m.value for m in arg if isinstance(m.value, str)]
    if field is not None and field.metadata.get("choices"):
        out += [c for c in field.metadata["choices"] if isinstance(c, str)]
    return out


def _union_args(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _is_choice(value: str, choices: list[str]) -> bool:
    # "pissa_niter_[number of iters]" (PEFT) stands for pissa_niter_16 and the like
    return value in choices or any(
        "[" in c and value.startswith(c.split("[")[0]) and value[len(c.split("[")[0]) :].isdigit() for c in choices
    )


def _not_a_choice(value: str, choices: list[str]) -> str:
    hint = difflib.get_close_matches(value, choices, n=1)
    return f"unknown value {value!r}" + (
        f" (did you mean {hint[0]!r}?)" if hint else f"; use one of {sorted(set(choices))}"
    )


def _type_problem(value: Any, hint: Any) -> str | None:
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(hint)
    except Exception:  # a type pydantic cannot check: the library's construction still does
        return None
    try:  # scalars strictly (the libraries keep "16" a string, and crash on it later); ints pass for floats
        adapter.validate_python(value, strict=not isinstance(value, (list, dict)))
    except ValidationError:
        expected = _type_name(hint)
        unquote = (
            ", unquoted (a quoted number stays a string)" if isinstance(value, str) and looks_numeric(value) else ""
        )
        return f"expected {expected}, got {value!r}; give a value of type {expected}{unquote}"
    return None


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    args = _union_args(hint)
    if len(args) > 1:
        return " | ".join(dict.fromkeys(map(_type_name, args)))
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(hint))
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _range_problems(section: str, values: dict[str, Any], defaults: dict[str, Any], bad: set[str]) -> list[str]:
    """Values out of range (`values` passed the type checks; `bad` did not)."""
    problems = []
    for key, (requirement, example) in RANGES[section].items():
        value = values.get(key)
        if value is not None and not REQUIREMENTS[requirement](value):
            problems.append(f"{section}.{key}: must be {requirement} (got {value!r}); {example}")
    if section == "train" and not bad & {"num_train_epochs", "max_steps"}:
        merged = {**defaults, **values}
        epochs, steps = merged.get("num_train_epochs", 0), merged.get("max_steps", -1)
        if not steps > 0 and not epochs > 0:
            key = "max_steps" if "max_steps" in values and "num_train_epochs" not in values else "num_train_epochs"
            problems.append(
                f"train.{key}: num_train_epochs {epochs!r} with max_steps {steps!r} is zero training steps; "
                "set num_train_epochs > 0 or max_steps >= 1"
            )
    return problems


def _library_error(section: str, values: dict[str, Any], library: str, err: Exception) -> str:
    message = " ".join(str(err).split()).removeprefix(f"{section}: ") or type(err).__name__
    named = [
        k for k in sorted(values, key=len, reverse=True) if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", message)
    ]
    return f"{section}.{named[0] if named else ''}".rstrip(".") + f": {message} ({library} refused it: fix that value)"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The libraries' import and deprecation warnings and fintrl's 'bf16 ignored on CPU' note are not problems."""
    loggers = [logging.getLogger(name) for name in ("fintrl", "bitsandbytes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
