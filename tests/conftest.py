"""Shared fixtures: one tiny random Mistral (real Mistral-7B tokenizer) per session, built into a temp FINTRL_HOME,
and one tiny trained run; plain helpers live in tests/helpers.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import BASE_REPO, REPO, tiny_recipe_dict

pytest_plugins = ["tests.hub_server"]  # the local Hub and its `local_hub` fixture

_TRAINED: dict = {}  # the `trained` run, made once per session whichever module asks first


@pytest.fixture(scope="session", autouse=True)
def fintrl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline models are built once per session into a temp folder (and trackio logs there); the user's cache is
    never touched."""
    home = tmp_path_factory.mktemp("fintrl_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FINTRL_HOME", str(home))
    mp.setenv("TRACKIO_DIR", str(home / "trackio"))  # trackio reads it once, on import: set before anything imports it
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(fintrl_home: Path) -> str:
    from fintrl.model.loading import resolve_model_path

    return resolve_model_path("tiny-mistral")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: str):
    from fintrl.model.loading import load_model
    from fintrl.recipe.schema import ModelSection

    return load_model(ModelSection(name_or_path="tiny-mistral"), None)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: str):
    from fintrl.model.loading import load_tokenizer
    from fintrl.recipe.schema import ModelSection

    return load_tokenizer(ModelSection(name_or_path="tiny-mistral"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, fintrl_home: Path) -> Path:
    """A finished tiny run (4-bit, 2 steps): the target of the eval/predict/serve tests, which only read it."""
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    recipe = tiny_recipe_dict(out)
    recipe["train"] |= {"max_steps": 2}
    recipe["eval"]["baselines"] = False
    run(recipe_from_dict(recipe))
    return out


@pytest.fixture(scope="session")
def second_run(tmp_path_factory: pytest.TempPathFactory, fintrl_home: Path) -> Path:
    """A tiny run like `tiny_run`, with another seed and a higher learning rate: an adapter that answers otherwise."""
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    out = tmp_path_factory.mktemp("second_run") / "run"
    raw = tiny_recipe_dict(out)
    raw["train"] |= {"max_steps": 2, "learning_rate": 5e-3}
    raw["eval"]["baselines"] = False
    raw["seed"] = 7
    run(recipe_from_dict(raw))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, fintrl_home: Path) -> dict:
    """One tiny run, trained hard enough (lr 1e-2, 12 steps; unquantized is faster on CPU) that greedy generation
    answers a label and stops, from a copy of the quickstart data in a temporary folder (`data`: no path of it may
    be published). Its recipe has a `publish:` section naming the base's Hub id (BASE_REPO): the call `fintrl run`
    makes at the end is recorded. Tests that publish should publish a `copy_run` of it (publishing writes the run's
    README.md); those that load the base from the local Hub call `upload_tiny_base` first."""
    from fintrl.data.presets import PRESETS
    from fintrl.hub import publish as hub
    from fintrl.recipe.schema import recipe_from_dict
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
