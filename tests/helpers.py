"""Helpers the tests share (fixtures live in conftest.py): tiny recipes, the real data's location, the tiny base on
the local Hub, card snippets, and hashing a folder to prove it unchanged."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository
SHARED_DATA = ROOT.parent / "shared" / "data"
REPO = "fintrl-test/fin-sentiment"
BASE_REPO = "fintrl-test/tiny-mistral"  # the tiny base on the local Hub (`upload_tiny_base`): what runs publish as base
LABELS = ["negative", "neutral", "positive"]


def upload_tiny_base(tiny_model_dir: str) -> str:
    """Put the tiny base model (the one every test run trains on) on the local Hub as BASE_REPO, so that published
    adapters load it from there as they would from the Hub. Its weights are saved in shards (once per session):
    the local Hub takes at most 64 MB per commit, so each shard goes in a commit of its own."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(tiny_model_dir).parent.parent / "hub-upload" / "tiny-mistral"
    if not (folder / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(folder, max_shard_size="40MB")
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
            shutil.copy(Path(tiny_model_dir) / name, folder / name)
    api = HfApi()
    api.create_repo(BASE_REPO, exist_ok=True)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    small = [p for p in files if p.stat().st_size < 10_000_000]
    for group in [small, *([p] for p in files if p not in small)]:
        api.create_commit(BASE_REPO, [CommitOperationAdd(p.name, str(p)) for p in group], commit_message="tiny base")
    return BASE_REPO


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints")))


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def python_block(markdown: str, containing: str) -> str:
    """The one python snippet of a card that contains `containing` (e.g. "AutoPeftModelForCausalLM")."""
    [block] = [b for b in python_blocks(markdown) if containing in b]
    return block


def lora_weights(model) -> dict:
    return {name.replace(".default", ""): t for name, t in model.state_dict().items() if "lora_" in name}


def tiny_recipe_dict(output_dir: Path, **data: object) -> dict:
    """A recipe that trains the tiny model in seconds on the packaged quickstart sample."""
    return {
        "model": {"name_or_path": "tiny-mistral"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"preset": "quickstart", "max_train_samples": 24, "max_eval_samples": 12, **data},
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "save_steps": 3, "logging_steps": 1},
        "eval": {"batch_size": 4, "baselines": True},
        "output_dir": str(output_dir),
    }


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "train.csv").is_file():
        pytest.skip(f"{path} not present (real data lives in ../shared/data)")
    return path


def tree_hash(folder: Path) -> dict[str, str]:
    """Every file under `folder` (lock files aside: taking a lock is not a change) -> its sha256."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }
