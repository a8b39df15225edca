"""Where `fintrl predict --engine ray` reads and writes (`fintrl.batch.engine` runs it): the input files, sorted, and
the output folder of shards, each written atomically, with the job it belongs to (MANIFEST) so that a rerun resumes only
that job. Paths are local, or any filesystem URI pyarrow opens (s3://, gs://, hdfs://).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.data.texts import READERS, TEXT_COLUMN
from fintrl.errors import DataError, RunFolderError, first_line

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "_fintrl_bulk.json"  # the job a bulk output folder belongs to (not a run folder: see run_folder.py)
SHARD_PREFIX = "part-"
FORMATS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" not in path:
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for unknown schemes
        raise DataError(f"{path}: cannot open this filesystem ({err})") from None


@dataclass(frozen=True)
class Inputs:
    filesystem: Any
    files: list[str]  # sorted: the shards' row order
    sizes: list[int]
    reader: str  # text | csv | json | parquet (`fintrl.data.texts.READERS`)


def list_inputs(path: str) -> Inputs:
    """The input files, sorted; a folder gives every .txt, .csv, .jsonl or .parquet file under it (hidden ones
    aside)."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"--input {path}: no such file or folder")
    if info.type == pafs.FileType.Directory:
        found = [
            i
            for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.is_file and _suffix(i.path) in READERS and not _hidden(posixpath.relpath(i.path, root))
        ]
        if not found:
            raise DataError(f"--input {path}: no .txt, .csv, .jsonl or .parquet files in this folder")
    elif _suffix(info.path) not in READERS:
        raise DataError(f"--input {path}: give a .txt, .csv, .jsonl or .parquet file, or a folder of them")
    else:
        found = [info]
    readers = sorted({READERS[_suffix(i.path)] for i in found})
    if len(readers) > 1:
        raise DataError(f"--input {path}: mixes {' and '.join(readers)} files; score one kind at a time")
    found.sort(key=lambda i: i.path)
    return Inputs(fs, [i.path for i in found], [i.size for i in found], readers[0])


def _suffix(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def check_columns(inputs: Inputs, column: str) -> None:
    """Every input file has the text column: one line naming the file and its columns, before anything starts."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    if inputs.reader == "text":
        if column != TEXT_COLUMN:
            raise DataError(f"--text-column {column}: .txt files have one text a line and no columns")
        return
    for file in inputs.files:
        try:
            if inputs.reader == "parquet":
                names = pq.read_schema(file, filesystem=inputs.filesystem).names
            elif inputs.reader == "csv":
                with inputs.filesystem.open_input_stream(file) as f:
                    names = pcsv.open_csv(f).schema.names
            else:
                with inputs.filesystem.open_input_stream(file) as f:
                    names = pjson.open_json(f).schema.names  # the first block's
        except Exception as err:  # noqa: BLE001 - pyarrow / json errors: one line naming the file
            raise DataError(f"--input {file}: cannot read it as {inputs.reader} ({first_line(err)})") from None
        if column not in names:
            raise DataError(f"--input {file} has no column {column!r} (columns: {names}); pass --text-column NAME")


class ShardWriter:
    """OUTPUT/part-NNNNNN.<fmt>, each written to a hidden temporary name and moved into place once complete."""

    def __init__(self, output: str, fmt: str) -> None:
        self.output, self.fmt = output, fmt
        self.fs, self.root = _filesystem(output)

    def name(self, index: int) -> str:
        return f"{SHARD_PREFIX}{index:06d}{FORMATS[self.fmt]}"

    def _names(self) -> set[str]:
        import pyarrow.fs as pafs

        return {posixpath.basename(i.path) for i in self.fs.get_file_info(pafs.FileSelector(self.root))}

    def prepare(self, job: dict[str, Any], *, overwrite: bool) -> set[int]:
        """Create or reopen OUTPUT for `job`; returns the shards already written (none after --overwrite)."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise RunFolderError(f"--output {self.output} is a file; --engine ray writes a folder of shards")
        names = self._names() if info.type == pafs.FileType.Directory else set()
        if MANIFEST in names:
            old = json.loads(self._read(MANIFEST))
            differ = [key for key in job if old.get(key) != job[key]]
            if differ and not overwrite:
                raise RunFolderError(
                    f"--output {self.output} holds shards of another job ({', '.join(differ)} differ); pass "
                    "--overwrite to replace them, or choose another folder"
                )
            if overwrite:  # only what fintrl wrote there goes
                for name in names:
                    if name == MANIFEST or name.startswith((SHARD_PREFIX, "." + SHARD_PREFIX)):
                        self.fs.delete_file(f"{self.root}/{name}")
                names = set()
        elif names:
            raise RunFolderError(
                f"--output {self.output} exists and is not a fintrl --engine ray output (no {MANIFEST}); choose a "
                "new or empty folder"
            )
        self.fs.create_dir(self.root, recursive=True)
        self._write(MANIFEST, json.dumps(job, indent=2).encode())
        prefix, suffix = SHARD_PREFIX, FORMATS[self.fmt]
        return {int(n[len(prefix) : -len(suffix)]) for n in names if n.startswith(prefix) and n.endswith(suffix)}

    def _read(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{name}") as f:
            return f.read()

    def _write(self, name: str, data: bytes) -> None:
        tmp = f"{self.root}/.{name}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, f"{self.root}/{name}")

    def write(self, index: int, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.fmt == "jsonl":  # the rows `fintrl predict` writes, plus row, source and source_row
            data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()).encode()
        else:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            data = sink.getvalue().to_pybytes()
        self._write(self.name(index), data)


def output_schema(labels: list[str], min_confidence: float | None) -> pa.Schema:
    import pyarrow as pa

    fields = [("row", pa.int64()), ("source", pa.string()), ("source_row", pa.int64()), ("text", pa.string())]
    fields.append(("label", pa.string()))
    if min_confidence is not None:
        fields += [("top_label", pa.string()), ("confidence", pa.float64())]
    fields.append(("probabilities", pa.struct([(label, pa.float64()) for label in labels])))
    return pa.schema(fields)
