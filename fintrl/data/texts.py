"""Texts to classify, as `fintrl predict` reads them (on one machine, or on Ray): the one table of input formats and
how each reads, so a file that one engine takes the other takes too.

- `.txt`, stdin (`-`), a FIFO or process substitution (`<(zcat texts.gz)`): one text per line;
- `.csv` (quoted newlines inside a text allowed; the text column read as text, whatever it looks like), `.jsonl` /
  `.ndjson` (JSON Lines), `.parquet`: the `text` column, or the one `--text-column` names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fintrl.errors import DataError

READERS = {".txt": "text", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}
TEXT_COLUMN = "text"  # the column a .txt file's lines make (as Ray Data's read_text names it)


def not_unicode(texts: list[str]) -> list[int]:
    """Positions of texts that cannot be encoded as UTF-8 (lone surrogates such as "\\ud800", which JSON and Python
    strings allow): no tokenizer takes them."""
    bad = []
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(i)
    return bad


def check_unicode(texts: list[str], where: str) -> None:
    """A DataError (exit 3) naming the first text that cannot be encoded."""
    bad = not_unicode(texts)
    if bad:
        raise DataError(
            f"{where}: text {bad[0] + 1} ({len(bad)} in all) is not valid Unicode (a lone surrogate); send UTF-8"
        )


def reader_for(path: str) -> str | None:
    """The reader of a file by its suffix (`text`, `csv`, `json`, `parquet`), or None for an unknown one."""
    return READERS.get(Path(path).suffix.lower())


def csv_options(column: str) -> tuple[Any, Any]:
    """pyarrow's CSV parse and convert options: quoted newlines inside a text, the text column read as a string."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(newlines_in_values=True), pcsv.ConvertOptions(column_types={column: pa.string()})


def read_column(path: str, reader: str, column: str) -> list[str | None]:
    """One column of a CSV, JSON Lines or Parquet file, as Python values (None where a row has none)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    try:
        if reader == "csv":
            parse, convert = csv_options(column)
            table = pcsv.read_csv(path, parse_options=parse, convert_options=convert)
        elif reader == "json":
            table = pjson.read_json(path)
        else:
            table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors: one line naming the file
        raise DataError(f"--input {path}: cannot read it as {reader} ({' '.join(str(err).split())[:200]})") from None
    if column not in table.column_names:
        raise DataError(f"--input {path} has no column {column!r} (columns: {table.column_names}); pass --text-column")
    return [None if v is None else str(v) for v in table.column(column).to_pylist()]


def read_texts(source: str, column: str = TEXT_COLUMN) -> list[str | None]:
    """Every text of `source` in order, blank ones included (the caller says what it skips): `-` is stdin; a path
    with a table suffix reads `column`; any other readable file (a FIFO too) gives one text per line."""
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    path = Path(source)
    if not path.exists():
        raise DataError(f"--input {path}: no such file (one text per line, a CSV/JSONL/Parquet file, or - for stdin)")
    if path.is_dir():
        raise DataError(f"--input {path} is a folder; give a file (a folder of files: --engine ray)")
    reader = reader_for(source) or "text"
    if reader != "text":
        return read_column(source, reader, column)
    try:
        with open(path, encoding="utf-8") as f:  # open(), not read_text(): a FIFO is read once, as it streams
            return f.read().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"--input {path} is not UTF-8 text; save it as UTF-8, one text per line") from None
