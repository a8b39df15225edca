from pathlib import Path

import pytest

from fintrl.data.loading import load_labeled_data, resolve_data
from fintrl.data.presets import PRESETS, TFN_TOPICS
from fintrl.errors import DataError
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import DataSection, PromptSection, RecipeError
from tests.helpers import SHARED_DATA, shared_data


def test_presets_label_orders() -> None:
    assert PRESETS["tfns"].labels == ("bearish", "bullish", "neutral")  # card: 0 Bearish, 1 Bullish, 2 Neutral
    assert (
        len(TFN_TOPICS) == 20
        and TFN_TOPICS[3] == "Treasuries | Corporate Debt"
        and TFN_TOPICS[17] == "Personnel Change"
    )
    assert PRESETS["fpb_allagree"].license == "cc-by-nc-sa-3.0"


def test_topic_names_match_the_data_card() -> None:
    card = SHARED_DATA / "tfn_topic" / "DATA.md"
    if not card.is_file():
        pytest.skip("../shared/data absent")
    rows = [line.split("|") for line in card.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    names = [r[2].strip().replace("\\", "") + "".join("|" + c.replace("\\", "") for c in r[3:-3]) for r in rows]
    names = [" | ".join(part.strip() for part in n.split("|")) for n in names]
    assert tuple(names) == TFN_TOPICS


def test_quickstart_preset_loads() -> None:
    data = load_labeled_data(DataSection(preset="quickstart"))
    assert data.labels == ["negative", "neutral", "positive"]
    assert (len(data.train), len(data.eval)) == (240, 60)
    assert data.describe()["label_counts"]["eval"] == {"negative": 18, "neutral": 24, "positive": 18}


@pytest.mark.parametrize("path", [None, "a/local/folder"])
@pytest.mark.parametrize("preset", ["tfn_topic", "fpb_50agree"])
def test_a_written_out_recipe_resolves_as_the_recipe_did(preset: str, path: str | None) -> None:
    """A run folder's recipe.yaml names every field, defaults included; read back (audit, compare, reproduce), it must
    give the preset's labels in the preset's order (the prompt lists them) and, from the Hub, its config and columns."""
    section = DataSection(preset=preset, path=path)
    written = DataSection.model_validate(section.model_dump(mode="json"))
    assert written.model_fields_set >= {"labels", "config_name", "text_column"}
    assert resolve_data(written)[0] == resolve_data(section)[0]
    assert resolve_data(written)[0].labels == list(PRESETS[preset].labels)


def test_a_written_out_preset_run_loads_its_topics_in_the_preset_order(tmp_path: Path) -> None:
    rows = [(f"text {i}", name) for i in range(3) for name in TFN_TOPICS]
    _csv(tmp_path / "d" / "train.csv", rows)
    section = DataSection(preset="tfn_topic", path=str(tmp_path / "d"), validation_fraction=0.34)
    written = DataSection.model_validate(section.model_dump(mode="json"))
    assert load_labeled_data(written).labels == list(TFN_TOPICS) != sorted(TFN_TOPICS)


def _csv(path: Path, rows: list[tuple[str, object]]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_validation_carved_deterministically_and_stratified(tmp_path: Path) -> None:
    rows = [(f"text {i}", ["up", "down"][i % 2]) for i in range(40)]
    _csv(tmp_path / "d" / "train.csv", rows)
    a = load_labeled_data(DataSection(path=str(tmp_path / "d"), validation_fraction=0.25))
    b = load_labeled_data(DataSection(path=str(tmp_path / "d"), validation_fraction=0.25))
    assert a.eval["text"] == b.eval["text"] and len(a.eval) == 10
    assert sorted(a.eval["label"]) == [0] * 5 + [1] * 5  # labels sorted by name: down, up
    assert not set(a.eval["text"]) & set(a.train["text"])


def test_integer_labels_with_id_map_and_empty_texts_counted(tmp_path: Path) -> None:
    _csv(
        tmp_path / "train.csv",
        [("a", 0), ("b", 1), ("", 1), ("c", 2), ("d", 0), ("e", 1), ("f", 2), ("g", 0), ("h", 1), ("i", 2)],
    )
    data = load_labeled_data(
        DataSection(
            path=str(tmp_path / "train.csv"),
            labels={0: "bearish", 1: "bullish", 2: "neutral"},
            validation_fraction=0.34,
        )
    )
    assert data.labels == ["bearish", "bullish", "neutral"]
    assert data.dropped == {"train_empty_text": 1}
    assert len(data.train) + len(data.eval) == 9


def test_unknown_labels_are_an_error(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [("a", "positive"), ("b", "Positive"), ("c", "negative")])
    with pytest.raises(DataError, match="outside the label set"):
        load_labeled_data(DataSection(path=str(tmp_path / "train.csv"), labels=["negative", "positive"]))


def test_missing_column_and_path() -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_labeled_data(DataSection(path="/nonexistent/folder"))
    with pytest.raises(DataError, match="column 'sentence' not found in .*train.csv"):
        load_labeled_data(DataSection(preset="quickstart", text_column="sentence"))


@pytest.mark.data
def test_shared_tfns_with_preset_labels() -> None:
    data = load_labeled_data(DataSection(preset="tfns", path=str(shared_data("tfns"))))
    assert data.labels == ["bearish", "bullish", "neutral"]
    assert data.describe()["label_counts"]["eval"] == {"bearish": 216, "bullish": 289, "neutral": 926}


def test_prompt_builder_examples_and_verbalizers() -> None:
    builder = PromptBuilder.resolve(PromptSection(verbalizers={"bullish": "up"}), ["bearish", "bullish"], "sentiment")
    example = builder.example("Stocks rally", 1)
    assert example["completion"] == [{"role": "assistant", "content": "up"}]
    assert [m["role"] for m in example["prompt"]] == ["user"]  # no system prompt unless asked
    assert "bearish, up" in example["prompt"][0]["content"] and "Stocks rally" in example["prompt"][0]["content"]
    with_system = PromptBuilder.resolve(PromptSection(system="You are terse."), ["a", "b"]).messages("x")
    assert with_system[0] == {"role": "system", "content": "You are terse."}
    with pytest.raises(RecipeError, match="distinct"):
        PromptBuilder.resolve(PromptSection(verbalizers={"a": "b"}), ["a", "b"])


@pytest.mark.parametrize("balance", [0.5, 1.0])
def test_balance_oversamples_train_classes_only(balance: float) -> None:
    from collections import Counter

    plain = load_labeled_data(DataSection(preset="quickstart"))
    balanced = load_labeled_data(DataSection(preset="quickstart", balance=balance))
    before, after = Counter(plain.train["label"]), Counter(balanced.train["label"])
    largest = max(before.values())
    assert after == {y: round(n + balance * (largest - n)) for y, n in before.items()}
    assert after != before  # the sample is imbalanced, so balancing changes something
    assert set(balanced.train["text"]) == set(plain.train["text"])  # nothing dropped, only repeated
    assert balanced.eval["text"] == plain.eval["text"] and balanced.eval["label"] == plain.eval["label"]
    assert balanced.train["label"][:20] != sorted(balanced.train["label"][:20])  # shuffled, not grouped by class


def test_balance_range_is_checked() -> None:
    with pytest.raises(ValueError, match="balance"):
        DataSection(preset="quickstart", balance=1.5)
