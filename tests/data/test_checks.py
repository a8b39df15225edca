"""Data checks before training (issue #14, item 4): each bad input is one DataError line naming the file or key and
the fix; duplicates and train/eval overlap are warned about and counted in `describe()["checks"]`, never dropped."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fintrl.data import checks as data_checks
from fintrl.data.loading import load_labeled_data
from fintrl.errors import DataError, FintrlError
from fintrl.recipe.schema import DataSection
from tests.data.test_loading import _csv

UP_DOWN = ["up", "down"]


def _fails(section: DataSection, *names: str, error: type[FintrlError] = DataError) -> str:
    """Load, expect `error`, and check that its message is one line that names every one of `names`."""
    with pytest.raises(error) as info:
        load_labeled_data(section)
    message = str(info.value)
    assert type(info.value) is error and info.value.exit_code == error.exit_code
    assert "\n" not in message and all(name in message for name in names), message
    return message


def _file(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _rows(n: int, classes: list[str], prefix: str = "text") -> list[tuple[str, str]]:
    return [(f"{prefix} {i}", classes[i % len(classes)]) for i in range(n)]


# --- files that cannot be read as data -------------------------------------------------------------------------------


def test_empty_csv(tmp_path: Path) -> None:
    path = _file(tmp_path / "train.csv", "")
    assert "is empty" in _fails(DataSection(path=str(path)), "data.path", "train.csv", "header row")
    _file(tmp_path / "blank" / "train.csv", "\n \n")  # whitespace only, in a folder
    _fails(DataSection(path=str(tmp_path / "blank")), "train.csv", "is empty")


def test_header_only_csv(tmp_path: Path) -> None:
    _csv(tmp_path / "d" / "train.csv", _rows(10, UP_DOWN))
    _file(tmp_path / "d" / "validation.csv", "text,label\n")
    assert "has a header (text,label) but no rows" in _fails(DataSection(path=str(tmp_path / "d")), "validation.csv")


def test_latin1_csv(tmp_path: Path) -> None:
    path = _file(tmp_path / "train.csv", "text,label\nNokia up,up\nCaf\xe9 sales down,down\n".encode("latin-1"))
    message = _fails(DataSection(path=str(path)), "data.path", "train.csv", "not UTF-8", "line 3", "save it as UTF-8")
    assert "0xe9" in message


def test_non_utf8_after_the_sniffed_bytes_still_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_checks, "SNIFF_BYTES", 32)  # the library finds it: its error is converted
    rows = "".join(f"row {i},{UP_DOWN[i % 2]}\n" for i in range(20))
    path = _file(tmp_path / "train.csv", ("text,label\n" + rows + "Caf\xe9,up\n").encode("latin-1"))
    _fails(DataSection(path=str(path)), "data.path", "train.csv", "not UTF-8")


@pytest.mark.parametrize(("sep", "looks"), [(";", "looks ;-separated"), ("\t", "looks tab-separated")])
def test_wrong_delimiter(tmp_path: Path, sep: str, looks: str) -> None:
    lines = [sep.join(["text", "label"])] + [sep.join(row) for row in _rows(10, UP_DOWN)]
    path = _file(tmp_path / "train.csv", "\n".join(lines) + "\n")
    _fails(DataSection(path=str(path)), "data.path", "train.csv", looks, "save it comma-separated")


def test_binary_file_with_csv_suffix(tmp_path: Path) -> None:
    path = _file(tmp_path / "train.csv", bytes(range(256)) * 8)
    _fails(DataSection(path=str(path)), "data.path", "train.csv", "not a text file")
    xlsx = _file(tmp_path / "x" / "train.csv", b"PK\x03\x04" + bytes(100))  # an Excel file renamed
    _fails(DataSection(path=str(xlsx)), "train.csv", "zip archive", "export it as CSV")
    fake = _file(tmp_path / "p" / "train.parquet", "text,label\na,up\n")
    _fails(DataSection(path=str(fake)), "train.parquet", "not a Parquet file")


def test_malformed_json_line(tmp_path: Path) -> None:
    lines = ['{"text": "a", "label": "up"}', '{"text": "b", "label": ', '{"text": "c", "label": "down"}']
    path = _file(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    _fails(DataSection(path=str(path)), "data.path", "train.jsonl", "line 2 is not valid JSON")
    _file(path, '{"text": "a", "label": "up"}\n["b", "down"]\n')
    _fails(DataSection(path=str(path)), "train.jsonl", "line 2 is a JSON list, not an object")


def test_malformed_json_line_after_the_sniffed_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_checks, "SNIFF_BYTES", 64)
    good = [json.dumps({"text": t, "label": y}) for t, y in _rows(10, UP_DOWN)]
    path = _file(tmp_path / "train.jsonl", "\n".join([*good, '{"text": "x", "label": "up"', *good]) + "\n")
    _fails(DataSection(path=str(path)), "data.path", "train.jsonl", "line 11 is not valid JSON")


def test_csv_rows_the_parser_rejects_name_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path / "train.csv", "text,label\na,up\nb,down,extra,more\nc,up\n")
    _fails(DataSection(path=str(path)), "data.path", "train.csv", "cannot be read")


# --- rows ------------------------------------------------------------------------------------------------------------


def test_numbers_as_texts_in_jsonl(tmp_path: Path) -> None:
    rows = [
        {"text": "Profit rose", "label": "up"},
        {"text": 12.5, "label": "down"},
        {"text": None, "label": "up"},
        {"text": ["a", "list"], "label": "down"},
        {"text": 3, "label": "up"},
    ]
    path = _file(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    message = _fails(DataSection(path=str(path)), "data.text_column", "train.jsonl", "3 rows are not text")
    assert "row 2: 12.5 (float)" in message and "(list)" in message and "row 3" not in message  # null is not "not text"


def test_null_and_empty_texts_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [{"text": t, "label": y} for t, y in _rows(20, UP_DOWN)] + [
        {"text": None, "label": "up"},
        {"text": " ", "label": "down"},
    ]
    path = _file(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = load_labeled_data(DataSection(path=str(path), validation_fraction=0.2))
    assert data.dropped == {"train_empty_text": 2} and len(data.train) + len(data.eval) == 20


def test_unknown_labels_and_missing_columns_are_data_errors(tmp_path: Path) -> None:
    _csv(tmp_path / "d" / "train.csv", _rows(10, UP_DOWN))
    _csv(tmp_path / "d" / "validation.csv", [("a", "up"), ("b", "sideways")])
    _fails(
        DataSection(path=str(tmp_path / "d")),
        "data.label_column",
        "validation.csv",
        "outside the label set",
        "sideways",
    )
    _fails(
        DataSection(path=str(tmp_path / "d"), text_column="sentence"),
        "data.text_column",
        "train.csv",
        "'sentence' not found",
    )


def test_one_class_only(tmp_path: Path) -> None:
    path = _csv(tmp_path / "train.csv", _rows(10, ["up"]))
    _fails(DataSection(path=str(path)), "train.csv", "1 class ['up']", "at least two classes")
    message = _fails(DataSection(path=str(path), labels=["up", "down"]), "train.csv", "add rows of ['down']")
    assert "max_train_samples" not in message


def test_max_train_samples_that_leaves_one_class_names_the_key(tmp_path: Path) -> None:
    _csv(tmp_path / "d" / "train.csv", [("only up", "up")] + _rows(10, ["down"]) + _rows(10, ["up"], "more"))
    _csv(tmp_path / "d" / "validation.csv", _rows(4, UP_DOWN, "eval"))
    section = DataSection(path=str(tmp_path / "d"), max_train_samples=1)
    _fails(section, f"data ({tmp_path / 'd'})", "at least two classes", "raise data.max_train_samples (now 1)")


def test_class_missing_from_eval(tmp_path: Path) -> None:
    _csv(tmp_path / "d" / "train.csv", _rows(9, ["up", "down", "flat"]))
    _csv(tmp_path / "d" / "validation.csv", _rows(4, UP_DOWN, "eval"))
    message = _fails(
        DataSection(path=str(tmp_path / "d")), str(tmp_path / "d"), "classes ['flat'] have train rows but no eval rows"
    )
    assert "add eval rows" in message
    capped = DataSection(path=str(tmp_path / "d"), max_eval_samples=1)  # the cap leaves one class
    _fails(capped, "raise data.max_eval_samples (now 1)")


def test_labels_without_rows_are_only_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _csv(tmp_path / "d" / "train.csv", _rows(10, UP_DOWN))
    _csv(tmp_path / "d" / "validation.csv", _rows(4, UP_DOWN, "eval"))
    with caplog.at_level(logging.WARNING):
        data = load_labeled_data(DataSection(path=str(tmp_path / "d"), labels=["up", "down", "flat"]))
    assert data.labels == ["up", "down", "flat"]
    assert "labels ['flat'] have no train and no eval rows" in caplog.text


@pytest.mark.parametrize("n", [9, 3])
def test_too_few_rows_to_carve(tmp_path: Path, n: int) -> None:
    path = _csv(tmp_path / "train.csv", _rows(n, ["up", "down", "flat"]))
    if n == 9:  # 10% of 9 rows is 1 eval row for 3 classes
        message = _fails(
            DataSection(path=str(path)), "data.validation_fraction", "train.csv", "9 train rows gives 1 eval row"
        )
        assert "give an eval split file" in message and "raise data.validation_fraction to >= 0.34" in message
        fixed = load_labeled_data(DataSection(path=str(path), validation_fraction=0.34))  # the fix works
        assert set(fixed.eval["label"]) == {0, 1, 2}
    else:  # one row per class: stratification cannot work
        message = _fails(
            DataSection(path=str(path), validation_fraction=0.5),
            "data.validation_fraction",
            "train.csv",
            "a single train row",
        )
        assert "give an eval split file" in message and "Traceback" not in message


def test_duplicated_file_reports_train_eval_overlap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _csv(tmp_path / "d" / "train.csv", _rows(20, UP_DOWN) + [("text 0", "up")])  # one repeat within train
    shutil.copy(tmp_path / "d" / "train.csv", tmp_path / "d" / "validation.csv")
    with caplog.at_level(logging.WARNING):
        data = load_labeled_data(DataSection(path=str(tmp_path / "d")))
    checks = data.describe()["checks"]
    assert checks == {"train_duplicates": 1, "eval_duplicates": 1, "train_eval_overlap": 21}
    assert len(data.train) == 21 and len(data.eval) == 21  # reported, not dropped
    lines = [r.getMessage() for r in caplog.records if "also in train" in r.getMessage()]
    assert (
        len(lines) == 1
        and "21 of 21 eval rows" in lines[0]
        and "'text 0'" in lines[0]
        and str(tmp_path / "d") in lines[0]
    )


def test_clean_data_reports_zero_counts() -> None:
    assert load_labeled_data(DataSection(preset="quickstart")).describe()["checks"] == {
        "train_duplicates": 0,
        "eval_duplicates": 0,
        "train_eval_overlap": 0,
    }


def test_mixture_uses_the_same_overlap_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _csv(tmp_path / "a" / "train.csv", _rows(10, UP_DOWN, "a"))
    _csv(tmp_path / "a" / "validation.csv", _rows(4, UP_DOWN, "a eval"))
    _csv(tmp_path / "b" / "train.csv", _rows(6, UP_DOWN, "b"))
    _csv(tmp_path / "b" / "validation.csv", _rows(4, UP_DOWN, "a"))  # b's eval texts are a's train texts
    with caplog.at_level(logging.WARNING):
        data = load_labeled_data(DataSection(mixture=[{"path": str(tmp_path / "a")}, {"path": str(tmp_path / "b")}]))
    assert data.describe()["checks"] == {"train_duplicates": 0, "eval_duplicates": 0, "train_eval_overlap": 4}
    assert [p["checks"]["train_eval_overlap"] for p in data.mixture] == [0, 0]  # across sources, not within one
    assert (
        sum(
            "data.mixture: 4 of 8 eval rows have a text that is also in train" in r.getMessage() for r in caplog.records
        )
        == 1
    )


def test_mixture_source_errors_keep_their_type(tmp_path: Path) -> None:
    _csv(tmp_path / "a" / "train.csv", _rows(10, UP_DOWN))
    _csv(tmp_path / "a" / "validation.csv", _rows(4, UP_DOWN, "eval"))
    _file(tmp_path / "b" / "train.csv", "text;label\na;up\nb;down\n")
    section = DataSection(mixture=[{"path": str(tmp_path / "a")}, {"path": str(tmp_path / "b")}])
    _fails(section, "data.mixture.1 (b)", "train.csv", "looks ;-separated")


def test_text_checks_counts_without_dropping() -> None:
    counts = data_checks.text_checks(["a", "b", "a ", "c"], ["b", "d", "d"], "here", warn=False)
    assert counts == {"train_duplicates": 1, "eval_duplicates": 1, "train_eval_overlap": 1}
