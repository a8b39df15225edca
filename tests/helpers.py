"""Shared by the Hub tests (test_hub.py, test_hub_faults.py, test_card.py): one tiny trained run, the tiny base
model on the local Hub, and small helpers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fintrl import hub
from fintrl.recipe import recipe_from_dict
from tests.conftest import tiny_recipe_dict

REPO = "fintrl-test/fin-sentiment"
BASE_REPO = "fintrl-test/tiny-mistral"  # the tiny base on the local Hub (`upload_tiny_base`): what runs publish as base
LABELS = ["negative", "neutral", "positive"]
_TRAINED: dict = {}  # trained once per session, whichever module asks first


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, fintrl_home: Path) -> dict:
    """One tiny run, trained hard enough (lr 1e-2, 12 steps; unquantized is faster on CPU) that greedy generation
    answers a label and stops, from a copy of the quickstart data in a temporary folder (`data`: no path of it may
    be published). Its recipe has a `publish:` section naming the base's Hub id (BASE_REPO): the call `fintrl run`
    makes at the end is recorded. Tests that publish should publish a `copy_run` of it (publishing writes the run's
    README.md); those that load the base from the local Hub call `upload_tiny_base` first."""
    from fintrl.presets import PRESETS
    from fintrl.runner import run

    if not _TRAINED:
        data_dir = Path(shutil.copytree(PRESETS["quickstart"].source, tmp_path_factory.mktemp("data") / "fin-news"))
        run_dir = tmp_path_factory.mktemp("trained") / "run"
        raw = tiny_recipe_dict(run_dir, path=str(data_dir))
        raw["train"].update(learning_rate=1e-2, num_train_epochs=2, save_steps=1000)  # one checkpoint: they are slow
        raw["quantization"] = None
        raw["publish"] = {"repo_id": REPO, "base_model": BASE_REPO}
        calls: list = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(hub, "publish", lambda *args, **kwargs: calls.append((args, kwargs)))
            run(recipe_from_dict(raw))
        assert (run_dir / "checkpoints" / "checkpoint-12").is_dir()  # saved at the end: --resume's, never published
        _TRAINED.update(dir=run_dir, data=data_dir, publish_calls=calls)
    return _TRAINED


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
