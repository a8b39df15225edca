"""The loop end to end on the tiny model: completion-only loss, QLoRA training on CPU, run folder, resume."""

import json
from pathlib import Path

import pytest

from fintrl.data.loading import load_labeled_data
from fintrl.errors import RunFolderError
from fintrl.model.loading import load_model, load_tokenizer
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import recipe_from_dict
from fintrl.runner import run
from fintrl.train import build_trainer, sft_config
from tests.helpers import tiny_recipe_dict


def test_loss_falls_on_the_answer_only(tmp_path: Path, tiny_model_dir: str) -> None:
    recipe = recipe_from_dict(tiny_recipe_dict(tmp_path / "run"))
    data = load_labeled_data(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    trainer = build_trainer(
        recipe,
        load_model(recipe.model, recipe.quantization),
        tokenizer,
        builder,
        data.train.select(range(4)),
        tmp_path / "run",
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for row in range(4):
        kept = batch["labels"][row][batch["labels"][row] != -100].tolist()
        answer = builder.answers[data.train[row]["label"]]
        assert kept == tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    # 4-bit base, trainable LoRA adapters only (kept in fp32 on CPU)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in trainable)
    assert type(trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"


@pytest.mark.parametrize(
    ("train", "expected"),
    [({}, False), ({"gradient_checkpointing": True}, True), ({"activation_checkpointing": True}, True)],
)
def test_checkpointing_setting_survives_the_transformers_5_rename(tmp_path: Path, train: dict, expected: bool) -> None:
    """transformers 5 ignores the old `gradient_checkpointing` once `activation_checkpointing` (our default) is set."""
    import warnings

    recipe = recipe_from_dict({**tiny_recipe_dict(tmp_path), "train": train})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = sft_config(recipe, tmp_path)
    assert args.activation_checkpointing is expected
    assert args.gradient_checkpointing is expected


def test_run_folder_contents(tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = run(recipe_from_dict(tiny_recipe_dict(out)))
    card = (out / "README.md").read_text()
    assert "\n# run\n" in card and "incomplete" not in card  # rendered in the work folder, named as the run
    assert (out / "metrics.json").stat().st_mode & 0o044  # readable like every other file of the run
    for name in (
        "recipe.yaml",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "chat_template.jinja",
        "metrics.json",
        "predictions.jsonl",
        "README.md",
        "train_log.jsonl",
        "confusion_matrix.png",
        "reliability.png",
        "training_loss.png",
        "calibration.json",
        "coverage.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "per_class", "n"} <= set(saved)
    assert {"intervals", "calibration", "coverage", "nll", "brier", "ece"} <= set(saved)
    assert all(
        saved["intervals"][k][0] <= saved[k] <= saved["intervals"][k][1] for k in ("accuracy", "f1_macro", "mcc")
    )
    assert saved["n"] == 12 and saved["invalid_rate"] == 0 and saved["accuracy"] == metrics["accuracy"]
    assert saved["data"]["n_train"] == 21  # 3 of the 24 rows held out of training to fit the calibration
    assert set(saved["baselines"]) == {"majority", "tfidf_logreg"}
    assert set(saved["timings"]) == {"data", "load_model", "train", "calibrate", "eval"}
    assert "learning_curve" not in saved  # off unless eval.curve_points asks for it
    assert saved["train_args"]["train_sampling_strategy"] == "group_by_length" and saved["train_args"]["use_cpu"]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and all(p["prediction"] in ("negative", "neutral", "positive") for p in predictions)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        run(recipe_from_dict(tiny_recipe_dict(out)))


def test_resume_continues_from_checkpoint_with_its_learning_curve(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = tiny_recipe_dict(out)
    first["train"] |= {"max_steps": 3}
    first["eval"] |= {"curve_points": 3}
    run(recipe_from_dict(first))
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    second = tiny_recipe_dict(out)
    second["train"] |= {"max_steps": 6}
    second["eval"] |= {"curve_points": 2}
    metrics = run(recipe_from_dict(second), resume=True)
    assert metrics["train"]["resumed_from"].endswith("checkpoint-3")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert max(entry["step"] for entry in log) == 6
    # before training and after steps 1, 2, 3; the resumed run adds step 6 (3 was due but already scored)
    curve = metrics["learning_curve"]
    assert [p["step"] for p in curve] == [p["step"] for p in log if "curve_accuracy" in p] == [0, 1, 2, 3, 6]
    # the last point scored the final model on every eval row (12 < curve_samples), as the final evaluation did; a
    # random model's near-ties may flip one row between bitsandbytes' CPU training and inference paths
    assert curve[-1]["curve_samples"] == metrics["n"] == 12
    assert abs(curve[-1]["curve_accuracy"] - metrics["accuracy"]) <= 1 / 12 + 1e-4
    assert 0 < metrics["train"]["learning_curve_seconds"] < metrics["train"]["train_runtime"]


def test_cli_run_with_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fintrl.cli.main import main

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "tiny_test.yaml"
    code = main(
        [
            "run",
            str(recipe),
            "--output-dir",
            str(tmp_path / "cli"),
            "--set",
            "data.max_train_samples=16",
            "--set",
            "data.max_eval_samples=8",
            "--set",
            "train.max_steps=2",
            "--set",
            "eval.baselines=false",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out  # the Trainer also prints its log dicts
    summary = json.loads(out[out.index('{\n  "output_dir"') :])
    assert summary["output_dir"] == str(tmp_path / "cli") and 0 <= summary["accuracy"] <= 1
    assert (tmp_path / "cli" / "metrics.json").is_file()


def test_prefix_sharing_loss_and_gradients_match_trl(tmp_path: Path, tiny_model_dir: str) -> None:
    """fintrl's fast loss (shared prefix run once, LM head only on answers) == TRL's completion-only loss, and each
    example's loss is its own: no attention across rows through the shared cache."""
    import torch
    from trl import SFTTrainer

    from fintrl.train import shared_prefix_length

    recipe = recipe_from_dict(tiny_recipe_dict(tmp_path / "run", max_train_samples=8) | {"quantization": None})
    data = load_labeled_data(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    trainer = build_trainer(recipe, load_model(recipe.model, None), tokenizer, builder, data.train, tmp_path / "run")
    trainer.model.eval()  # no LoRA dropout: both paths must be deterministic
    for layer in trainer.model.modules():  # make the adapters non-trivial so gradients reach every layer
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    assert shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"]) > 10

    def loss_and_grads(loss_fn, inputs) -> tuple[float, list]:
        trainer.model.zero_grad()
        loss = loss_fn(trainer.model, inputs, num_items_in_batch=None)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    ours, our_grads = loss_and_grads(trainer.compute_loss, batch)
    theirs, their_grads = loss_and_grads(lambda *a, **k: SFTTrainer.compute_loss(trainer, *a, **k), batch)
    assert ours == pytest.approx(theirs, rel=1e-5)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # per example: the batched sum equals the examples scored one by one
    singles = [trainer.data_collator([trainer.train_dataset[i]]) for i in range(6)]
    counts = [(s["labels"] != -100).sum().item() for s in singles]
    with torch.no_grad():
        total = sum(trainer.compute_loss(trainer.model, s, num_items_in_batch=1).item() for s in singles)
        batched = trainer.compute_loss(trainer.model, batch, num_items_in_batch=1).item()
    assert batched == pytest.approx(total, rel=1e-5) and sum(counts) > 0


def test_label_softmax_objective_trains_a_run(tmp_path: Path) -> None:
    """`train.objective: label_softmax` end to end: the run trains on the label loss, logs the label accuracy the
    scorer would get, and says so in its report."""
    raw = tiny_recipe_dict(tmp_path / "run")
    raw["train"] |= {"objective": "label_softmax", "max_steps": 2}
    metrics = run(recipe_from_dict(raw))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("label_accuracy" in entry for entry in log) and not any("mean_token_accuracy" in e for e in log)
    assert metrics["train_args"]["objective"] == "label_softmax"
    assert "objective" in (tmp_path / "run" / "README.md").read_text()
