"""Fixtures of the bad-input catalogues."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_recipe_dict


@pytest.fixture(scope="package")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (2 steps, one checkpoint) that every probe aims at and none may change."""
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run

    out = tmp_path_factory.mktemp("finished") / "run"
    raw = tiny_recipe_dict(out)
    raw["train"] |= {"max_steps": 2, "save_steps": 2}
    raw["eval"]["baselines"] = False
    raw["publish"] = {"base_model": "fintrl-test/tiny-mistral"}  # the tiny model has no Hub id of its own
    run(recipe_from_dict(raw))
    return out
