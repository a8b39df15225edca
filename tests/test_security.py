"""A downloaded adapter never runs code: hostile repos planted on the local Hub, loaded with `fintrl predict`/`eval`.

The attack (reproduced before the fix): a published repo whose recipe.yaml names a base model with custom code and
`trust_remote_code: true`. The custom code writes a marker file when imported; the marker proves whether it ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi

from fintrl.cli.main import main

LABELS = ["negative", "neutral", "positive"]


def evil_base(folder: Path, marker: Path) -> Path:
    """A tiny Mistral whose config points at custom classes; importing them writes `marker`."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=32000,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    MistralForCausalLM(config).save_pretrained(folder)
    payload = f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n"
    (folder / "configuration_evil.py").write_text(
        payload
        + "from transformers import MistralConfig\n\nclass EvilConfig(MistralConfig):\n    model_type = 'evil'\n"
    )
    (folder / "modeling_evil.py").write_text(
        payload + "from transformers import MistralForCausalLM\nfrom .configuration_evil import EvilConfig\n\n"
        "class EvilModel(MistralForCausalLM):\n    config_class = EvilConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil"  # no class of that name ships with transformers: only the repo's code can load it
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def adapter_repo(folder: Path, base: str, recipe_base: str, tiny_model_dir: str) -> Path:
    """A fintrl-looking published adapter: LoRA weights for the tiny model, a report, and a recipe naming `recipe_base`
    with `trust_remote_code: true`; its adapter_config.json names `base`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    recipe = {
        "model": {"name_or_path": recipe_base, "trust_remote_code": True},
        "quantization": None,
        "data": {"preset": "quickstart", "labels": LABELS},
        "output_dir": "runs/x",
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "metrics.json").write_text(json.dumps({"data": {"labels": LABELS}}))
    return folder


def upload(folder: Path, repo_id: str) -> None:
    HfApi().create_repo(repo_id, exist_ok=True)
    HfApi().upload_folder(repo_id=repo_id, folder_path=str(folder))


@pytest.fixture
def planted(local_hub, tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    # transformers keeps downloaded model code by commit; the test Hub's commit ids repeat across sessions
    monkeypatch.setattr("transformers.dynamic_module_utils.HF_MODULES_CACHE", str(tmp_path / "modules"))
    marker = tmp_path / "pwned"
    upload(evil_base(tmp_path / "evil_base", marker), "mallory/base")
    # the recipe alone asks for remote code; the adapter config names a harmless base
    upload(adapter_repo(tmp_path / "a1", tiny_model_dir, "mallory/base", tiny_model_dir), "mallory/recipe-only")
    # both name the hostile base
    upload(adapter_repo(tmp_path / "a2", "mallory/base", "mallory/base", tiny_model_dir), "mallory/adapter")
    return {"marker": marker, "tiny": tiny_model_dir}


def test_a_recipe_in_a_download_cannot_turn_on_remote_code(planted, capsys) -> None:
    assert main(["predict", "mallory/recipe-only", "--text", "Profit rose.", "--set", "quantization=null"]) == 0
    captured = capsys.readouterr()
    assert not planted["marker"].exists()
    assert f"loading base model {planted['tiny']}" in captured.err  # the adapter config's base, said before loading
    assert json.loads(captured.out.splitlines()[-1])["label"] in LABELS


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "mallory/adapter", "--text", "Profit rose."],
        ["eval", "mallory/adapter", "--set", "data.max_eval_samples=4"],
    ],
)
def test_a_hostile_base_is_refused_without_the_flag(planted, command, tmp_path, capsys) -> None:
    code = main(
        [*command, "--set", "quantization=null"]
        + (["--output-dir", str(tmp_path / "e")] if command[0] == "eval" else [])
    )
    err = capsys.readouterr().err
    assert code == 4, err
    assert not planted["marker"].exists()
    lines = [line for line in err.splitlines() if line.startswith("fintrl: error:")]
    assert len(lines) == 1 and "--trust-remote-code" in lines[0] and "Traceback" not in err


def test_the_flag_is_what_runs_it(planted, capsys) -> None:
    """The same repo with the user's own --trust-remote-code does import the code: the marker test can fail."""
    main(["predict", "mallory/adapter", "--text", "Profit rose.", "--set", "quantization=null", "--trust-remote-code"])
    capsys.readouterr()
    assert planted["marker"].read_text() == "pwned"
