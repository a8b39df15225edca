"""`data.exclude`: the train rows an audit flagged (by text and gold label, most confident first) are left out of
training, eval rows never; the report, provenance and card say how many and why; bad audit files are one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fintrl.cli.main import main
from fintrl.data.loading import load_labeled_data
from fintrl.data.presets import PRESETS
from fintrl.errors import DataError
from fintrl.recipe.schema import DataSection

COLUMNS = ["rank", "flagged", "split", "row", "gold", "suggested", "predicted", "margin", "text"]


def train_rows() -> list[dict[str, str]]:
    with (Path(PRESETS["quickstart"].source) / "train.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def audit_csv(path: Path, flagged: list[dict[str, str]], *, split: str = "train") -> Path:
    """An audit.csv as `fintrl audit` writes it: flagged rows first, by rank, then the others."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for rank, row in enumerate(flagged, 1):
            other = "positive" if row["label"] != "positive" else "negative"
            writer.writerow(
                {
                    "rank": rank,
                    "flagged": True,
                    "split": split,
                    "row": rank,
                    "gold": row["label"],
                    "suggested": other,
                    "predicted": other,
                    "margin": 0.5,
                    "text": row["text"],
                }
            )
        writer.writerow(
            {
                "rank": "",
                "flagged": False,
                "split": "train",
                "row": 99,
                "gold": "neutral",
                "suggested": "",
                "predicted": "neutral",
                "margin": "",
                "text": train_rows()[-1]["text"],
            }
        )
    return path


def test_flagged_train_rows_are_left_out_most_confident_first(tmp_path: Path) -> None:
    rows = train_rows()
    audit = audit_csv(tmp_path / "audit.csv", rows[:3])
    plain = load_labeled_data(DataSection(preset="quickstart"))
    cut = load_labeled_data(DataSection(preset="quickstart", exclude=str(audit)))
    assert len(cut.train) == len(plain.train) - 3 and cut.eval["text"] == plain.eval["text"]
    assert not {r["text"] for r in rows[:3]} & set(cut.train["text"])
    assert cut.describe()["excluded"] == {
        "file": "audit.csv",
        "flagged": 3,
        "top": None,
        "rows": 3,
        "why": "flagged by `fintrl audit` as likely mislabelled (confident learning)",
    }
    assert "audit.csv (data.exclude)" in cut.files  # in the provenance, by name and sha256

    top = load_labeled_data(DataSection(preset="quickstart", exclude=str(audit), exclude_top=1))
    assert len(top.train) == len(plain.train) - 1 and rows[0]["text"] not in top.train["text"]
    assert rows[1]["text"] in top.train["text"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\nx,neutral\n", "is not an audit.csv from `fintrl audit` (no rank, flagged, split, gold column)"),
        (None, "flags no train rows; nothing to exclude"),
    ],
)
def test_an_audit_file_that_cannot_be_used_is_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "audit.csv"
    if content is None:
        audit_csv(path, train_rows()[:2], split="eval")  # eval rows are never excluded
    else:
        path.write_text(content)
    with pytest.raises(DataError, match="data.exclude: ") as err:
        load_labeled_data(DataSection(preset="quickstart", exclude=str(path)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validate_names_a_missing_audit_file_and_a_top_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.csv"
    assert main(["validate", "recipes/quickstart.yaml", "--set", f"data.exclude={missing}"]) == 2
    assert f"data.exclude: no such file {missing}" in capsys.readouterr().err
    assert main(["validate", "recipes/quickstart.yaml", "--set", "data.exclude_top=5"]) == 2
    assert "data.exclude_top needs data.exclude" in capsys.readouterr().err


def test_a_run_trained_without_flagged_rows_says_so_in_its_card(tmp_path: Path) -> None:
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.runner import run
    from tests.helpers import tiny_recipe_dict

    audit = audit_csv(tmp_path / "audit.csv", train_rows()[:4])
    raw = tiny_recipe_dict(tmp_path / "run", max_train_samples=None, exclude=str(audit), exclude_top=2)
    raw["train"] |= {"max_steps": 1}
    raw["eval"] |= {"baselines": False, "calibration_samples": 0}
    report = run(recipe_from_dict(raw))
    assert report["data"]["excluded"]["rows"] == 2 and report["data"]["n_train"] == len(train_rows()) - 2
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Excluded from training: 2 rows flagged by `fintrl audit` as likely mislabelled" in card
    assert "the top 2 of 4 flagged train rows of `audit.csv`" in card
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]["data"]["files"]
