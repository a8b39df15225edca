"""Reading a data source's files: a folder of split files (train.csv, validation.csv, ...), one file, or a Hub
dataset, each file checked before it is read (`fintrl.data.checks`), and the sha256 that provenance records."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fintrl.data import checks as data_checks
from fintrl.errors import DataError
from fintrl.recipe.schema import DataSection

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

SPLIT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_raw(section: DataSection) -> tuple[DatasetDict, dict[str, Path]]:
    """The splits, and for local data the file each split was read from (each file checked before it is read)."""
    from datasets import DatasetDict, load_dataset

    location = section.path or section.source
    assert location is not None
    local = Path(location).expanduser()
    if local.is_dir():
        files = {p.stem: p for p in sorted(local.iterdir()) if p.suffix in SPLIT_SUFFIXES}
        if not files:
            raise DataError(
                f"data.path: {local} holds no {'/'.join(SPLIT_SUFFIXES)} split files (e.g. train.csv, validation.csv)"
            )
        suffixes = {f.suffix for f in files.values()}
        if len(suffixes) > 1:
            raise DataError(f"data.path: {local} mixes file types {sorted(suffixes)}; keep one per folder")
        if section.train_split not in files:
            raise DataError(
                f"data.train_split: no {section.train_split}{suffixes.pop()} in {local}; "
                f"it has the splits {sorted(files)}"
            )
        files = {split: files[split] for split in (section.train_split, section.eval_split) if split in files}
    elif local.is_file():
        if local.suffix not in SPLIT_SUFFIXES:
            raise DataError(f"data.path: {local} is not a {'/'.join(SPLIT_SUFFIXES)} file")
        files = {section.train_split: local}
    elif section.path is not None:
        raise DataError(f"data.path: {location} does not exist")
    else:
        return load_dataset(location, section.config_name), {}
    return DatasetDict({split: read_file(path, section) for split, path in files.items()}), files


def read_file(path: Path, section: DataSection) -> Dataset:
    from datasets import load_dataset

    data_checks.sniff_file(path, section.text_column, section.label_column)
    kwargs = {"keep_default_na": False} if path.suffix == ".csv" else {}
    try:
        return load_dataset(_BUILDERS[path.suffix], data_files=str(path), split="train", **kwargs)
    except Exception as err:
        found = data_checks.explain_load_error(err, path, section.text_column)
        if found is None:
            raise
        raise found from err
