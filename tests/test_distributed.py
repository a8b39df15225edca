"""Training under several processes: the accelerate configs, the launch checks (FSDP-QLoRA), the effective batch, and a
real 2-process CPU run (gloo) that writes its run folder once, gathers an eval equal to single-process scoring and
publishes once."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fintrl import distributed
from fintrl.checks.launch import Launch, launch_from_config, launch_problems
from fintrl.cli.main import main
from fintrl.recipe.schema import recipe_from_dict
from fintrl.run_folder import (
    ADAPTER_CONFIG,
    CALIBRATION,
    CARD,
    CHECKPOINTS,
    METRICS,
    PREDICTIONS,
    RECIPE,
    TRAIN_LOG,
    TRAINING_CURVE_PNG,
)
from tests.helpers import BASE_REPO, REPO, ROOT, tiny_recipe_dict

CONFIGS = ROOT / "recipes" / "accelerate"


def readme_configs() -> dict[str, str]:
    """The manual's table of accelerate configs (docs/distributed.md): file -> the distributed_type it says it has."""
    section = (ROOT / "docs" / "distributed.md").read_text()
    return dict(re.findall(r"^\| `(recipes/accelerate/[\w.]+)` \| `(\w+)` \|", section, flags=re.M))


def test_accelerate_configs_parse_and_are_what_the_readme_says():
    named = readme_configs()
    assert set(named) == {f"recipes/accelerate/{p.name}" for p in CONFIGS.glob("*.yaml")}
    assert set(named) == {f"recipes/accelerate/{n}.yaml" for n in ("multi_gpu", "fsdp_qlora", "deepspeed_zero3")}
    for path, kind in named.items():
        config = yaml.safe_load((ROOT / path).read_text())
        assert config["distributed_type"] == kind
        assert config["compute_environment"] == "LOCAL_MACHINE" and config["num_machines"] == 1
        assert config["use_cpu"] is False and isinstance(config["num_processes"], int)
        assert config["mixed_precision"] == "no"  # precision is the recipe's (train.bf16)
    fsdp = yaml.safe_load((CONFIGS / "fsdp_qlora.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True
    zero = yaml.safe_load((CONFIGS / "deepspeed_zero3.yaml").read_text())["deepspeed_config"]
    assert zero["zero_stage"] == 3 and zero["zero3_save_16bit_model"] is True  # else the adapter cannot be gathered
    manual = (ROOT / "docs" / "distributed.md").read_text()
    for flag in ("--num_machines", "--machine_rank", "-m fintrl run"):
        assert flag in manual


def qlora_recipe(tmp_path: Path, **quantization: object) -> dict:
    raw = tiny_recipe_dict(tmp_path / "run")
    raw["model"]["dtype"] = "bfloat16"
    raw["quantization"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", **quantization}
    return raw


def test_fsdp_qlora_rules(tmp_path):
    fsdp = launch_from_config(CONFIGS / "fsdp_qlora.yaml")
    assert (fsdp.kind, fsdp.processes) == ("fsdp", 2)
    assert fsdp.fsdp == {"use_orig_params": False, "cpu_ram_efficient_loading": True, "sync_module_states": True}
    ok = recipe_from_dict(qlora_recipe(tmp_path, bnb_4bit_quant_storage="bfloat16"))
    assert launch_problems(ok, fsdp) == []
    [problem] = launch_problems(recipe_from_dict(qlora_recipe(tmp_path)), fsdp)
    assert problem.startswith("quantization.bnb_4bit_quant_storage: unset (uint8) does not match model.dtype bfloat16")
    assert "set it to bfloat16" in problem and "fsdp_qlora.yaml" in problem
    mismatch = recipe_from_dict(qlora_recipe(tmp_path, bnb_4bit_quant_storage="float16"))
    assert "float16 does not match" in launch_problems(mismatch, fsdp)[0]
    assert "ZeRO-3" in launch_problems(mismatch, launch_from_config(CONFIGS / "deepspeed_zero3.yaml"))[0]
    assert launch_problems(mismatch, launch_from_config(CONFIGS / "multi_gpu.yaml")) == []  # DDP: no such rule
    orig = Launch("fsdp", 2, {"use_orig_params": True, "cpu_ram_efficient_loading": False})
    problems = launch_problems(ok, orig)
    assert any(p.startswith("fsdp_use_orig_params: true") for p in problems)
    assert any(p.startswith("fsdp_cpu_ram_efficient_loading: false") for p in problems)
    raw = qlora_recipe(tmp_path)  # the recipe asks for FSDP itself
    raw["train"] |= {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}
    problems = launch_problems(recipe_from_dict(raw), Launch(None, 1))
    assert len(problems) == 2 and "the recipe's train section" in problems[0]


def test_validate_refuses_fsdp_with_mismatched_storage_and_prints_the_effective_batch(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(qlora_recipe(tmp_path, bnb_4bit_quant_storage="float16")))
    assert main(["validate", str(path), "--accelerate-config", str(CONFIGS / "fsdp_qlora.yaml")]) == 2
    err = capsys.readouterr().err
    assert "quantization.bnb_4bit_quant_storage: float16 does not match model.dtype bfloat16 under FSDP" in err
    assert main(["validate", str(path), "--accelerate-config", str(CONFIGS / "multi_gpu.yaml")]) == 0
    assert "effective batch 32 = 4 per device x 8 processes x 1 accumulation" in capsys.readouterr().out
    assert main(["validate", str(path), "--num-processes", "2", "--set", "train.gradient_accumulation_steps=3"]) == 0
    assert "effective batch 24 = 4 per device x 2 processes x 3 accumulation" in capsys.readouterr().out
    assert main(["validate", str(path)]) == 0
    assert "effective batch 4 = 4 per device x 1 process x 1 accumulation" in capsys.readouterr().out
    assert main(["validate", str(path), "--num-processes", "0"]) == 2
    assert main(["validate", str(path), "--accelerate-config", str(tmp_path / "none.yaml")]) == 2
    assert "--accelerate-config" in capsys.readouterr().err


def test_one_process_is_unchanged(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.on_main(lambda: 42) == 42
    with pytest.raises(ValueError):
        distributed.on_main(lambda: int("x"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.sharded_training() == "fsdp"
    with distributed.whole_weights():
        assert "ACCELERATE_USE_FSDP" not in os.environ
    assert os.environ["ACCELERATE_USE_FSDP"] == "true"


def test_eval_refuses_to_run_under_a_launcher(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", str(tmp_path)]) == 2
    assert "fintrl eval runs as one process" in capsys.readouterr().err


def test_every_exit_tears_the_process_group_down(monkeypatch, tmp_path):
    """Left to the interpreter's exit, gloo's threads can abort the process (SIGABRT) and hide the exit code."""
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert main(["eval", str(tmp_path)]) == 2  # a refusal, as any other exit
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 2 -m fintrl run RECIPE`,
    as the README says, on CPU (accelerate's process group falls back to gloo), one thread per process."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "multi_gpu.yaml")]
    with socket.socket() as free:  # a port of our own: another launch may hold accelerate's default
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cmd += ["--num_processes", "2", "--main_process_port", str(port), "-m", "fintrl", "run", str(recipe), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_write_once_gather_exactly_and_publish_once(tmp_path, local_hub, tiny_model_dir, capsys):
    from huggingface_hub import HfApi

    out = tmp_path / "runs" / "two"
    raw = tiny_recipe_dict(out)
    raw["eval"] |= {"curve_points": 1, "curve_samples": 5}  # an odd sample: one shard larger than the other
    raw["publish"] = {"repo_id": REPO, "base_model": BASE_REPO}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))

    done = launch(recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = done.stderr
    assert logs.count("training on 2 processes: effective batch 8 = 4 per device x 2 processes x 1 accumulation") == 1
    assert logs.count("stage: card") == 1 and "[rank 1] fintrl.runner" not in logs  # rank 1 logs warnings only
    assert done.stdout.count('"output_dir"') == 1  # the summary, printed by the main process only

    # the run folder, exactly once: every file, no work folder, no swap left aside, the lock free
    assert sorted(p.name for p in out.parent.iterdir()) == [".two.lock", "two"]
    names = {p.name for p in out.iterdir()}
    expected = {RECIPE, METRICS, PREDICTIONS, ADAPTER_CONFIG, CALIBRATION, CARD, TRAIN_LOG, TRAINING_CURVE_PNG}
    assert expected | {"adapter_model.safetensors", CHECKPOINTS} <= names
    with open(out.parent / ".two.lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    metrics = json.loads((out / METRICS).read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["effective_batch_size"] == 8
    assert metrics["train"]["per_device_train_batch_size"] == 4 and metrics["train"]["gradient_accumulation_steps"] == 1
    assert [p["curve_samples"] for p in metrics["learning_curve"]] == [5, 5]
    log = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert sum("curve_accuracy" in e for e in log) == 2  # written once, by one process
    gathered = [json.loads(line) for line in (out / PREDICTIONS).read_text().splitlines()]
    assert len(gathered) == metrics["n"] == 12

    # one commit and one tag on the (local) Hub, from the main process only
    api = HfApi()
    assert [c.title for c in api.list_repo_commits(REPO)] == [
        f"fintrl v1.0.0: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}",
        "initial commit",
    ]
    assert [t.name for t in api.list_repo_refs(REPO).tags] == ["v1.0.0"]

    # the gathered predictions are single-process scoring of the saved adapter (same rows, order, labels)
    assert main(["eval", str(out), "--output-dir", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    single = [json.loads(line) for line in (tmp_path / "eval" / PREDICTIONS).read_text().splitlines()]
    assert [(r["text"], r["gold"], r["prediction"]) for r in gathered] == [
        (r["text"], r["gold"], r["prediction"]) for r in single
    ]
    for a, b in zip(gathered, single):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)

    # the main process's refusal reaches the other: one error line, exit code 5 (the launcher's own is 1), nothing
    # touched
    before = (out / METRICS).read_bytes()
    again = launch(recipe)
    assert again.returncode != 0
    errors = [line for line in again.stderr.splitlines() if re.match(r"fintrl( \[rank \d+\])?:", line)]
    assert len(errors) == 1 and errors[0].startswith("fintrl: error:") and "already holds a finished run" in errors[0]
    assert re.search(r"exitcode\s*: 5", again.stderr), again.stderr[-3000:]
    assert (out / METRICS).read_bytes() == before
