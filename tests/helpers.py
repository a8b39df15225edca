"""Shared by the Hub tests (tests/test_hub.py, tests/test_hub_faults.py): one tiny trained run, and small helpers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fintrl import hub
from fintrl.recipe import recipe_from_dict
from tests.conftest import tiny_recipe_dict

REPO = "fintrl-test/fin-sentiment"
LABELS = ["negative", "neutral", "positive"]
_TRAINED: dict = {}  # trained once per session, whichever module asks first


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, fintrl_home: Path) -> dict:
    """One tiny run, trained hard enough (lr 1e-2, 12 steps; unquantized is faster on CPU) that greedy generation
    answers a label and stops. Its recipe has a `publish:` section: the call `fintrl run` makes at the end is
    recorded. Tests that publish should publish a `copy_run` of it (publishing writes the run's README.md)."""
    from fintrl.runner import run

    if not _TRAINED:
        run_dir = tmp_path_factory.mktemp("trained") / "run"
        raw = tiny_recipe_dict(run_dir)
        raw["train"].update(learning_rate=1e-2, num_train_epochs=2, save_steps=1000)  # one checkpoint: they are slow
        raw["quantization"] = None
        raw["publish"] = {"repo_id": REPO}
        calls: list = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(hub, "publish", lambda *args, **kwargs: calls.append((args, kwargs)))
            run(recipe_from_dict(raw))
        assert (run_dir / "checkpoints" / "checkpoint-12").is_dir()  # saved at the end: --resume's, never published
        _TRAINED.update(dir=run_dir, publish_calls=calls)
    return _TRAINED


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints")))


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def lora_weights(model) -> dict:
    return {name.replace(".default", ""): t for name, t in model.state_dict().items() if "lora_" in name}
