from pathlib import Path

import pytest
import yaml

from fintrl.checks.library_fields import check_library_fields
from fintrl.checks.recipe import check_recipe
from fintrl.recipe.schema import RecipeError, load_recipe, parse_override, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    check_recipe(load_recipe(path))  # offline aliases and Hub ids; presets' Hub data need not be here


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BASE = {"model": {"name_or_path": "tiny-mistral"}, "data": {"preset": "quickstart"}}


def test_overrides_and_output_dir(tmp_path: Path) -> None:
    recipe = load_recipe(
        _write(tmp_path, BASE),
        overrides=["train.learning_rate=1e-4", "lora.r=32", "data.labels=[a, b]"],
        output_dir="x",
    )
    assert recipe.train["learning_rate"] == pytest.approx(1e-4)
    assert recipe.lora["r"] == 32
    assert recipe.data.labels == ["a", "b"]
    assert recipe.output_dir == "x"


def test_yaml_exponent_floats_are_numbers(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, {**BASE, "train": {"learning_rate": "2e-4"}}))
    assert recipe.train["learning_rate"] == pytest.approx(2e-4)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"modle": {}}, "modle: unknown key (did you mean `model`?)"),
        (
            {"data": {"preset": "quickstart", "text_colum": "x"}},
            "data.text_colum: unknown key (did you mean `text_column`?)",
        ),
        ({"eval": {"batch_size": "big"}}, "eval.batch_size"),
        ({"data": {"preset": "quickstart", "labels": ["a", "a"]}}, "duplicate label names"),
        ({"data": {"preset": "quickstart", "labels": ["a", " "]}}, "non-empty"),
        ({"data": {}}, "give one of `preset`, `source` or `path`"),
        ({"lora": None}, "cannot be fully fine-tuned"),
        ({"train": {"output_dir": "x"}}, "train.output_dir: set it at the top level"),
        ({"prompt": {"template": "no placeholder"}}, "prompt.template"),
    ],
)
def test_bad_recipes_name_the_key(patch: dict, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({**BASE, **patch})
    assert message in str(err.value)


def test_library_fields_did_you_mean() -> None:
    recipe = recipe_from_dict(
        {**BASE, "train": {"learnig_rate": 1.0}, "lora": {"rr": 3}, "quantization": {"load_in_4bitt": True}}
    )
    with pytest.raises(RecipeError) as err:
        check_library_fields(recipe)
    text = str(err.value)
    assert "train.learnig_rate: unknown field (did you mean `learning_rate`?)" in text
    assert "lora.rr: unknown field (did you mean `r`?)" in text
    assert "quantization.load_in_4bitt" in text


def test_bad_override_syntax() -> None:
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("train.learning_rate")


def test_validate_cli_is_fast_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fintrl.cli.main import main

    assert main(["validate", str(RECIPES / "quickstart.yaml")]) == 0
    assert main(["validate", str(RECIPES / "quickstart.yaml"), "--set", "data.labls=3"]) == 2
    assert "data.labls: unknown key (did you mean `labels`?)" in capsys.readouterr().err


def test_public_api_is_lazy_and_complete() -> None:
    import subprocess
    import sys

    import fintrl

    assert set(fintrl.__all__) == {"__version__", *fintrl._EXPORTS} and fintrl.__version__
    assert all(getattr(fintrl, name) is not None for name in fintrl._EXPORTS)
    code = "import sys, fintrl; print(any(m in sys.modules for m in ('torch', 'transformers', 'trl')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
