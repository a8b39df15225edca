from fintrl.models import CHATML_TEMPLATE, DEFAULT_CHAT_TEMPLATE, renders_hidden_system_prompt


def test_tiny_model_gets_default_template_and_pad(tiny_tokenizer) -> None:
    assert tiny_tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tiny_tokenizer.pad_token == "<unk>" and len(tiny_tokenizer) == 32000
    ids = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "neutral"}],
                                             tokenize=True, return_dict=False)
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id  # exactly one BOS
    assert ids[-1] == tiny_tokenizer.eos_token_id


def test_hidden_system_prompt_detected(tiny_tokenizer) -> None:
    smol_style = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ '<|im_start|>system\nYou are "
                  "SmolLM<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}")
    tiny_tokenizer.chat_template, original = smol_style, tiny_tokenizer.chat_template
    try:
        assert renders_hidden_system_prompt(tiny_tokenizer)
        tiny_tokenizer.chat_template = CHATML_TEMPLATE
        assert not renders_hidden_system_prompt(tiny_tokenizer)
    finally:
        tiny_tokenizer.chat_template = original
