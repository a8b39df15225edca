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
        self.dest = self.root  # where shards go: OUTPUT, or its `.overwrite` sibling until an --overwrite succeeds
        parent, name = posixpath.split(self.root.rstrip("/"))
        self.staging = posixpath.join(parent, f".{name}.overwrite")

    def name(self, index: int) -> str:
        return f"{SHARD_PREFIX}{index:06d}{FORMATS[self.fmt]}"

    def _names(self, folder: str) -> set[str]:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return set()
        return {posixpath.basename(i.path) for i in self.fs.get_file_info(pafs.FileSelector(folder))}

    def _job_of(self, folder: str, names: set[str]) -> dict[str, Any] | None:
        return json.loads(self._read(f"{folder}/{MANIFEST}")) if MANIFEST in names else None

    def prepare(self, job: dict[str, Any], *, overwrite: bool) -> set[int]:
        """Create or reopen OUTPUT for `job`; returns the shards already written. With --overwrite over an earlier
        output, the new shards are built beside it (`.NAME.overwrite`, resumable too) and replace fintrl's files in
        OUTPUT only once every shard is written (`finish`): a failed or interrupted overwrite loses nothing."""
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.root).type == pafs.FileType.File:
            raise RunFolderError(f"--output {self.output} is a file; --engine ray writes a folder of shards")
        names = self._names(self.root)
        old = self._job_of(self.root, names)
        if old is None and names:
            raise RunFolderError(
                f"--output {self.output} exists and is not a fintrl --engine ray output (no {MANIFEST}); choose a "
                "new or empty folder"
            )
        if old is not None and overwrite:
            self.dest = self.staging
            names = self._names(self.staging)
            if self._job_of(self.staging, names) != job:  # an earlier overwrite of another job: start it again
                self._clear(self.staging, names)
                names = set()
        elif old is not None and old != job:
            differ = [key for key in job if old.get(key) != job[key]]
            raise RunFolderError(
                f"--output {self.output} holds shards of another job ({', '.join(differ)} differ); pass "
                "--overwrite to replace them (once the new ones are written), or choose another folder"
            )
        self.fs.create_dir(self.dest, recursive=True)
        self._write(MANIFEST, json.dumps(job, indent=2).encode())
        prefix, suffix = SHARD_PREFIX, FORMATS[self.fmt]
        return {int(n[len(prefix) : -len(suffix)]) for n in names if n.startswith(prefix) and n.endswith(suffix)}

    def finish(self) -> None:
        """After every shard is written: an --overwrite's new shards replace fintrl's files in OUTPUT (others stay)."""
        if self.dest == self.root:
            return
        self._clear(self.root, self._names(self.root))
        for name in self._names(self.staging):
            self.fs.move(f"{self.staging}/{name}", f"{self.root}/{name}")
        self.fs.delete_dir(self.staging)
        self.dest = self.root

    def _clear(self, folder: str, names: set[str]) -> None:
        """Delete what fintrl wrote in `folder` (the manifest, shards, half-written shards), and nothing else."""
        for name in names:
            if name == MANIFEST or name.startswith((SHARD_PREFIX, "." + SHARD_PREFIX)):
                self.fs.delete_file(f"{folder}/{name}")

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _write(self, name: str, data: bytes) -> None:
        tmp = f"{self.dest}/.{name}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, f"{self.dest}/{name}")

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
