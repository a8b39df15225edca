"""`data.mixture`: weighted sources, label maps into one label set, per-source eval, validation, `--set` list paths."""

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fintrl.data.loading import load_labeled_data
from fintrl.data.sampling import weighted_indices
from fintrl.errors import DataError
from fintrl.recipe.schema import DataSection, RecipeError, load_recipe, recipe_from_dict
from tests.data.test_loading import _csv
from tests.helpers import tiny_recipe_dict

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """Three tiny sources: `a` and `b` negative/neutral/positive (10 and 6 train rows), `t` bearish/bullish/neutral."""
    sent = ["negative", "neutral", "positive"]
    tweet = ["bearish", "bullish", "neutral"]
    folders = {}
    for name, labels, n_train, n_eval in (("a", sent, 10, 6), ("b", sent, 6, 3), ("t", tweet, 8, 3)):
        folder = tmp_path / name
        _csv(folder / "train.csv", [(f"{name} train {i}", labels[i % 3]) for i in range(n_train)])
        _csv(folder / "validation.csv", [(f"{name} eval {i}", labels[i % 3]) for i in range(n_eval)])
        folders[name] = folder
    return folders


def _mixture(sources: dict[str, Path], **data: object) -> DataSection:
    return DataSection(
        mixture=[
            {"path": str(sources["a"])},
            {"path": str(sources["b"]), "weight": 2.0},
            {"path": str(sources["t"]), "weight": 0.5, "label_map": {"bearish": "negative", "bullish": "positive"}},
        ],
        **data,
    )


def test_weighted_indices() -> None:
    assert weighted_indices(4, 1.0, seed=0) == [0, 1, 2, 3]
    assert weighted_indices(4, 2.0, seed=0) == [0, 1, 2, 3] * 2
    half = weighted_indices(10, 0.5, seed=0)
    assert len(half) == 5 and len(set(half)) == 5 and half == weighted_indices(10, 0.5, seed=0)
    assert half != weighted_indices(10, 0.5, seed=1)
    more = weighted_indices(10, 1.5, seed=0)
    assert len(more) == 15 and all(c in (1, 2) for c in Counter(more).values()) and set(more) == set(range(10))
    assert weighted_indices(10, 0.01, seed=0) == []  # rounds to zero rows


def test_weights_scale_train_rows_and_eval_is_every_source(sources: dict[str, Path]) -> None:
    data = load_labeled_data(_mixture(sources))
    per_source = Counter(data.train["source"])
    assert per_source == {"a": 10, "b": 12, "t": 4}  # 1 x 10, 2 x 6, 0.5 x 8
    b_texts = Counter(t for t, s in zip(data.train["text"], data.train["source"]) if s == "b")
    assert set(b_texts.values()) == {2} and len(b_texts) == 6  # every row of b twice
    assert len(set(t for t, s in zip(data.train["text"], data.train["source"]) if s == "t")) == 4  # a half, no repeats
    assert {k: len(v) for k, v in data.eval_groups().items()} == {"a": 6, "b": 3, "t": 3}  # eval rows are not weighted
    assert [p["n_train"] for p in data.describe()["mixture"]] == [10, 12, 4]
    assert data.source == "mixture(a*1, b*2, t*0.5)" and data.task == "class"
    again = load_labeled_data(_mixture(sources))
    assert again.train["text"] == data.train["text"]  # seeded


def test_label_map_into_one_label_set(sources: dict[str, Path]) -> None:
    data = load_labeled_data(_mixture(sources))
    assert data.labels == ["negative", "neutral", "positive"]  # union, first appearance
    names = data.train.features["label"].names
    t_eval = [
        (text, names[label])
        for text, label, s in zip(data.eval["text"], data.eval["label"], data.eval["source"])
        if s == "t"
    ]
    assert t_eval == [
        ("t eval 0", "negative"),
        ("t eval 1", "positive"),
        ("t eval 2", "neutral"),
    ]  # bearish, bullish, neutral
    ordered = load_labeled_data(_mixture(sources, labels=["positive", "neutral", "negative"]))
    assert ordered.labels == ["positive", "neutral", "negative"]
    assert ordered.eval.features["label"].names == ordered.labels


def test_unmapped_labels_join_the_union_or_fail_against_given_labels(sources: dict[str, Path]) -> None:
    entries = [{"path": str(sources["a"])}, {"path": str(sources["t"])}]
    data = load_labeled_data(DataSection(mixture=entries))
    assert data.labels == ["negative", "neutral", "positive", "bearish", "bullish"]
    with pytest.raises(
        RecipeError, match=r"data.mixture.1 \(t\): labels \['bearish', 'bullish'\] are not in data.labels"
    ):
        load_labeled_data(DataSection(mixture=entries, labels=["negative", "neutral", "positive"]))
    with pytest.raises(
        RecipeError, match=r"data.mixture.1 \(t\).label_map: \['Bearish'\] are not labels of this source"
    ):
        load_labeled_data(DataSection(mixture=[entries[0], {**entries[1], "label_map": {"Bearish": "negative"}}]))


def test_caps_and_per_source_load_errors(sources: dict[str, Path], tmp_path: Path) -> None:
    data = load_labeled_data(_mixture(sources, max_train_samples=7, max_eval_samples=2))
    assert len(data.train) == 7  # the mixed train rows
    assert {k: len(v) for k, v in data.eval_groups().items()} == {"a": 2, "b": 2, "t": 2}  # per source
    with pytest.raises(DataError, match=r"data.mixture.1 \(nowhere\): data.path: .* does not exist"):
        load_labeled_data(DataSection(mixture=[{"path": str(sources["a"])}, {"path": str(tmp_path / "nowhere")}]))


def test_single_source_data_has_no_groups() -> None:
    assert load_labeled_data(DataSection(preset="quickstart")).eval_groups() == {}


BASE = {"model": {"name_or_path": "tiny-mistral"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mixture": [{"preset": "fiqa", "weight": 0}]}, "data.mixture.0.weight: Input should be greater than 0"),
        (
            {"mixture": [{"preset": "fiqa"}, {"weight": 2.0}]},
            "data.mixture.1: Value error, give one of `preset`, `source` or `path`",
        ),
        ({"mixture": [{"preset": "fiqa", "wieght": 2}]}, "data.mixture.0.wieght: unknown key (did you mean `weight`?)"),
        ({"mixture": [{"preset": "fiqa", "label_map": {"a": " "}}]}, "data.mixture.0.label_map"),
        (
            {"mixture": [{"preset": "fiqa"}, {"preset": "fiqa"}]},
            "duplicate source names ['fiqa']; give each entry a distinct `name`",
        ),
        ({"mixture": [{"preset": "fiqa"}], "path": "x"}, "`mixture` replaces ['path']"),
        ({"mixture": []}, "`mixture` needs at least one source"),
    ],
)
def test_bad_mixtures_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({**BASE, "data": data})
    assert message in str(err.value)


def test_set_overrides_index_lists(tmp_path: Path) -> None:
    recipe = load_recipe(
        RECIPES / "mixture_smollm2.yaml",
        overrides=[
            "data.mixture.0.path=../shared/data/fpb_50agree",
            "data.mixture.2.weight=0.25",
            "data.mixture.3.preset=fpb_allagree",  # the index just past the end appends an entry
        ],
    )
    mixture = recipe.data.mixture
    assert mixture[0].path == "../shared/data/fpb_50agree" and mixture[0].preset == "fpb_50agree"
    assert mixture[2].weight == 0.25 and mixture[2].label_map == {"bearish": "negative", "bullish": "positive"}
    assert [m.display_name for m in mixture] == ["fpb_50agree", "fiqa", "tfns", "fpb_allagree"]
    with pytest.raises(RecipeError, match=r"`mixture` is a list of 3; use an index 0..3"):
        load_recipe(RECIPES / "mixture_smollm2.yaml", overrides=["data.mixture.7.path=x"])
    with pytest.raises(RecipeError, match="`mixture` is a list"):
        load_recipe(RECIPES / "mixture_smollm2.yaml", overrides=["data.mixture.first.path=x"])
    plain = tmp_path / "r.yaml"
    plain.write_text(yaml.safe_dump({**BASE, "data": {"preset": "quickstart", "labels": ["a", "b"]}}))
    assert load_recipe(plain, overrides=["data.labels.1=c"]).data.labels == ["a", "c"]  # any list, not only mixtures


def test_run_scores_every_source(tmp_path: Path, sources: dict[str, Path]) -> None:
    from fintrl.runner import run

    raw = tiny_recipe_dict(tmp_path / "run")
    raw["data"] = _mixture(sources).model_dump(exclude_unset=True) | {"max_eval_samples": 4}
    raw["train"] |= {"max_steps": 2}
    metrics = run(recipe_from_dict(raw))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    per_source = saved["per_source"]
    assert list(per_source) == ["a", "b", "t"] and [m["n"] for m in per_source.values()] == [4, 3, 3]
    assert saved["n"] == 10 and sum(m["accuracy"] * m["n"] for m in per_source.values()) == pytest.approx(
        10 * metrics["accuracy"]
    )
    assert set(per_source["t"]["baselines"]) == {"majority", "tfidf_logreg"}
    assert [p["name"] for p in saved["data"]["mixture"]] == ["a", "b", "t"]
    assert (tmp_path / "run" / "README.md").is_file()  # the card renders for a mixture
