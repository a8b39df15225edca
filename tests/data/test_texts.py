"""`fintrl.data.texts`: the one reader of texts to classify, for `fintrl predict` with or without Ray."""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import pytest

from fintrl.cli.main import main
from fintrl.data.texts import read_texts
from fintrl.errors import DataError

TEXTS = ["Profit rose.\nMargins, too.", "2024", "Shares fell 3 %.", ""]


def _write(path: Path, column: str = "text") -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([column, "n"])
            writer.writerows([t, i] for i, t in enumerate(TEXTS))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({column: t, "n": i}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({column: TEXTS, "n": list(range(len(TEXTS)))}), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_table_files_give_their_text_column(suffix: str, tmp_path: Path) -> None:
    path = _write(tmp_path / f"in{suffix}", column="body")
    assert [t or "" for t in read_texts(str(path), "body")] == TEXTS  # a quoted newline, a number read as text
    with pytest.raises(DataError, match="has no column 'text'"):
        read_texts(str(path))


def test_lines_stdin_and_a_fifo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_texts(str(tmp_path / "in.txt")) == ["one", "", "two"]
    fifo = tmp_path / "pipe"  # what `--input <(zcat texts.gz)` hands over: no regular file, read as it streams
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("three\nfour\n", encoding="utf-8"))
    writer.start()
    assert read_texts(str(fifo)) == ["three", "four"]
    writer.join()
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("five\nsix\n"))
    assert read_texts("-") == ["five", "six"]


def test_bad_sources_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_texts(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is a folder"):
        read_texts(str(tmp_path))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_texts(str(tmp_path / "latin1.txt"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read it as parquet"):
        read_texts(str(tmp_path / "bad.parquet"))


def test_predict_reads_a_csv_as_it_reads_lines(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write(tmp_path / "in.csv", column="body")
    assert main(["predict", str(tiny_run), "--input", str(source), "--text-column", "body"]) == 0
    from_csv = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    given = [arg for t in TEXTS if t for arg in ("--text", t)]
    assert main(["predict", str(tiny_run), *given]) == 0
    from_text = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert from_csv == from_text and len(from_csv) == 3  # the blank row skipped (and said)
