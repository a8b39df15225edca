"""Checks that stop a run before training when its data cannot produce a valid report.

Pure functions on paths, lists and label ids; `fintrl.data.loading` calls them while loading. Each problem is one line
that
names the file or recipe key and the fix, raised as `DataError` (exit code 3); what does not invalidate the report
(duplicate texts, train/eval overlap, classes without rows) is a warning plus a count in `LabeledData.describe()`.
Rows are counted from 1 (the first data row, after a CSV header, is row 1).
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import DataError, first_line

if TYPE_CHECKING:
    from fintrl.recipe.schema import DataSection

logger = logging.getLogger(__name__)

SNIFF_BYTES = 1 << 20  # each local file's first MiB is checked before the datasets library reads it
_SIGNATURES = {
    b"PK\x03\x04": "a zip archive (an Excel .xlsx?): export it as CSV UTF-8 (comma-separated)",
    b"\x1f\x8b": "gzip-compressed: decompress it first",
    b"PAR1": "a Parquet file: give it the .parquet suffix",
    b"\xff\xfe": "UTF-16 text: save it as UTF-8",
    b"\xfe\xff": "UTF-16 text: save it as UTF-8",
    b"\xd0\xcf\x11\xe0": "an old Excel/Office file: export it as CSV UTF-8 (comma-separated)",
}
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 13))  # bytes that text files (almost) never hold
_DELIMITERS = {";": ";-separated", "\t": "tab-separated", "|": "|-separated"}


def _short(value: Any, width: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def delimiter_hint(columns: Sequence[str]) -> str:
    """'; it looks ;-separated: save it comma-separated' when a single column name holds another delimiter."""
    if len(columns) == 1:
        for sep, name in _DELIMITERS.items():
            if sep in columns[0]:
                return f"; it looks {name}: save it comma-separated"
    return ""


def sniff_file(path: Path, text_column: str, label_column: str) -> None:
    """Raise DataError for a local split file that cannot be read as data, judged from its first bytes."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
        whole = not f.read(1)
    name = f"data.path: {path}"
    if not head.strip():
        raise DataError(f"{name} is empty; it needs {_layout(path, text_column, label_column)}")
    if path.suffix == ".parquet":
        if not head.startswith(b"PAR1"):
            raise DataError(
                f"{name} is not a Parquet file (no PAR1 header); give the right suffix (.csv, .jsonl) or re-export it"
            )
        return
    for signature, what in _SIGNATURES.items():
        if head.startswith(signature):
            raise DataError(f"{name} is {what}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(head, final=whole)
    except UnicodeDecodeError as err:
        if _looks_binary(head):
            raise DataError(
                f"{name} is not a text file (binary content); a {path.suffix} file must be UTF-8 text"
            ) from None
        line = head[: err.start].count(b"\n") + 1
        raise DataError(
            f"{name} is not UTF-8 text (byte 0x{head[err.start]:02x} on line {line}); save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    if _looks_binary(head):
        raise DataError(f"{name} is not a text file (binary content); a {path.suffix} file must be UTF-8 text")
    lines = text.lstrip("\ufeff").split("\n")  # not splitlines(): JSON strings may hold U+2028
    if not whole:
        lines = lines[:-1]  # the last line may be cut off
    if path.suffix == ".csv":
        _sniff_csv(name, [line for line in lines if line.strip()], whole, text_column, label_column)
    elif path.suffix == ".jsonl":
        for number, line in enumerate(lines, 1):
            if line.strip():
                _json_row(name, number, line)


def _layout(path: Path, text_column: str, label_column: str) -> str:
    if path.suffix == ".csv":
        return f"a header row ({text_column},{label_column}) and one row per example"
    return f'one JSON object per line ({{"{text_column}": "...", "{label_column}": "..."}})'


def _looks_binary(head: bytes) -> bool:
    sample = head[:65536]
    odd = len(sample) - len(sample.translate(None, _CONTROL))
    return b"\x00" in sample or odd > len(sample) * 0.05


def _sniff_csv(name: str, lines: list[str], whole: bool, text_column: str, label_column: str) -> None:
    if not lines:
        return  # one very long first line: the library reads it
    header = next(csv.reader([lines[0]]))
    if text_column not in header or label_column not in header:
        hint = delimiter_hint(header)
        if hint:
            raise DataError(
                f"{name}: found the single column {header[0]!r}{hint} (or point data.text_column/"
                "data.label_column at its columns)"
            )
    if whole and len(lines) == 1:
        raise DataError(
            f"{name} has a header ({lines[0][:80]}) but no rows; add rows (an eval split file may also be removed: "
            "validation rows are then carved from train)"
        )


def _json_row(name: str, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{name} line {number} is not valid JSON ({err.msg}, column {err.colno}): fix that line "
            "(a .jsonl file holds one JSON object per line)"
        ) from None
    if not isinstance(row, dict):
        raise DataError(
            f"{name} line {number} is a JSON {type(row).__name__}, not an object: write one "
            '{"text": ..., "label": ...} object per line'
        )
    return row


def explain_load_error(err: Exception, path: Path, text_column: str) -> DataError | None:
    """The DataError (naming the file) for a library error that reading `path` raised; None for a disk/OS problem."""
    chain: list[BaseException] = [err]
    while (chain[-1].__cause__ or chain[-1].__context__) not in (None, *chain) and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    if any(isinstance(e, OSError) for e in chain):
        return None  # full disk, permissions: fintrl.errors.translate words those
    decode = next((e for e in chain if isinstance(e, UnicodeDecodeError)), None)
    root = next((e for e in chain if type(e).__name__ != "DatasetGenerationError"), err)  # the wrapper says nothing
    name = f"data.path: {path}"
    if decode is not None:
        return DataError(f"{name} is not UTF-8 text ({first_line(decode)}); save it as UTF-8")
    if path.suffix in (".jsonl", ".json"):
        try:
            _diagnose_json(name, path, text_column)
        except DataError as found:
            return found
        except UnicodeDecodeError as found:
            return DataError(f"{name} is not UTF-8 text ({first_line(found)}); save it as UTF-8")
    layout = "comma-separated UTF-8 text with a header row" if path.suffix == ".csv" else "UTF-8 text"
    return DataError(
        f"{name} cannot be read ({type(root).__name__}: {first_line(root)}); check that it is valid "
        f"{path.suffix} ({layout})"
    )


def _diagnose_json(name: str, path: Path, text_column: str) -> None:
    """On the error path only: parse the whole file to name the bad line or the rows that are not text."""
    raw = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(raw)
        rows = whole if isinstance(whole, list) else None
    except json.JSONDecodeError:
        rows = [_json_row(name, n, line) for n, line in enumerate(raw.split("\n"), 1) if line.strip()]
    if rows is not None:
        texts([row.get(text_column) if isinstance(row, dict) else None for row in rows], f"{name} ({text_column!r})")


def texts(values: Iterable[Any], where: str) -> list[str]:
    """Texts of a split with None as "" (dropped as empty later); numbers, lists and other non-text values: an error."""
    out, bad = [], []
    for row, value in enumerate(values, 1):
        if value is None or isinstance(value, str):
            out.append(value or "")
        else:
            bad.append(f"row {row}: {_short(value, 30)} ({type(value).__name__})")
    if bad:
        raise DataError(
            f"{where}: {len(bad)} rows are not text (e.g. {', '.join(bad[:3])}); point data.text_column at "
            "the text column, or make every text a string (quote numbers in JSON)"
        )
    return out


def check_carve(train_labels: Sequence[int], labels: Sequence[str], fraction: float, where: str) -> None:
    """Raise DataError when a stratified validation carve-out of `fraction` cannot give every class an eval row."""
    counts = Counter(train_labels)
    n, k = len(train_labels), len(counts)
    if not n:
        raise DataError(f"{where}: the train split has no rows (after dropping empty texts); add rows")
    fix = "give an eval split file (e.g. validation.csv next to train.csv)"
    singles = sorted(labels[c] for c, m in counts.items() if m < 2)
    if singles:
        raise DataError(
            f"{where}: no eval split, and classes {singles} have a single train row, too few to carve a "
            f"stratified validation split from {n} rows: {fix}, or add rows"
        )
    n_eval = math.ceil(fraction * n)
    if n_eval < k:
        need = math.ceil(k / n * 100) / 100
        raise DataError(
            f"{where}: no eval split, and carving validation_fraction {fraction:g} of {n} train rows gives "
            f"{_n(n_eval, 'eval row')}, fewer than the {k} classes: {fix}, or raise data.validation_fraction to "
            f">= {need:g}"
        )
    if n - n_eval < k:
        raise DataError(
            f"{where}: carving validation_fraction {fraction:g} of {n} train rows leaves "
            f"{_n(n - n_eval, 'train row')}, fewer than the {k} classes: lower data.validation_fraction, or {fix}"
        )


def fixes(section: DataSection, carved: bool, eval_cut: bool, per_source: bool = False) -> tuple[list[str], list[str]]:
    """The recipe changes that can give the train split more classes, and the eval split a row of every class."""
    train = [f"raise data.max_train_samples (now {section.max_train_samples})"] if section.max_train_samples else []
    evals = (
        [f"raise data.max_eval_samples (now {section.max_eval_samples}{', per source' * per_source})"]
        if eval_cut
        else []
    )
    if carved:
        evals += [
            f"raise data.validation_fraction (now {section.validation_fraction:g})",
            f"give an eval split file ({section.eval_split})",
        ]
    return train, evals


def check_classes(
    train_labels: Sequence[int],
    eval_labels: Sequence[int] | None,
    labels: Sequence[str],
    where: str,
    train_fixes: Sequence[str] = (),
    eval_fixes: Sequence[str] = (),
    strict: bool = True,
) -> None:
    """At least two train classes and an eval row for every class with train rows (DataError, or a warning unless
    `strict`); classes without train rows are warnings. `eval_labels=None` checks the train split alone."""
    fail: Callable[[str], None] = _raise if strict else logger.warning
    train, evals = Counter(train_labels), Counter(eval_labels or [])
    if len(train) < 2:
        present = [labels[c] for c in sorted(train)]
        missing = [name for c, name in enumerate(labels) if c not in train]
        more = f"add rows of {missing[:5]}" if missing else "add rows of another class"
        fail(
            f"{where}: the train split has {_n(len(train_labels), 'row')} in {_n(len(train), 'class')} {present}; a "
            "classifier needs at least two classes: " + ", or ".join([more, *train_fixes])
        )
    if eval_labels is None:
        return
    no_eval = [labels[c] for c in sorted(train) if not evals[c]]
    if no_eval:
        fail(
            f"{where}: classes {no_eval} have train rows but no eval rows ({len(eval_labels)} eval rows), so the "
            "report cannot score them: " + ", or ".join([*eval_fixes, "add eval rows of them"])
        )
    eval_only = [labels[c] for c in sorted(evals) if not train[c]]
    if eval_only:
        logger.warning(
            "%s: classes %s have eval rows but no train rows: the adapter cannot learn them", where, eval_only
        )
    empty = [name for c, name in enumerate(labels) if not train[c] and not evals[c]]
    if empty:
        logger.warning("%s: labels %s have no train and no eval rows (remove them from data.labels?)", where, empty)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


def _raise(message: str) -> None:
    raise DataError(message)


def text_checks(train_texts: Sequence[str], eval_texts: Sequence[str], where: str, warn: bool = True) -> dict[str, int]:
    """Count duplicate texts within train and eval, and eval rows whose text is also a train text (exact match after
    stripping spaces); warn with a few examples. Reports only: nothing is dropped."""
    train = [t.strip() for t in train_texts]
    evals = [t.strip() for t in eval_texts]
    seen = set(train)
    found = {
        "train_duplicates": (
            len(train) - len(seen),
            _repeats(train),
            f"of {len(train)} train rows repeat an earlier train text",
        ),
        "eval_duplicates": (
            len(evals) - len(set(evals)),
            _repeats(evals),
            f"of {len(evals)} eval rows repeat an earlier eval text",
        ),
        "train_eval_overlap": (
            sum(t in seen for t in evals),
            list(dict.fromkeys(t for t in evals if t in seen)),
            f"of {len(evals)} eval rows have a text that is also in train (scores on them measure "
            "memory, and the TF-IDF baseline reads high): give disjoint splits",
        ),
    }
    for n, examples, what in found.values():
        if n and warn:
            logger.warning("%s: %d %s (e.g. %s)", where, n, what, ", ".join(_short(t) for t in examples[:3]))
    return {key: n for key, (n, _, _) in found.items()}


def _repeats(values: list[str]) -> list[str]:
    return [t for t, m in Counter(values).most_common(3) if m > 1]
