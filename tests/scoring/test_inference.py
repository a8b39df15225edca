"""The inference loader: a QLoRA adapter runs dense (merged into its dequantized 4-bit base) only where it answers as
the 4-bit adapter does; the verdict is cached outside the run folder; `--exact-4bit`, prompt-learning adapters and
unquantized bases keep their form; a failed check falls back and says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fintrl.cli.main import main
from fintrl.scoring import inference
from fintrl.scoring.inference import AS_LOADED, DENSE, QUANTIZED, load_inference
from fintrl.scoring.targets import load_for_inference, resolve_target

TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The company cut 200 jobs.", "Sales were flat."]


def checks(home: Path) -> list[Path]:
    return sorted((home / "inference-checks").glob("*.json"))


def scores(target, loaded_model, tokenizer):
    return target.scorer(loaded_model, tokenizer).score(TEXTS, progress=False)


def test_a_qlora_run_runs_dense_and_answers_as_its_4bit_adapter(
    tiny_run: Path, fintrl_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name for p in tiny_run.iterdir()}
    target = resolve_target(str(tiny_run))
    loaded = load_inference(target)
    assert loaded.form.form == DENSE and loaded.form.dtype == "float32"
    check = loaded.form.check
    rows = len((tiny_run / "predictions.jsonl").read_text().splitlines())
    assert check["rows"] == min(rows, inference.CHECK_ROWS) and check["source"].endswith(f"the run's {rows} eval rows")
    assert check["agreement"] >= inference.MIN_AGREEMENT and check["max_abs_dprob"] <= inference.MAX_ABS_DPROB
    assert "inference: dense-merged (float32)" in capsys.readouterr().err
    assert not any("Linear4bit" in type(m).__name__ for m in loaded.model.modules())  # plain dense layers

    model, tokenizer = load_for_inference(target)  # today's path, the reference
    dense, exact = scores(target, loaded.model, loaded.tokenizer), scores(target, model, tokenizer)
    assert dense.predictions == exact.predictions
    assert np.abs(dense.probabilities - exact.probabilities).max() <= inference.MAX_ABS_DPROB

    assert {p.name for p in tiny_run.iterdir()} == before  # nothing written into the run folder
    assert check in [json.loads(p.read_text()) for p in checks(fintrl_home)]  # the verdict, cached outside it

    def no_check(*_args):
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(inference, "_check", no_check)
    again = load_inference(target)
    assert again.form.form == DENSE and "checked before" in again.form.reason
    np.testing.assert_allclose(scores(target, again.model, again.tokenizer).probabilities, dense.probabilities)

    exact_form = load_inference(target, exact_4bit=True).form
    assert exact_form.form == QUANTIZED and "--exact-4bit" in exact_form.reason


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32-only device", "fast-bf16 device"])
def test_a_form_that_disagrees_is_not_used_and_the_reason_is_said(
    tiny_run: Path,
    fintrl_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bf16: bool,
) -> None:
    monkeypatch.setattr(inference, "MAX_ABS_DPROB", -1.0)  # no form can meet it
    monkeypatch.setattr(inference, "CHECK_VERSION", 99)  # a verdict of its own (the key holds the version)
    monkeypatch.setattr(inference, "fast_bf16", lambda: bf16)  # the dtypes tried depend on the CPU; test both
    loaded = load_inference(resolve_target(str(tiny_run)))
    assert loaded.form.form == QUANTIZED
    reason = loaded.form.reason
    assert reason.startswith("the dense merged form did not agree with the 4-bit adapter: ")
    assert ("bfloat16 " in reason) == bf16 and "float32 " in reason  # every dtype tried, with its disagreement
    assert any("Linear4bit" in type(m).__name__ for m in loaded.model.modules())
    assert "inference: 4bit-adapter" in capsys.readouterr().err
    assert load_inference(resolve_target(str(tiny_run))).form.form == QUANTIZED  # the cached "no" is kept too


def test_dense_weights_that_would_not_fit_in_memory_are_not_loaded(
    tiny_run: Path, fintrl_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = resolve_target(str(tiny_run))
    assert load_inference(target).form.form == DENSE  # checked and cached with room to spare
    monkeypatch.setattr(inference, "MEMORY_SHARE", 0.0)
    cached = load_inference(target).form  # the cached "yes" is not enough: memory is looked at on every load
    assert cached.form == QUANTIZED and cached.reason.startswith("the dense form does not fit: it needs 0.")
    monkeypatch.setattr(inference, "CHECK_VERSION", 98)
    fresh = load_inference(target).form
    assert fresh.form == QUANTIZED and "float32: it needs" in fresh.reason and "GiB of RAM are free" in fresh.reason


def test_dense_bytes_count_4bit_weights_by_their_unpacked_shape(tiny_run: Path) -> None:
    from fintrl.model.loading import load_model
    from fintrl.recipe.schema import ModelSection

    target = resolve_target(str(tiny_run))
    quantized, _ = load_for_inference(target)
    plain = load_model(ModelSection(name_or_path="tiny-mistral"), None)
    assert inference.dense_bytes(quantized, "float32") == 4 * sum(p.numel() for p in plain.parameters()) + 4 * sum(
        p.numel() for n, p in quantized.named_parameters() if "lora_" in n
    )
    assert inference.dense_bytes(quantized, "bfloat16") * 2 == inference.dense_bytes(quantized, "float32")


def test_a_cached_verdict_that_is_not_one_is_checked_again(tiny_run: Path, fintrl_home: Path) -> None:
    target = resolve_target(str(tiny_run))
    load_inference(target)
    for path in checks(fintrl_home):
        path.write_text(json.dumps({"version": inference.CHECK_VERSION, "dtype": "float32", "reason": "x"}))
    loaded = load_inference(target)  # a "yes" without its numbers: checked again, never trusted
    assert "checked before" not in loaded.form.reason and loaded.form.check["agreement"] >= inference.MIN_AGREEMENT


def test_unquantized_runs_keep_their_form(trained: dict) -> None:
    loaded = load_inference(resolve_target(str(trained["dir"])))
    assert loaded.form.form == AS_LOADED and loaded.form.reason == "the base is not quantized: it runs as trained"


def test_a_prompt_learning_adapter_keeps_its_path(tmp_path: Path) -> None:
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run
    from tests.helpers import tiny_recipe_dict

    raw = tiny_recipe_dict(tmp_path / "run") | {"peft": {"method": "prompt_tuning", "num_virtual_tokens": 4}}
    raw["train"] |= {"max_steps": 1}
    raw["eval"] |= {"calibration_samples": 0, "baselines": False}
    run(recipe_from_dict(raw))  # 4-bit, as the tiny recipe quantizes
    form = load_inference(resolve_target(str(tmp_path / "run"))).form
    assert form.form == AS_LOADED and "prompt_tuning adapter learns virtual tokens" in form.reason


def test_eval_and_predict_say_which_form_ran(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_run), "--output-dir", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["inference"]["form"] == DENSE
    assert main(["eval", str(tiny_run), "--output-dir", str(out), "--overwrite", "--exact-4bit"]) == 0
    assert json.loads((out / "metrics.json").read_text())["inference"]["form"] == QUANTIZED

    capsys.readouterr()
    assert main(["predict", str(tiny_run), "--text", TEXTS[0]]) == 0
    dense = capsys.readouterr()
    assert main(["predict", str(tiny_run), "--text", TEXTS[0], "--exact-4bit"]) == 0
    exact = capsys.readouterr()
    assert "inference: dense-merged" in dense.err and "inference: 4bit-adapter" in exact.err
    one, other = json.loads(dense.out), json.loads(exact.out)
    assert one["label"] == other["label"]
    assert max(abs(one["probabilities"][k] - other["probabilities"][k]) for k in one["probabilities"]) <= 1e-3
