"""How a run folder (and every other fintrl output folder) is written: built aside, under a lock, swapped into place.

A run never writes into its folder directly: it builds in a hidden sibling work folder (`.NAME.incomplete/`), under
an exclusive lock (`.NAME.lock`), and only when the whole run has succeeded is the work folder swapped into place
(the old run, with `--overwrite`, is moved aside and deleted only then). A failed or interrupted run leaves its work
folder, with its checkpoints, for `--resume`. `output_folder` gives eval, audit and export outputs the same
transaction. What a run folder holds: `fintrl.run_folder`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import RecipeError, RunFolderError, StorageError
from fintrl.run_folder import ADAPTER_CONFIG, CHECKPOINTS, METRICS, RunFolder

if TYPE_CHECKING:
    from fintrl.recipe.schema import Recipe

logger = logging.getLogger(__name__)

# Sections that shape the weights and the data a checkpoint was trained on: `--resume` refuses a recipe that
# changes them. `train`, `eval`, `publish` and `output_dir` may change between attempts, except
# `eval.calibration_samples`: it decides which train rows are held out of training to fit the calibration.
RESUME_FIXED = ("model", "quantization", "lora", "peft", "data", "prompt", "seed", "eval.calibration_samples")


def enclosing_run(path: Path) -> Path | None:
    """The run folder (a recipe and a report, or an adapter) that `path` is or lies inside, if any: no output of
    fintrl goes there. A folder that merely holds a recipe (a project's own recipe.yaml) is not one."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        run = RunFolder(folder)
        if run.is_finished or run.file(ADAPTER_CONFIG).is_file():
            return folder
    return None


def check_output_file(path: str | Path, *, flag: str, overwrite: bool, inputs: tuple[str | Path, ...] = ()) -> Path:
    """The one rule for a command's output file (`predict --output`, `compare --output`, ...): never inside a run folder
    (a run is changed by no other command), never one of the command's inputs, never a folder, and never an existing
    file without --overwrite. The file itself is then written whole or not at all (`run_folder.write_atomic`)."""
    out = Path(path)
    run = enclosing_run(out.parent) or (enclosing_run(out) if out.is_dir() else None)
    if run is not None:
        raise RunFolderError(f"{flag} {out} is inside the run folder {run}; no command but `fintrl run` writes there")
    if any(out.resolve() == Path(i).expanduser().resolve() for i in inputs if i and i != "-"):
        raise RunFolderError(f"{flag} {out} is also the input; write the output to another file")
    if out.is_dir():
        raise StorageError(f"{flag} {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise RunFolderError(f"{flag} {out} exists; pass --overwrite to replace it, or choose another file")
    return out


def work_folder(final: Path) -> Path:
    return final.parent / f".{final.name}.incomplete"


def run_name(folder: Path) -> str:
    """The name a run folder has, or will have once its work folder is swapped into place."""
    name = Path(folder).resolve().name
    return name[1 : -len(".incomplete")] if name.startswith(".") and name.endswith(".incomplete") else name


def lock_path(final: Path) -> Path:
    """The lock file that says a process is writing `final` (held only while it does; the file stays)."""
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def locked(final: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on a run folder's name: a second writer fails at once with one line."""
    import fcntl

    if final.exists() and not final.is_dir():
        raise StorageError(f"{final} is a file; the output must be a folder (choose another --output-dir)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path(final), "a")  # noqa: SIM115 - held for the whole block
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):
            raise StorageError(f"cannot create {final}: a parent of it is a file") from None
        raise
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"another fintrl process is writing {final}; wait for it to finish or choose another --output-dir"
            ) from None
        _restore_interrupted_swap(final)
        yield


def _restore_interrupted_swap(final: Path) -> None:
    """A crash between the two renames of `commit` leaves the old run aside: put it back."""
    aside = sorted(final.parent.glob(f".{final.name}.replaced-*"))
    if aside and not final.exists():
        aside[-1].rename(final)
        logger.warning("restored %s from an interrupted swap", final)


def prepare(final: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> Path:
    """Decide, before anything is written, where this run builds; refuse every unsafe case with the way out.

    Returns the work folder (created, holding the recipe). The finished run at `final` is never touched here.
    """
    if resume and overwrite:
        raise RecipeError(
            "--resume and --overwrite exclude each other: --resume continues a run, --overwrite starts again"
        )
    run, work = RunFolder(final), work_folder(final)
    if final.exists() and any(final.iterdir()) and not run.is_run:
        raise RunFolderError(
            f"{final} exists and is not a fintrl run folder; choose another --output-dir "
            "(fintrl never replaces a folder it did not make)"
        )
    unfinished = work.is_dir() or (run.is_run and not run.is_finished)
    if not (resume or overwrite):
        if run.is_finished:
            raise RunFolderError(
                f"{final} already holds a finished run; use --output-dir DIR for a new one, --overwrite "
                "to replace it once the new run succeeds, or --resume to train it further"
            )
        if unfinished:
            where = work if work.is_dir() else final
            raise RunFolderError(
                f"an unfinished run of {final} (failed or interrupted) is in {where}; --resume "
                "continues it from its last checkpoint, --overwrite starts again"
            )
    if overwrite and work.is_dir():
        shutil.rmtree(work)
    if resume:
        _prepare_resume(run, work, recipe)
    work.mkdir(parents=True, exist_ok=True)
    RunFolder(work).write_recipe(recipe)
    return work


@contextlib.contextmanager
def eval_output(final: Path, *, overwrite: bool, kind: str = "eval", marker: str = METRICS) -> Iterator[Path]:
    """Where `fintrl eval` (or `kind`: audit, export, whose output holds `marker`) builds its output: never a run
    folder's own files, never an older output without --overwrite (and then only one of its own kind).

    Yields a work folder; on success it replaces `final`, on failure it is removed (an eval is cheap to redo).
    """
    run = enclosing_run(final.parent)
    if run is not None:
        raise RunFolderError(f"{final} is inside the run folder {run}; {kind} never writes into a run's files")
    with locked(final):
        own_kind = marker != METRICS and (final / marker).is_file()  # a merged export holds a recipe, as runs do
        if (RunFolder(final).is_run and not own_kind) or (final / ADAPTER_CONFIG).is_file():
            raise RunFolderError(
                f"{final} is a run folder: {kind} never writes into a run's own files; choose another --output-dir"
            )
        if final.exists() and any(final.iterdir()):
            if not (final / marker).is_file():
                raise RunFolderError(f"{final} exists and holds no fintrl {kind}; choose another --output-dir")
            if not overwrite:
                raise RunFolderError(
                    f"{final} already holds an {kind}; --overwrite replaces it once the new {kind} "
                    "succeeds, or choose another --output-dir"
                )
        work = work_folder(final)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            yield work
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        commit(work, final)


def _prepare_resume(run: RunFolder, work: Path, recipe: Recipe) -> None:
    """Continue in the work folder, or seed it with the finished run's checkpoints; the recipe must still fit them."""
    source = RunFolder(work) if work.is_dir() else run
    if not source.is_run:
        logger.warning("--resume: nothing to resume in %s, starting from scratch", run.path)
        return
    differences = recipe_differences(source.recipe(), recipe)
    if differences:
        raise RunFolderError(
            f"--resume: the recipe differs from the one the checkpoint was trained with in "
            f"{'; '.join(differences)}; resume with the same recipe, or --overwrite to start again"
        )
    if source is run:  # a finished (or legacy unfinished) run: train further from a copy of its checkpoints
        if last_checkpoint(run.path) is None:
            if run.is_finished:
                raise RunFolderError(
                    f"--resume: {run.path} has no complete checkpoint to continue from; --overwrite trains it again"
                )
            return
        work.mkdir(parents=True, exist_ok=True)
        shutil.copytree(run.file(CHECKPOINTS), work / CHECKPOINTS, dirs_exist_ok=True)


def recipe_differences(old: Recipe, new: Recipe) -> list[str]:
    """`lora.r: 16 -> 32`-style lines for every value of RESUME_FIXED that changed."""
    from fintrl.recipe.yaml_io import read_field

    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}.{key}").items()}
        return {prefix: node}

    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    out = []
    for section in RESUME_FIXED:
        a, b = flat(read_field(before, section), section), flat(read_field(after, section), section)
        out += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return out


def commit(work: Path, final: Path) -> None:
    """Swap the finished work folder into place; the run it replaces is moved aside first and deleted only after."""
    if final.exists():
        aside = final.parent / f".{final.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        final.rename(aside)
        work.rename(final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        work.rename(final)


def keep_if_resumable(work: Path, final: Path, *, stopped: bool = False) -> None:
    """After a failure: keep the work folder when a checkpoint makes it resumable (and say so); else remove it.
    `stopped`: the caller stopped the run on purpose (a sweep pruned it), so it is removed without a word."""
    if stopped or last_checkpoint(work) is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        logger.error(
            "the unfinished run is kept in %s; `fintrl run RECIPE --output-dir %s --resume` continues it from "
            "its last checkpoint, --overwrite discards it",
            work,
            final,
        )


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from (a full disk or a kill mid-save), or None when it is whole.

    transformers writes `trainer_state.json` last, so its absence means an unfinished save; safetensors and torch's
    zip format both fail to open when truncated.
    """
    from safetensors import safe_open

    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "trainer_state.json missing or unreadable"
    for weights in folder.glob("*.safetensors"):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - any failure to open means a truncated file
            return f"{weights.name} is truncated"
    for pickle in folder.glob("*.pt"):
        if not zipfile.is_zipfile(pickle):
            return f"{pickle.name} is truncated"
    return None


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest whole checkpoint in `run_dir/checkpoints`; incomplete ones are skipped, with a warning."""
    folder = run_dir / CHECKPOINTS
    steps = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for candidate in sorted(steps, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return str(candidate)
        logger.warning("skipping incomplete checkpoint %s: %s", candidate, problem)
    return None
