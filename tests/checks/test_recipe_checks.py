"""`fintrl validate` means it: whatever needs no weights and no network is checked, and each problem comes back on
the one error line (exit code 2) with its key path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fintrl.cli.main import main

BASE = {"model": {"name_or_path": "tiny-mistral"}, "data": {"preset": "quickstart"}}
NOWHERE = "/nonexistent/fintrl-data"


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: dict | str, *flags: str) -> tuple[int, str]:
    """Exit code and what the command printed (stderr on failure, stdout on success); either is exactly one line."""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    code = main(["validate", str(path), *flags])
    captured = capsys.readouterr()
    printed = captured.err if code else captured.out
    assert printed.count("\n") == 1 and printed.endswith("\n"), printed
    return code, printed


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        # unknown library fields keep their did-you-mean
        ({"train": {"learnig_rate": 1e-4}}, "train.learnig_rate: unknown field (did you mean `learning_rate`?)"),
        ({"lora": {"lora_alpah": 8}}, "lora.lora_alpah: unknown field (did you mean `lora_alpha`?)"),
        (
            {"quantization": {"load_in_4bitt": True}},
            "quantization.load_in_4bitt: unknown field (did you mean `load_in_4bit`?)",
        ),
        # types against the library fields' types (a quoted number stays a string for the libraries)
        ({"lora": {"r": "abc"}}, "lora.r: expected int, got 'abc'"),
        (
            {"train": {"learning_rate": "0.001"}},
            "train.learning_rate: expected float, got '0.001'; give a value of type float, unquoted",
        ),
        ({"train": {"per_device_train_batch_size": True}}, "train.per_device_train_batch_size: expected int, got True"),
        # choices (enum values, Literal values, `choices` metadata, report_to integrations)
        (
            {"train": {"lr_scheduler_type": "cosin"}},
            "train.lr_scheduler_type: unknown value 'cosin' (did you mean 'cosine'?)",
        ),
        (
            {"train": {"train_sampling_strategy": "grouped"}},
            "train.train_sampling_strategy: unknown value 'grouped'; use one of",
        ),
        ({"train": {"report_to": "wandbb"}}, "train.report_to: unknown value 'wandbb' (did you mean 'wandb'?)"),
        (
            {"quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}},
            "quantization.bnb_4bit_quant_type: unknown value 'nf5' (did you mean 'nf4'?)",
        ),
        (
            {"quantization": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bfloat17"}},
            "quantization.bnb_4bit_compute_dtype: unknown value 'bfloat17' (did you mean 'bfloat16'?)",
        ),
        ({"lora": {"task_type": "SEQ_CLS"}}, "lora.task_type: fintrl sets it (CAUSAL_LM); remove it"),
        # ranges the libraries accept and crash on later
        ({"train": {"learning_rate": -1}}, "train.learning_rate: must be > 0 (got -1)"),
        (
            {"train": {"num_train_epochs": 0}},
            "train.num_train_epochs: num_train_epochs 0 with max_steps -1 is zero training steps",
        ),
        (
            {"train": {"num_train_epochs": 0, "max_steps": 0}},
            "train.num_train_epochs: num_train_epochs 0 with max_steps 0 is zero",
        ),
        ({"train": {"per_device_train_batch_size": 0}}, "train.per_device_train_batch_size: must be >= 1 (got 0)"),
        ({"train": {"gradient_accumulation_steps": 0}}, "train.gradient_accumulation_steps: must be >= 1 (got 0)"),
        ({"train": {"max_length": 0}}, "train.max_length: must be >= 1 (got 0)"),
        ({"lora": {"r": 0}}, "lora.r: must be >= 1 (got 0)"),
        ({"lora": {"lora_alpha": 0}}, "lora.lora_alpha: must be > 0 (got 0)"),
        ({"lora": {"lora_dropout": 1.0}}, "lora.lora_dropout: must be in [0, 1) (got 1.0)"),
        # what the real SFTConfig / BitsAndBytesConfig refuse, with the key found in the library's message
        ({"train": {"save_steps": 1.5}}, "train.save_steps: --save_steps must be an integer if bigger than 1"),
        (
            {"quantization": {"load_in_4bit": True, "load_in_8bit": True}},
            "quantization.load_in_4bit: load_in_4bit and load_in_8bit are both True",
        ),
        (
            {"quantization": {"load_in_8bit": True, "llm_int8_threshold": 6}},
            "quantization.llm_int8_threshold: llm_int8_threshold must be a float",
        ),
        # presets, paths and Hub ids
        (
            {"data": {"preset": "fpb_allagre"}},
            "data.preset: unknown preset 'fpb_allagre' (did you mean `fpb_allagree`?)",
        ),
        (
            {"data": {"mixture": [{"preset": "quickstart"}, {"preset": "tfnz"}]}},
            "data.mixture.1.preset: unknown preset 'tfnz' (did you mean `tfns`?)",
        ),
        ({"data": {"path": NOWHERE}}, f"data.path: no such file or folder {NOWHERE}"),
        ({"data": {"preset": "fpb_allagree", "path": NOWHERE}}, f"data.path: no such file or folder {NOWHERE}"),
        (
            {"data": {"mixture": [{"preset": "quickstart"}, {"path": NOWHERE}]}},
            f"data.mixture.1.path: no such file or folder {NOWHERE}",
        ),
        ({"data": {"source": "nope/train.csv"}}, "data.source: no such file or folder nope/train.csv"),
        ({"data": {"source": "bad id!!"}}, "data.source: 'bad id!!' is not a Hub dataset id"),
        ({"data": {"mixture": [{"source": "a/b/c"}]}}, "data.mixture.0.source: 'a/b/c' is not a Hub dataset id"),
        # the model
        (
            {"model": {"name_or_path": "tiny-mistrl"}},
            "model.name_or_path: 'tiny-mistrl' is not a local folder, offline model or "
            "Hub model id: write it as org/name; did you mean `tiny-mistral`?",
        ),
        (
            {"model": {"name_or_path": "./nope"}},
            "model.name_or_path: no such folder ./nope; give a Hub id (org/name), a local "
            "model folder, or an offline model ['smollm2-135m-instruct', 'tiny-mistral']",
        ),
        (
            {"model": {"name_or_path": "tiny-mistral", "chat_template": "templates/missing.jinja"}},
            "model.chat_template: no such file templates/missing.jinja",
        ),
        # prompt placeholders, verbalizers
        (
            {"prompt": {"instruction": "Classify the {tsk}: {labels}"}},
            "prompt.instruction: unknown placeholder {tsk}; use only {task} and {labels}",
        ),
        (
            {"prompt": {"template": "{instruction}\n{text}\n{label}"}},
            "prompt.template: unknown placeholder {label}; use only {instruction} and {text}",
        ),
        ({"prompt": {"instruction": "Answer with {labels"}}, "prompt.instruction: expected '}' before end of string"),
        (
            {"prompt": {"template": "{instruction} } {text}"}},
            "prompt.template: Single '}' encountered in format string",
        ),
        ({"prompt": {"verbalizers": {"bullish": "up"}}}, "prompt.verbalizers: ['bullish'] are not labels"),
        # the training objective
        (
            {"train": {"objective": "label_sofmax"}},
            "train.objective: unknown value 'label_sofmax' (did you mean 'label_softmax'?)",
        ),
        (
            {"train": {"objective": "label_softmax"}, "eval": {"mode": "loglik"}},
            "train.objective: label_softmax trains the probabilities trie scoring reads, not eval.mode loglik's",
        ),
        (
            {"train": {"objective": "label_softmax", "padding_free": True}},
            "train.objective: label_softmax needs one example per row; remove train.padding_free",
        ),
        # publish
        ({"publish": {"repo_id": "not a repo"}}, "publish.repo_id: 'not a repo' is not a Hub repo id"),
        (
            {"publish": {"repo_id": "fin-sentiment"}},
            "publish.repo_id: 'fin-sentiment' is not a Hub repo id: write it as org/name",
        ),
        ({"publish": {"version": "1.2"}}, "publish.version: '1.2' is not a semantic version; use vMAJOR.MINOR.PATCH"),
    ],
)
def test_validate_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict, message: str) -> None:
    code, printed = validate(tmp_path, capsys, {**BASE, **patch})
    assert code == 2
    assert printed.startswith("fintrl: error: invalid recipe: ")
    assert message in printed


@pytest.mark.parametrize(
    "patch",
    [
        {"train": {"num_train_epochs": 0, "max_steps": 3}},  # max_steps wins
        {"train": {"learning_rate": 1, "bf16": True}},  # an int for a float; bf16 is turned off on CPU as a run does
        {"train": {"gradient_checkpointing": True, "report_to": ["none"], "warmup_steps": 0.1}},
        {"lora": {"init_lora_weights": "pissa_niter_16", "layer_replication": [[0, 2], [1, 3]]}},
        {"quantization": None, "lora": None},
        {"quantization": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "auto"}},
        {
            "model": {
                "name_or_path": "mistralai/Mistral-7B-Instruct-v0.3",
                "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            }
        },
        {
            "data": {"source": "takala/financial_phrasebank", "labels": ["a", "b"]},
            "prompt": {"verbalizers": {"a": "up"}},
        },
        {"prompt": {"instruction": "Which {task}? {{braces}} {labels}", "template": "{text}"}},
        {"publish": {"repo_id": "your-org/fin-sentiment", "version": "v1.2.0"}},
        {"train": {"objective": "label_softmax"}, "eval": {"mode": "trie"}},
    ],
)
def test_validate_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict) -> None:
    code, printed = validate(tmp_path, capsys, {**BASE, **patch})
    assert code == 0 and ": ok (model " in printed


def test_local_model_folder_data_and_template_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data, template = tmp_path / "model", tmp_path / "data.csv", tmp_path / "chat.jinja"
    model.mkdir()
    data.write_text("text,label\nup,positive\n")
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    recipe = {"model": {"name_or_path": str(model), "chat_template": str(template)}, "data": {"source": str(data)}}
    code, printed = validate(tmp_path, capsys, recipe)
    assert code == 2 and f"model.name_or_path: {model} holds no config.json" in printed
    (model / "config.json").write_text("{}")
    assert validate(tmp_path, capsys, recipe)[0] == 0
    assert validate(tmp_path, capsys, {**recipe, "data": {"path": str(tmp_path), "labels": ["a", "b"]}})[0] == 0


def test_duplicate_yaml_keys_name_key_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "model:\n  name_or_path: tiny-mistral\n"
        "data:\n  preset: quickstart\n"
        "train:\n  learning_rate: 1.0e-4\n  learning_rate: 2.0e-4\n"
        "defaults: &lora {r: 4, lora_alpha: 8}\n"
        "lora:\n  <<: *lora\n  r: 8\n"  # a merge key and its override are not duplicates
        "model:\n  name_or_path: smollm2-135m-instruct\n"
    )
    code, printed = validate(tmp_path, capsys, text)
    assert code == 2
    assert printed == (
        f"fintrl: error: {tmp_path / 'recipe.yaml'}: train.learning_rate: duplicate key (lines 6 and 7); "
        "keep one; model: duplicate key (lines 1 and 12); keep one\n"
    )
    code, printed = validate(
        tmp_path, capsys, "data:\n  mixture:\n    - {preset: fiqa, weight: 1, weight: 2}\nmodel: {name_or_path: x}\n"
    )
    assert code == 2 and "data.mixture.0.weight: duplicate key (lines 3 and 3)" in printed


def test_every_problem_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = {
        "model": {"name_or_path": "tiny-mistrl"},
        "data": {"preset": "quickstart", "path": NOWHERE},
        "lora": {"r": "abc"},
        "train": {"learning_rate": -1, "num_train_epochs": 0},
        "prompt": {"instruction": "{tsk}"},
        "publish": {"version": "one"},
    }
    code, printed = validate(tmp_path, capsys, recipe)
    assert code == 2
    keys = [
        part.split(":")[0]
        for part in printed.removeprefix("fintrl: error: invalid recipe: ").split("; ")
        if part.split(":")[0].count(".") == 1 and " " not in part.split(":")[0]
    ]
    assert keys == [
        "model.name_or_path",
        "lora.r",
        "train.learning_rate",
        "train.num_train_epochs",
        "data.path",
        "prompt.instruction",
        "publish.version",
    ]


def test_overrides_are_checked_and_full_is_a_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(tmp_path, capsys, BASE, "--full", "--set", "train.learning_rate=1e-4")[0] == 0
    code, printed = validate(tmp_path, capsys, BASE, "--set", "lora.r=abc", "--set", "train.learning_rate=-1")
    assert code == 2 and "lora.r: expected int, got 'abc'" in printed and "train.learning_rate: must be > 0" in printed
