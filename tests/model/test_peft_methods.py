"""Every PEFT method a recipe can pick trains, scores exactly, reloads and carries a card.

Prompt and prefix tuning put virtual tokens before every sequence: the shared-prefix fast paths (training loss, scorer)
start from them (`fintrl.model.peft_methods.virtual_cache`); these tests compare both with PEFT's own forward (TRL's
loss;
a full-sequence forward per text and label), for every method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fintrl.checks.library_fields import library_problems
from fintrl.errors import RecipeError
from fintrl.model.loading import load_model, load_tokenizer
from fintrl.model.peft_methods import config_fields, method_name, peft_config, virtual_tokens
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import ModelSection, PromptSection, dump_recipe, load_recipe, recipe_from_dict
from fintrl.run_folder import CARD, PREDICTIONS, RECIPE
from fintrl.scoring.scorer import LabelScorer
from fintrl.transaction import recipe_differences
from tests.helpers import python_blocks, tiny_recipe_dict

# Each method with fields that suit the tiny model (few virtual tokens keep it fast).
METHODS = {
    "lora": {},
    "dora": {},
    "rslora": {},
    "ia3": {},
    "prompt_tuning": {"num_virtual_tokens": 4},
    "prefix_tuning": {"num_virtual_tokens": 4},
    "LoHaConfig": {"r": 4, "alpha": 8, "target_modules": "all-linear"},  # any PEFT config class by its name
}
TEXTS = ["Fed raises rates by 25bp", "Shares of XYZ jump 10% after earnings", "Dividend cut by half", "CEO resigns"]
BRANCHING = ["Stock Commentary", "Stock Movement", "Stock", "IPO", "Fed | Central Banks"]  # branches below the root


def method_dict(out: Path, method: str, **fields: object) -> dict:
    raw = tiny_recipe_dict(out) | {
        "quantization": None,
        "peft": {"method": method, **METHODS.get(method, {}), **fields},
    }
    raw["eval"] |= {"calibration_samples": 0, "baselines": False}
    raw["train"] |= {"max_steps": 2}
    return raw


def problems(raw: dict) -> str:
    return "; ".join(library_problems(recipe_from_dict(raw)))


def perturbed_peft_model(recipe):
    """The tiny base with the recipe's adapter, every trainable weight nudged so that the adapter matters."""
    from peft import get_peft_model

    model = get_peft_model(load_model(ModelSection(name_or_path="tiny-mistral"), None), peft_config(recipe))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# --- the recipe ------------------------------------------------------------------------------------------------------


def test_recipe_shape_round_trips_and_overrides(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recipe = recipe_from_dict(method_dict(tmp_path / "r", "prefix_tuning"))
    assert recipe.lora is None and method_name(recipe) == "prefix_tuning"  # `lora:` is LoRA's alone
    dump_recipe(recipe, tmp_path / "recipe.yaml")
    assert load_recipe(tmp_path / "recipe.yaml") == recipe
    again = load_recipe(tmp_path / "recipe.yaml", overrides=["peft.num_virtual_tokens=8"])
    assert recipe_differences(recipe, again) == ["peft.num_virtual_tokens: 4 -> 8"]  # resume refuses it

    plain = load_recipe("recipes/quickstart.yaml")
    assert plain.peft is None and method_name(plain) == "lora"
    dump_recipe(plain, tmp_path / "plain.yaml")
    assert "peft" not in (tmp_path / "plain.yaml").read_text()  # recipes from before `peft:` dump as they did
    dora = load_recipe(tmp_path / "plain.yaml", overrides=["peft.method=dora"])
    cls, fields = config_fields(dora)
    assert cls.__name__ == "LoraConfig" and fields["use_dora"] and fields["r"] == 16  # the LoRA family keeps `lora:`
    with caplog.at_level(logging.WARNING, logger="fintrl.recipe.schema"):
        ia3 = load_recipe("recipes/quickstart.yaml", overrides=["peft.method=ia3"])
    assert ia3.lora is None and "lora: not used by peft.method ia3" in caplog.text  # said, not silently dropped
    assert method_name(recipe_from_dict({**method_dict(tmp_path, "lora"), "peft": None, "lora": None})) is None

    with pytest.raises(RecipeError, match="peft: .*needs `method:`"):
        recipe_from_dict({**method_dict(tmp_path, "lora"), "peft": {"r": 4}})
    recipe_from_dict(method_dict(tmp_path, "ia3") | {"quantization": {"load_in_4bit": True}})  # not full fine-tuning


def test_validate_checks_methods_against_peft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fintrl.cli.main import main

    assert main(["validate", "recipes/quickstart_prefix_tuning.yaml"]) == 0
    assert main(["validate", "recipes/quickstart.yaml", "--set", "peft.method=prefx_tuning"]) == 2
    assert "peft.method: unknown method 'prefx_tuning' (did you mean `prefix_tuning`?)" in capsys.readouterr().err
    out = tmp_path / "r"
    assert problems(method_dict(out, "prefx_tuning")).startswith(
        "peft.method: unknown method 'prefx_tuning' (did you mean `prefix_tuning`?)"
    )
    assert "peft.num_virtual_token: unknown field (did you mean `num_virtual_tokens`?)" in problems(
        method_dict(out, "prompt_tuning", num_virtual_token=8)
    )
    assert "peft.num_virtual_tokens: must be >= 1 (got 0)" in problems(
        method_dict(out, "prefix_tuning", num_virtual_tokens=0)
    )
    assert "peft.task_type: fintrl sets it (CAUSAL_LM); remove it" in problems(
        method_dict(out, "ia3", task_type="SEQ_CLS")
    )
    assert "peft.r: expected int" in problems(method_dict(out, "LoHaConfig", r="4"))
    assert "peft.use_dora: expected bool" in problems(method_dict(out, "dora", use_dora="yes"))
    assert "MultitaskPromptTuningConfig needs task ids" in problems(method_dict(out, "MultitaskPromptTuningConfig"))
    for method in METHODS:  # every method builds
        assert problems(method_dict(out, method)) == "", method
    assert problems(method_dict(out, "loha")) == ""  # a PEFT type names its class too

    quantized = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    refused = problems(method_dict(out, "LoHaConfig") | {"quantization": quantized})
    assert refused.startswith("peft.method: PEFT has no LoHa layer for bitsandbytes 4-bit weights (Linear4bit)"), (
        refused
    )
    for method in ("lora", "dora", "rslora", "ia3", "prompt_tuning", "prefix_tuning"):
        assert problems(method_dict(out, method) | {"quantization": quantized}) == "", method


def test_qlora_where_peft_supports_it(tmp_path: Path) -> None:
    """The refusal is PEFT's own answer: LoHa cannot wrap a 4-bit layer; IA3 and prefix tuning train on one."""
    from peft import get_peft_model

    def quantized():
        return load_model(
            ModelSection(name_or_path="tiny-mistral"), {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
        )

    with pytest.raises(RuntimeError, match="shape"):  # LoHa multiplies the packed 4-bit weight as if it were one
        loha = get_peft_model(quantized(), peft_config(recipe_from_dict(method_dict(tmp_path, "LoHaConfig"))))
        loha(input_ids=torch.tensor([[1, 100, 200]]))
    for method in ("ia3", "prefix_tuning"):
        model = get_peft_model(quantized(), peft_config(recipe_from_dict(method_dict(tmp_path, method))))
        ids = torch.tensor([[1, 100, 200, 300]])
        model(input_ids=ids, labels=ids).loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


# --- exactness: the training loss and the scorer against PEFT's own forward ---------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_fast_loss_and_gradients_match_trl(tmp_path: Path, method: str) -> None:
    from trl import SFTTrainer

    from fintrl.data.loading import load_labeled_data
    from fintrl.train import build_trainer, shared_prefix_length

    recipe = recipe_from_dict(
        method_dict(tmp_path / "run", method) | {"data": {"preset": "quickstart", "max_train_samples": 8}}
    )
    data = load_labeled_data(recipe.data)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    model = load_model(recipe.model, None)
    trainer = build_trainer(recipe, model, load_tokenizer(recipe.model), builder, data.train, tmp_path / "run")
    trainer.model.eval()  # no dropout: both paths deterministic
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"]) > 10

    def loss_and_grads(loss_fn) -> tuple[float, list]:
        trainer.model.zero_grad()
        loss = loss_fn(trainer.model, batch, num_items_in_batch=None)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    ours, our_grads = loss_and_grads(trainer.compute_loss)
    theirs, their_grads = loss_and_grads(lambda *a, **k: SFTTrainer.compute_loss(trainer, *a, **k))
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert our_grads and all(g.abs().sum() > 0 for g in our_grads)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _full_forward_logp(model, scorer: LabelScorer, texts: list[str]) -> list[dict[tuple[int, ...], torch.Tensor]]:
    """Per text: trie node -> next-token log-probs, from one full-sequence PeftModel forward per text and label
    (no cache, no batching, no shared prefix: PEFT adds the virtual tokens itself)."""
    encoded, _ = scorer.encode(texts)
    out = []
    with torch.no_grad():
        for prompt in encoded:
            nodes: dict[tuple[int, ...], torch.Tensor] = {}
            for label in scorer.label_ids:
                full = prompt + label
                logits = model(input_ids=torch.tensor([full])).logits[0, -len(full) :]  # drop virtual positions
                logp = torch.log_softmax(logits.float(), -1)
                for k in range(len(label)):
                    nodes[tuple(label[:k])] = logp[len(prompt) - 1 + k]
            out.append(nodes)
    return out


def _reference(scorer: LabelScorer, nodes: dict[tuple[int, ...], torch.Tensor], mode: str) -> np.ndarray:
    scores = []
    for label in scorer.label_ids:
        if mode == "loglik":
            scores.append(sum(nodes[tuple(label[:k])][t].item() for k, t in enumerate(label)))
        elif mode == "first_token":
            scores.append(nodes[()][label[0]].item())
        else:  # trie: each branching step renormalised over the trie's children
            total = 0.0
            for k, t in enumerate(label):
                kids = scorer._children[tuple(label[:k])]
                if len(kids) > 1:
                    logp = nodes[tuple(label[:k])]
                    total += (logp[t] - torch.logsumexp(logp[kids], -1)).item()
            scores.append(total)
    p = np.exp(np.array(scores) - max(scores))
    return p / p.sum()


@pytest.mark.parametrize("method", METHODS)
def test_scorer_matches_full_forward_for_every_mode(tmp_path: Path, method: str, tiny_tokenizer) -> None:
    recipe = recipe_from_dict(method_dict(tmp_path, method))
    model = perturbed_peft_model(recipe)
    assert bool(virtual_tokens(model)) == (method in ("prompt_tuning", "prefix_tuning"))
    for labels, modes in ((BRANCHING, ("loglik", "trie")), (["negative", "neutral", "positive"], ("first_token",))):
        builder = PromptBuilder.resolve(PromptSection(task="topic"), labels)
        for mode in modes:
            scorer = LabelScorer(model, tiny_tokenizer, builder, mode=mode, batch_size=3)
            result = scorer.score(TEXTS, progress=False)
            reference = np.stack(
                [_reference(scorer, nodes, mode) for nodes in _full_forward_logp(model, scorer, TEXTS)]
            )
            np.testing.assert_allclose(result.probabilities, reference, atol=2e-5, err_msg=f"{method} {mode}")
            if mode != "trie":  # trie predicts its greedy path, which need not be the likeliest label
                assert result.predictions == reference.argmax(1).tolist()
            # as a server scores: one text a call, the template's prefix run once and kept (`keep_prefix`)
            kept = LabelScorer(model, tiny_tokenizer, builder, mode=mode, keep_prefix=True)
            alone = np.concatenate([kept.score([text], progress=False).probabilities for text in TEXTS])
            np.testing.assert_allclose(alone, reference, atol=2e-5, err_msg=f"{method} {mode} kept prefix")
            assert len(kept._kept[0]) > 10  # the template's prefix was kept, not skipped


# --- a run per method: trains, scores, reloads identically, and its card says what it is --------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_run_reload_and_card(tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    from fintrl.runner import run
    from fintrl.scoring.targets import load_for_inference, resolve_target

    out = tmp_path / "run"
    report = run(recipe_from_dict(method_dict(out, method)))
    rows = [json.loads(line) for line in (out / PREDICTIONS).read_text().splitlines()]
    target = resolve_target(str(out))
    model, tokenizer = load_for_inference(target)
    assert type(model.active_peft_config).__name__ == config_fields(target.recipe)[0].__name__
    builder = target.prompt_builder()
    again = LabelScorer(model, tokenizer, builder, mode=report["scoring"]["mode"]).score([r["text"] for r in rows])
    saved = np.array([[r["probabilities"][label] for label in target.labels] for r in rows])
    np.testing.assert_allclose(again.probabilities, saved, atol=2e-6)  # predictions.jsonl keeps 6 decimals

    card = (out / CARD).read_text()
    trainable = report["train"]["trainable_parameters"]
    assert 0 < trainable and f"Trainable parameters: {trainable:,} (" in card
    assert f"(PEFT `{config_fields(target.recipe)[0].__name__}`)" in card
    assert "peft:" in card and f"method: {method}" in (out / RECIPE).read_text()
    if method in ("prompt_tuning", "prefix_tuning"):  # transformers' pipeline cannot inject it: PEFT loads it
        assert "AutoPeftModelForCausalLM" in python_blocks(card)[0] and "cannot apply it" in card
    run_snippet(python_blocks(card)[0], out)  # the card's first snippet loads this adapter and generates
    if method in ("prompt_tuning", "prefix_tuning"):  # nothing to merge: export says so before loading anything
        from fintrl.cli.main import main

        capsys.readouterr()
        assert main(["export", str(out), "--merged", str(tmp_path / "merged")]) == 4
        assert "cannot be merged into the base" in capsys.readouterr().err
        assert not (tmp_path / "merged").exists()


def run_snippet(snippet: str, run_dir: Path) -> None:
    """Run a card snippet against the run folder instead of its Hub repo (the base is the local tiny model)."""
    snippet = snippet.replace(f"your-org/{run_dir.name}", str(run_dir))
    assert str(run_dir) in snippet
    namespace: dict = {}
    exec(compile(snippet.replace("print(answer)", "result = answer"), "card", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["result"], str)


@pytest.mark.slow
def test_publish_and_predict_a_prompt_tuning_adapter(tmp_path: Path, local_hub, tiny_model_dir, capsys) -> None:
    """README -> recipe -> run -> publish -> `fintrl predict org/name@v1.0.0`: the Hub copy scores as the run did."""
    from fintrl.cli.main import main
    from fintrl.hub import publish as hub
    from fintrl.runner import run
    from tests.helpers import BASE_REPO, REPO, upload_tiny_base

    upload_tiny_base(tiny_model_dir)
    out = tmp_path / "run"
    run(recipe_from_dict(method_dict(out, "prompt_tuning") | {"publish": {"base_model": BASE_REPO}}))
    text = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
    capsys.readouterr()  # the Trainer prints its log dicts
    assert main(["predict", str(out), "--text", text]) == 0
    local = json.loads(capsys.readouterr().out)
    assert hub.publish(out, REPO).version == "v1.0.0"
    assert main(["predict", f"{REPO}@v1.0.0", "--text", text]) == 0
    published = json.loads(capsys.readouterr().out)
    assert published["probabilities"] == pytest.approx(local["probabilities"], abs=1e-5)
    card = (out / CARD).read_text()
    assert f'AutoPeftModelForCausalLM.from_pretrained("{REPO}", revision="v1.0.0")' in card
