"""PEFT methods: the recipe's `peft:` section -> a PEFT config, and what each method means for the rest of fintrl.

A recipe picks its method with `peft: {method: NAME, ...fields}`; without a `peft:` section it is LoRA with the `lora:`
fields (null: full fine-tuning), as before. NAME is one of `METHODS` (lora, dora, rslora, ia3, prompt_tuning,
prefix_tuning), a PEFT config class name (`LoHaConfig`) or a PEFT type (`loha`, `adalora`). The LoRA family (lora, dora,
rslora, LoraConfig) starts from the `lora:` fields, so `--set peft.method=dora` turns the quickstart into DoRA; every
other method takes its fields from `peft:` only. fintrl fills `task_type` (CAUSAL_LM).

Downstream, two facts decide what works (`prompt_learning`, `quantization_problem`):
- weight methods (LoRA, DoRA, IA3, LoHa, ...) change only weights: the shared-prefix fast paths (training loss and
  scorer) stay exact as they are;
- prompt learning (prompt tuning, p-tuning, prefix tuning) prepends virtual tokens (embeddings, or keys and values)
  before every sequence, shifting the positions of the real tokens: both fast paths start from `virtual_cache`, the
  virtual tokens run once as a one-row KV cache, which is what PEFT's own forward computes for them.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import RecipeError

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig
    from transformers import DynamicCache

    from fintrl.recipe.schema import Recipe

# fintrl's method names -> (PEFT config class, fields the name sets: the recipe's own `peft:` fields go on top)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {}),
    "dora": ("LoraConfig", {"use_dora": True}),
    "rslora": ("LoraConfig", {"use_rslora": True}),
    "ia3": ("IA3Config", {}),
    "prompt_tuning": ("PromptTuningConfig", {"num_virtual_tokens": 20}),
    "prefix_tuning": ("PrefixTuningConfig", {"num_virtual_tokens": 20}),
}
# Prompt-learning types whose virtual tokens `virtual_cache` reproduces exactly (the others need task ids or a loss
# of their own: multitask prompt tuning, CPT, cartridges).
PROMPT_TYPES = {"PROMPT_TUNING": "embeddings", "P_TUNING": "embeddings", "PREFIX_TUNING": "cache"}


def method_name(recipe: Recipe) -> str | None:
    """The recipe's method as written (`lora` without a `peft:` section), or None for full fine-tuning."""
    if recipe.peft is not None:
        return str(recipe.peft["method"])
    return "lora" if recipe.lora is not None else None


def _config_classes() -> dict[str, type[PeftConfig]]:
    """Every PEFT config class by its name (LoraConfig, LoHaConfig, ...)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {cls.__name__: cls for cls in PEFT_TYPE_TO_CONFIG_MAPPING.values()}


def resolve_method(method: str) -> tuple[type[PeftConfig], dict[str, Any]]:
    """(config class, fields the name sets) for a method name, class name or PEFT type; a did-you-mean otherwise."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    classes = _config_classes()
    if method in METHODS:
        name, preset = METHODS[method]
        return classes[name], dict(preset)
    if method in classes:
        return classes[method], {}
    by_type = {str(getattr(t, "value", t)).lower(): cls for t, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if method.lower() in by_type:
        return by_type[method.lower()], {}
    known = [*METHODS, *classes, *by_type]
    hint = difflib.get_close_matches(method, known, n=1) or difflib.get_close_matches(method.lower(), known, n=1)
    raise RecipeError(
        f"peft.method: unknown method {method!r}"
        + (f" (did you mean `{hint[0]}`?)" if hint else "")
        + f"; use one of {', '.join(METHODS)}, or a PEFT config class name (e.g. LoHaConfig, AdaLoraConfig)"
    )


def is_lora_family(cls: type) -> bool:
    return cls.__name__ == "LoraConfig"


def config_fields(recipe: Recipe) -> tuple[type[PeftConfig], dict[str, Any]] | None:
    """The config class and the fields fintrl passes it (task_type aside), or None for full fine-tuning."""
    method = method_name(recipe)
    if method is None:
        return None
    cls, preset = resolve_method(method)
    own = {k: v for k, v in (recipe.peft or {}).items() if k != "method"}
    base = dict(recipe.lora or {}) if is_lora_family(cls) else {}
    return cls, {**base, **preset, **own}


def peft_config(recipe: Recipe) -> PeftConfig | None:
    """The PEFT config a run trains with (CAUSAL_LM), or None for full fine-tuning."""
    resolved = config_fields(recipe)
    if resolved is None:
        return None
    cls, fields = resolved
    return cls(task_type="CAUSAL_LM", **fields)


def is_prompt_learning(cls_or_config: Any) -> bool:
    """Prompt tuning, p-tuning, prefix tuning...: virtual tokens before every sequence (positions shift)."""
    from peft import PromptLearningConfig

    target = cls_or_config if isinstance(cls_or_config, type) else type(cls_or_config)
    return issubclass(target, PromptLearningConfig)


def _peft_type(cls: type[PeftConfig]) -> str:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    found = next((t for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if c is cls), "")
    return str(getattr(found, "value", found))


def method_problem(cls: type[PeftConfig]) -> str | None:
    """Why fintrl cannot train or score with this method, or None."""
    if is_prompt_learning(cls) and _peft_type(cls) not in PROMPT_TYPES:
        return (
            f"{cls.__name__} needs task ids or a loss of its own, which fintrl's trainer and scorer do not pass; "
            "use prompt_tuning, prefix_tuning or PromptEncoderConfig (p-tuning)"
        )
    return None


def quantization_problem(cls: type[PeftConfig], quantization: dict[str, Any] | None) -> str | None:
    """Why this method cannot train on a bitsandbytes-quantized base, or None.

    Prompt learning never touches the base weights, so any base works. A weight method needs PEFT layers for
    bitsandbytes' `Linear4bit` / `Linear8bitLt` (its tuner package's `bnb.py`, read rather than imported: PEFT only
    defines those classes when bitsandbytes imports). Without them PEFT treats `Linear4bit` as a plain `nn.Linear`:
    LoHa, LoKr, HRA and DeLoRA then fail on the packed weight (measured, PEFT 0.21); others may run, unchecked by PEFT.
    """
    if not quantization or is_prompt_learning(cls):
        return None
    layer = "Linear8bitLt" if quantization.get("load_in_8bit") else "Linear4bit"
    spec = importlib.util.find_spec(cls.__module__.rpartition(".")[0] + ".bnb")
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    if f"class {layer}" in source:
        return None
    bits = "8-bit" if layer == "Linear8bitLt" else "4-bit"
    return (
        f"PEFT has no {cls.__name__.removesuffix('Config')} layer for bitsandbytes {bits} weights ({layer}): it would "
        "read the packed weights as ordinary ones (LoHa, LoKr, HRA and DeLoRA fail so); set quantization: null, or "
        "use lora, dora, rslora, ia3, prompt_tuning or prefix_tuning"
    )


def virtual_tokens(model: Any) -> str | None:
    """How a model's active adapter feeds virtual tokens ("embeddings" or "cache"), or None (no prompt learning)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return None
    return PROMPT_TYPES.get(str(getattr(config.peft_type, "value", config.peft_type)), "unsupported")


def virtual_cache(model: Any, module: torch.nn.Module | None = None) -> DynamicCache | None:
    """The virtual tokens of a prompt-learning PeftModel as a one-row KV cache, or None for any other model.

    This is what PEFT's own forward puts before each sequence: prefix tuning's learned keys and values
    (`get_prompt`), or prompt tuning's embeddings run through the base model at positions 0..n-1. Continuing from
    it through the *base* model (real tokens at positions n, n+1, ...; the mask counting the n virtual tokens) gives
    PEFT's forward exactly, and lets a shared prompt prefix and label continuations reuse the cache. `module` runs the
    embeddings (the base model's backbone or the whole causal LM; default: the causal LM). Gradients flow back to the
    prompt encoder when grad is enabled.
    """
    kind = virtual_tokens(model)
    if kind is None:
        return None
    from transformers import DynamicCache

    if kind == "unsupported":
        raise RecipeError(f"fintrl cannot score or train {type(model.active_peft_config).__name__} adapters")
    base = model.get_base_model()
    if kind == "cache":
        config = model.active_peft_config
        return model.get_prompt(batch_size=1, max_cache_len=config.num_virtual_tokens)
    prompts = model.get_prompt(batch_size=1).to(base.get_input_embeddings().weight.dtype)
    cache = DynamicCache(config=base.config)
    kwargs = {} if module is not None else {"logits_to_keep": 1}
    (module or base)(inputs_embeds=prompts, cache=cache, use_cache=True, **kwargs)
    return cache


def describe(recipe: Recipe) -> str:
    """The method in words, for cards and logs: `LoRA (r 16)`, `prefix tuning (20 virtual tokens)`..."""
    resolved = config_fields(recipe)
    if resolved is None:
        return "full fine-tuning"
    cls, fields = resolved
    method = method_name(recipe) or ""
    names = {"lora": "LoRA", "dora": "DoRA", "rslora": "rsLoRA", "ia3": "IA3"}
    name = names.get(method, method.replace("_", " ") if method in METHODS else cls.__name__.removesuffix("Config"))
    if is_lora_family(cls):
        if method == "lora" and fields.get("use_dora"):
            name = "DoRA"
        detail = f"r {fields.get('r', cls().r)}"
    elif is_prompt_learning(cls):
        detail = f"{fields.get('num_virtual_tokens', cls().num_virtual_tokens)} virtual tokens"
    else:
        detail = ""
    return f"{name} ({detail})" if detail else name


def method_problems(recipe: Recipe) -> tuple[list[str], type[PeftConfig] | None]:
    """`fintrl validate`'s view of `peft.method`: (problems, the config class when the name resolves)."""
    if recipe.peft is None:
        return [], None
    try:
        cls, _ = resolve_method(str(recipe.peft["method"]))
    except RecipeError as err:
        return [str(err)], None
    found = (method_problem(cls), quantization_problem(cls, recipe.quantization))
    return [f"peft.method: {problem}" for problem in found if problem], cls


def card_method(recipe: Recipe) -> dict[str, Any]:
    """What a model card says about the method: its name, details, PEFT class, trainable parameters, Hub tags."""
    resolved = config_fields(recipe)
    if resolved is None:
        return {
            "method": "full fine-tuning",
            "method_name": "fully fine-tuned",
            "method_class": "-",
            "prompt_learning": False,
            "trainable_what": "every weight",
            "tags": [],
        }
    cls, fields = resolved
    full = describe(recipe)
    name = full.split(" (")[0]
    kind = {"PREFIX_TUNING": "the prefix's keys and values"}.get(_peft_type(cls), "the virtual tokens' embeddings")
    what = "the LoRA matrices" if is_lora_family(cls) else kind if is_prompt_learning(cls) else "the adapter's weights"
    if name == "DoRA":
        what += " and magnitude vectors"
    tag = name.lower().replace(" ", "-")
    return {
        "method": full,
        "method_name": name,
        "method_class": cls.__name__,
        "prompt_learning": is_prompt_learning(cls),
        "trainable_what": what,
        "tags": ["lora", *([tag] if tag != "lora" else [])] if is_lora_family(cls) else [tag, "peft"],
    }
