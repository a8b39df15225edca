import pytest
from bitsandbytes.functional import has_avx512bf16

from fintrl.model.loading import (
    CHATML_TEMPLATE,
    DEFAULT_CHAT_TEMPLATE,
    linear_4bit_layers,
    load_model,
    renders_hidden_system_prompt,
    trainable_4bit,
)
from fintrl.recipe.schema import ModelSection


def test_tiny_model_gets_default_template_and_pad(tiny_tokenizer) -> None:
    assert tiny_tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tiny_tokenizer.pad_token == "<unk>" and len(tiny_tokenizer) == 32000
    ids = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "neutral"}],
        tokenize=True,
        return_dict=False,
    )
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id  # exactly one BOS
    assert ids[-1] == tiny_tokenizer.eos_token_id


def test_hidden_system_prompt_detected(tiny_tokenizer) -> None:
    smol_style = (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ '<|im_start|>system\nYou are "
        "SmolLM<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    )
    tiny_tokenizer.chat_template, original = smol_style, tiny_tokenizer.chat_template
    try:
        assert renders_hidden_system_prompt(tiny_tokenizer)
        tiny_tokenizer.chat_template = CHATML_TEMPLATE
        assert not renders_hidden_system_prompt(tiny_tokenizer)
    finally:
        tiny_tokenizer.chat_template = original


NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
AVX512BF16 = pytest.mark.skipif(
    not has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights only on AVX512-BF16 CPUs"
)


def _packed(model) -> list[bool]:  # noqa: ANN001
    return [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear_4bit_layers(model)]


@AVX512BF16
@pytest.mark.parametrize(("compute_dtype", "packs"), [("float32", False), ("bfloat16", True)])
def test_packed_bf16_kernel_only_for_bf16_compute(tiny_model_dir: str, compute_dtype: str, packs: bool) -> None:
    """The packed kernel computes in bf16: an fp32 recipe must score in fp32, as it trained."""
    import torch

    model = load_model(ModelSection(name_or_path="tiny-mistral"), {**NF4, "bnb_4bit_compute_dtype": compute_dtype})
    model.eval()
    with torch.inference_mode():
        model(torch.randint(0, 1000, (1, 8)))
    assert _packed(model) and all(p is packs for p in _packed(model))


def _input_grad(model, ids):  # noqa: ANN001, ANN202
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model.train()
    model(inputs_embeds=embeds).logits.float().square().mean().backward()
    model.zero_grad()
    return embeds.grad


@AVX512BF16
def test_trainable_4bit_keeps_gradients_after_an_eval_forward(tiny_model_dir: str) -> None:
    """bitsandbytes' CPU inference layout has no autograd: without the guard, the gradient after one eval-mode forward
    (a learning-curve point) misses every path through a 4-bit layer."""
    import torch

    model = load_model(ModelSection(name_or_path="tiny-mistral"), {**NF4, "bnb_4bit_compute_dtype": "bfloat16"})
    ids = torch.randint(0, 1000, (2, 12))
    before = _input_grad(model, ids)
    assert before is not None and before.abs().sum() > 0

    model.eval()
    with torch.inference_mode():
        model(ids)
    layers = linear_4bit_layers(model)
    assert any(_packed(model))

    with trainable_4bit(model):
        model.eval()
        with torch.inference_mode():
            model(ids)  # an eval point inside training no longer repacks
        after = _input_grad(model, ids)
    assert after is not None
    torch.testing.assert_close(after, before, rtol=0.05, atol=1e-4)  # absmax round-trips through bf16
    assert all(m.support_avx512bf16_for_cpu for m in layers)  # inference gets the packed kernel back


def test_template_check_limits_cpu_time_not_waiting(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The check's limit is CPU time: a child that only waits (its turn on a busy machine) passes, a loop is stopped."""
    from types import SimpleNamespace

    from fintrl.errors import ModelError
    from fintrl.model import loading

    monkeypatch.setenv("FINTRL_HOME", str(tmp_path))
    monkeypatch.setattr(loading, "TEMPLATE_SECONDS", 1)
    monkeypatch.setattr(loading, "_RENDER", "import time; time.sleep(2)")
    loading.check_template_time(SimpleNamespace(chat_template="{{ 'waits' }}"))
    monkeypatch.setattr(loading, "_RENDER", "while True: pass")
    with pytest.raises(ModelError, match="1 s of CPU time: it loops without end"):
        loading.check_template_time(SimpleNamespace(chat_template="{{ 'loops' }}"))
