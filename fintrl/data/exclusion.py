"""`data.exclude`: train without the rows `fintrl audit` flagged as likely mislabelled.

The audit's `audit.csv` ranks every row it scored, flagged ones first. Its flagged *train* rows (all, or the
`data.exclude_top` most confidently disputed) are matched to the loaded train split by text and gold label, so the
match survives reshuffles and sampling; the eval rows are never touched, so a run with exclusions and one without
are compared on the same rows (`fintrl compare`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

COLUMNS = ("rank", "flagged", "split", "gold", "text")  # what an audit.csv holds, among others


def flagged_train_rows(path: Path) -> list[tuple[str, str]]:
    """(text, gold label) of the audit's flagged train rows, most confident disagreement first."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"data.exclude: {path} is not an audit.csv from `fintrl audit` (no {', '.join(missing)} column)"
                )
            rows = [r for r in reader if r["flagged"] == "True" and r["split"] == "train"]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"data.exclude: {path} cannot be read ({err})") from None
    try:
        rows.sort(key=lambda r: int(r["rank"]))
    except ValueError:
        raise DataError(f"data.exclude: {path}: a flagged row without a whole-number rank") from None
    return [(r["text"], r["gold"]) for r in rows]


def exclude_flagged(train: Dataset, labels: list[str], path: str, top: int | None) -> tuple[Dataset, dict[str, Any]]:
    """The train split without the audit's flagged rows, and what the report and card say about it."""
    from fintrl.data.files import file_sha256

    audit = Path(path)
    flagged = flagged_train_rows(audit)
    if not flagged:
        raise DataError(f"data.exclude: {path} flags no train rows; nothing to exclude (remove data.exclude)")
    drop = {(text, labels.index(gold)) for text, gold in flagged[:top] if gold in labels}
    keep = [i for i, (text, label) in enumerate(zip(train["text"], train["label"])) if (text, label) not in drop]
    record = {
        "file": audit.name,
        "sha256": file_sha256(audit),
        "flagged": len(flagged),
        "top": top,
        "rows": len(train) - len(keep),
        "why": "flagged by `fintrl audit` as likely mislabelled (confident learning)",
    }
    return train.select(keep), record
