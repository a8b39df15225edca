"""THE run-folder contract: its file names, reading and writing its report, the lock, and the build-aside transaction.

A run folder is what every later step reads (eval, card, publish). So a run never writes into it directly: it builds
in a hidden sibling work folder (`.NAME.incomplete/`), under an exclusive lock (`.NAME.lock`), and only when the
whole run has succeeded is the work folder swapped into place (the old run, with `--overwrite`, is moved aside and
deleted only then). A failed or interrupted run leaves its work folder, with its checkpoints, for `--resume`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from fintrl.errors import RecipeError, RunFolderError, StorageError

if TYPE_CHECKING:
    from fintrl.recipe import Recipe

logger = logging.getLogger(__name__)

RECIPE = "recipe.yaml"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
TRAIN_LOG = "train_log.jsonl"
CARD = "README.md"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"
TRAINING_CURVE_PNG = "training_loss.png"
COVERAGE_PNG = "coverage.png"  # accuracy against coverage: what abstaining below a confidence buys
CALIBRATION = "calibration.json"  # the temperature `eval` and `predict` apply (`fintrl.calibration`)
CHECKPOINTS = "checkpoints"
EXPORT_INFO = "fintrl_export.json"  # a merged export (`fintrl export --merged`): source, labels, prompt, agreement
AUDIT_CSV = "audit.csv"  # `fintrl audit`: every audited row, flagged ones first (`fintrl.audit`)
AUDIT_SUMMARY = "audit.json"  # its thresholds, counts per class pair, and how each split was scored

# Sections that shape the weights and the data a checkpoint was trained on: `--resume` refuses a recipe that
# changes them. `train`, `eval`, `publish` and `output_dir` may change between attempts, except
# `eval.calibration_samples`: it decides which train rows are held out of training to fit the calibration.
RESUME_FIXED = ("model", "quantization", "lora", "peft", "data", "prompt", "seed", "eval.calibration_samples")


class Report(TypedDict, total=False):
    """`metrics.json`: what a run or an eval measured. Written once, by the run (or `fintrl eval`) that owns it.

    Headline metrics sit at the top level; `fintrl.metrics.classification_metrics` fills those, `runner.evaluate` the
    scoring and data parts, and a run adds training. Every reader (card, publish, versions, CLI) goes through here.
    """

    n: int
    accuracy: float
    f1_macro: float
    f1_weighted: float
    f1_micro: float
    precision_macro: float
    recall_macro: float
    mcc: float
    ece: float  # these three: of the probabilities in predictions.jsonl (calibrated when a calibration applied)
    nll: float
    brier: float
    intervals: dict[str, Any]  # accuracy, f1_macro, f1_weighted, mcc -> [lo, hi]; method, level, resamples, seed
    calibration: dict[str, Any]  # temperature, fitted_on, applied, before / after: nll, brier, ece
    coverage: dict[str, Any]  # risk-coverage: table (100/90/80/50 %) and curve of coverage, n, accuracy, min_confidence
    invalid_rate: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion_matrix: dict[str, list[Any]]  # labels, matrix (rows gold, columns predicted)
    scoring: dict[str, Any]  # mode, max_length, n_truncated, n_invalid, examples_per_second
    model: str  # the base's Hub id or folder name: never a path
    data: dict[str, Any]  # LabeledData.describe(): source (portable), labels, splits, counts, checks
    environment: dict[str, Any]  # device and framework versions the report was measured with
    baselines: dict[str, dict[str, float]]  # majority, tfidf_logreg -> headline metrics
    per_source: dict[str, dict[str, Any]]  # a mixture: each source's metrics
    train: dict[str, Any]  # the Trainer's metrics, resumed_from (a checkpoint name), trainable/total_parameters,
    # learning_curve_seconds
    learning_curve: list[dict[str, Any]]
    train_args: dict[str, Any]  # the SFTConfig values the card lists
    timings: dict[str, float]  # seconds per stage


@dataclass(frozen=True)
class RunFolder:
    """A finished (or being built) run folder: the one place that knows its file names.

    >>> run = RunFolder(Path("runs/quickstart"))
    >>> run.metrics()["accuracy"]
    """

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def is_run(self) -> bool:
        return self.file(RECIPE).is_file()

    @property
    def is_finished(self) -> bool:
        return self.file(RECIPE).is_file() and self.file(METRICS).is_file()

    def require_finished(self, command: str) -> RunFolder:
        """Refuse, with the next step to take, a path that is not a finished run."""
        if not self.path.exists():
            raise RunFolderError(f"{self.path}: no such run folder")
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder")
        if not self.is_run:
            raise RunFolderError(f"{self.path} is not a fintrl run folder (no {RECIPE}); `fintrl run RECIPE` makes one")
        if not self.is_finished:
            raise RunFolderError(
                f"{self.path} holds no finished run (no {METRICS}); finish it with "
                f"`fintrl run {self.path / RECIPE} --resume` before `fintrl {command}`"
            )
        return self

    def recipe(self) -> Recipe:
        from fintrl.recipe import load_recipe

        if not self.is_run:
            raise RunFolderError(f"{self.path} is not a fintrl run folder (no {RECIPE})")
        return load_recipe(self.file(RECIPE))

    def metrics(self) -> Report:
        try:
            return json.loads(self.file(METRICS).read_text())
        except FileNotFoundError:
            raise RunFolderError(f"{self.path} has no {METRICS}: run `fintrl run` (or `fintrl eval`) first") from None
        except json.JSONDecodeError as err:
            raise RunFolderError(f"{self.file(METRICS)} is corrupt ({err.msg}); rerun the run or eval") from None

    def labels(self) -> list[str] | None:
        """The label set the run was scored on, or None for a folder without a report (a bare adapter)."""
        return self.metrics()["data"]["labels"] if self.file(METRICS).is_file() else None

    def write_metrics(self, metrics: Report) -> None:
        write_atomic(self.file(METRICS), json.dumps(metrics, indent=2))

    def write_recipe(self, recipe: Recipe) -> None:
        from fintrl.recipe import dump_recipe

        dump_recipe(recipe, self.file(RECIPE))


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing (a temp file beside it, then an atomic rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it; mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def work_folder(final: Path) -> Path:
    return final.parent / f".{final.name}.incomplete"


def run_name(folder: Path) -> str:
    """The name a run folder has, or will have once its work folder is swapped into place."""
    name = Path(folder).resolve().name
    return name[1 : -len(".incomplete")] if name.startswith(".") and name.endswith(".incomplete") else name


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def locked(final: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on a run folder's name: a second writer fails at once with one line."""
    import fcntl

    if final.exists() and not final.is_dir():
        raise StorageError(f"{final} is a file; the output must be a folder (choose another --output-dir)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        handle = open(_lock_path(final), "a")  # noqa: SIM115 - held for the whole block
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
    """Where `fintrl eval` (or `kind`, e.g. audit, whose output holds `marker`) builds its report: never a run folder's
    own files, never an older output without --overwrite.

    Yields a work folder; on success it replaces `final`, on failure it is removed (an eval is cheap to redo).
    """
    with locked(final):
        if RunFolder(final).is_run or (final / ADAPTER_CONFIG).is_file():
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

    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}.{key}").items()}
        return {prefix: node}

    def at(raw: dict[str, Any], dotted: str) -> Any:
        for key in dotted.split("."):
            raw = raw.get(key) if isinstance(raw, dict) else None
        return raw

    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    out = []
    for section in RESUME_FIXED:
        a, b = flat(at(before, section), section), flat(at(after, section), section)
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


def keep_if_resumable(work: Path, final: Path) -> None:
    """After a failure: keep the work folder when a checkpoint makes it resumable (and say so); else remove it."""
    if last_checkpoint(work) is None:
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
