"""Shared fixtures: one tiny random Mistral (real Mistral-7B tokenizer) per session, built into a temp FINTRL_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.hub_server"]  # the local Hub and its `local_hub` fixture

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def fintrl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline models are built once per session into a temp folder; the user's cache is never touched."""
    home = tmp_path_factory.mktemp("fintrl_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FINTRL_HOME", str(home))
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(fintrl_home: Path) -> str:
    from fintrl.models import resolve_model_path

    return resolve_model_path("tiny-mistral")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: str):
    from fintrl.models import load_model
    from fintrl.recipe import ModelSection

    return load_model(ModelSection(name_or_path="tiny-mistral"), None)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: str):
    from fintrl.models import load_tokenizer
    from fintrl.recipe import ModelSection

    return load_tokenizer(ModelSection(name_or_path="tiny-mistral"))


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
