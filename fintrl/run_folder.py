"""THE run-folder contract: its file names, and reading and writing what it holds (the report, the resolved
prompt, the predictions), each validated on read as strictly as a recipe: a run folder may come from a download.

A run folder is what every later step reads (eval, predict, serve, card, publish, compare, audit, export); how one is
written (built aside, locked, swapped into place) is `fintrl.transaction`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from fintrl.errors import RecipeError, RunFolderError

if TYPE_CHECKING:
    import numpy as np

    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import Recipe

logger = logging.getLogger(__name__)

RECIPE = "recipe.yaml"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the only adapter weights fintrl loads (never a pickle)
TRAIN_LOG = "train_log.jsonl"
CARD = "README.md"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"
TRAINING_CURVE_PNG = "training_loss.png"
COVERAGE_PNG = "coverage.png"  # accuracy against coverage: what abstaining below a confidence buys
CALIBRATION = "calibration.json"  # the temperature `eval` and `predict` apply (`fintrl.scoring.calibration`)
CHECKPOINTS = "checkpoints"
EXPORT_INFO = "fintrl_export.json"  # a merged export (`fintrl export --merged`): source, labels, prompt, agreement
AUDIT_CSV = "audit.csv"  # `fintrl audit`: every audited row, flagged ones first (`fintrl.audit.confident`)
AUDIT_SUMMARY = "audit.json"  # its thresholds, counts per class pair, and how each split was scored
PROMPT = "prompt.json"  # the resolved prompt the adapter was trained with (`fintrl.model.prompts.PromptBuilder`)
ENSEMBLE = "ensemble.json"  # an ensemble folder's members (`RunFolder.ensemble_members`, `fintrl.scoring.ensemble`)


class Report(TypedDict, total=False):
    """`metrics.json`: what a run or an eval measured. Written once, by the run (or `fintrl eval`) that owns it.

    Headline metrics sit at the top level; `fintrl.metrics.classification.classification_metrics` fills those,
    `runner.evaluate` the
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
    provenance: dict[str, Any]  # data fingerprints, recipe hash, code, seed, hardware, base (`fintrl.provenance`)
    inference: dict[str, Any]  # `fintrl eval`: the form the target ran in (`fintrl.scoring.inference`)
    ensemble: dict[str, Any]  # `fintrl eval A B ...`: members, calibrated, per_member accuracy / f1_macro / nll / ece


@dataclass(frozen=True)
class RunFolder:
    """A finished (or being built) run folder: the one place that knows its file names.

    ```python
    run = RunFolder("runs/quickstart")
    run.metrics()["accuracy"]
    ```
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str from a notebook or a script works too

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

    def recipe(self, overrides: list[str] = ()) -> Recipe:
        """The run's recipe, validated as strictly as the user's own (a run folder may come from a download)."""
        from fintrl.recipe.schema import load_recipe

        if not self.is_run:
            raise RunFolderError(f"{self.path} is not a fintrl run folder (no {RECIPE})")
        try:
            return load_recipe(self.file(RECIPE), overrides=overrides)
        except RecipeError as err:
            if overrides:  # the user's --set may be what is wrong
                raise
            raise RunFolderError(f"{err} (the run folder's recipe; rerun the run that wrote it)") from None

    def metrics(self) -> Report:
        """The report, checked for what every reader relies on: a JSON object whose `data.labels` is the label set."""
        path = self.file(METRICS)
        if not path.is_file():
            raise RunFolderError(f"{self.path} has no {METRICS}: run `fintrl run` (or `fintrl eval`) first")
        report = read_json(path)
        data = report.get("data") if isinstance(report, dict) else None
        labels = data.get("labels") if isinstance(data, dict) else None
        if not (
            isinstance(labels, list)
            and len(labels) >= 2
            and all(isinstance(n, str) and n.strip() for n in labels)
            and len(set(labels)) == len(labels)
        ):
            raise RunFolderError(
                f"{path}: data.labels must list two or more distinct label names; rerun the run or eval"
            )
        return report

    def labels(self) -> list[str] | None:
        """The label set the run was scored on, or None for a folder without a report (a bare adapter)."""
        return self.metrics()["data"]["labels"] if self.file(METRICS).is_file() else None

    def write_metrics(self, metrics: Report) -> None:
        write_atomic(self.file(METRICS), json.dumps(metrics, indent=2))

    def write_recipe(self, recipe: Recipe) -> None:
        from fintrl.recipe.schema import dump_recipe

        dump_recipe(recipe, self.file(RECIPE))

    def prompt(self) -> PromptBuilder | None:
        """The prompt the run trained with: its prompt.json (validated), else (a run made before runs stored it) its
        recipe's prompt over the report's labels and task; None for a folder with neither (a bare adapter)."""
        from fintrl.model.prompts import PromptBuilder

        path = self.file(PROMPT)
        if path.is_file():
            try:
                return PromptBuilder.from_record(read_json(path), str(path))
            except RecipeError as err:  # the folder's file is wrong, not the user's recipe: exit 5
                raise RunFolderError(f"{err}; rerun the run that wrote it") from None
        if not (self.is_run and self.file(METRICS).is_file()):
            return None
        data = self.metrics().get("data") or {}
        return PromptBuilder.resolve(self.recipe().prompt, data.get("labels") or [], data.get("task"))

    def write_prompt(self, prompt: PromptBuilder) -> None:
        write_atomic(self.file(PROMPT), json.dumps(prompt.record(), indent=2, ensure_ascii=False) + "\n")

    @property
    def is_ensemble(self) -> bool:
        """An ensemble folder: an ensemble's report (`fintrl eval A B`, a recipe's `seeds:`) and `ensemble.json`,
        which names its member run folders, so the folder can be scored, served and published as one target."""
        return self.file(ENSEMBLE).is_file()

    def ensemble_members(self, *, downloaded: bool) -> list[Path]:
        """The member folders `ensemble.json` names, in order: paths relative to this folder. A downloaded ensemble
        (a Hub repo) may name only its own subfolders; a local one any folder (a `seeds:` run's are its siblings)."""
        path = self.file(ENSEMBLE)
        raw = read_json(path)
        members = raw.get("members") if isinstance(raw, dict) else None
        if not (isinstance(members, list) and len(members) >= 2 and all(isinstance(m, str) and m for m in members)):
            raise RunFolderError(f"{path}: `members` must list two or more member folders")
        if len(set(members)) != len(members):
            raise RunFolderError(f"{path}: `members` lists a folder twice")
        folders = []
        for member in members:
            if downloaded and (member in (".", "..") or any(c in member for c in "/\\:")):
                raise RunFolderError(f"{path}: member {member!r} is not a subfolder's name")
            folder = Path(os.path.normpath(self.path / member))
            if not folder.is_dir():
                raise RunFolderError(f"{path}: its member {member} is no folder beside it")
            if RunFolder(folder).is_ensemble or folder.resolve() == self.path.resolve():
                raise RunFolderError(f"{path}: its member {member} is an ensemble; members are runs")
            folders.append(folder)
        return folders

    def write_ensemble(self, members: list[Path]) -> None:
        """Name the member folders (relative to this folder: the two move together) in `ensemble.json`."""
        names = [os.path.relpath(Path(m).resolve(), self.path.resolve()) for m in members]
        write_atomic(self.file(ENSEMBLE), json.dumps({"members": names}, indent=2) + "\n")


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


def read_json(path: Path) -> Any:
    """A JSON file fintrl wrote (or a download claims it did): unreadable or malformed is one RunFolderError line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: cannot be read ({err})") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise RunFolderError(f"{path} is corrupt ({getattr(err, 'msg', 'nested too deeply')})") from None


class PredictionRow(TypedDict, total=False):
    """One line of `predictions.jsonl`: an eval row as scored."""

    text: str
    gold: str
    prediction: str | None  # None: no label (`generate` mode's unparsable answers)
    probabilities: dict[str, float]  # every label's
    raw_output: str  # `generate` mode only


def prediction_rows(
    texts: list[str],
    gold: list[int],
    labels: list[str],
    predictions: list[int],
    probabilities: np.ndarray,
    raw_outputs: list[str] | None = None,
) -> list[PredictionRow]:
    """The rows of a predictions.jsonl from scores: label indices (negative: no label) and probabilities [n, labels]."""
    rows: list[PredictionRow] = []
    for i, text in enumerate(texts):
        pred = predictions[i]
        row: PredictionRow = {
            "text": text,
            "gold": labels[gold[i]],
            "prediction": labels[pred] if pred >= 0 else None,
            "probabilities": dict(zip(labels, map(float, probabilities[i].round(6)))),
        }
        if raw_outputs:
            row["raw_output"] = raw_outputs[i]
        rows.append(row)
    return rows


def write_predictions(path: Path, rows: list[PredictionRow]) -> None:
    write_atomic(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_predictions(path: Path, labels: list[str] | None = None) -> list[PredictionRow] | None:
    """The rows of a predictions.jsonl (validated: `parse_predictions`), or None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: cannot be read ({err})") from None
    return parse_predictions(text, str(path), labels)


def parse_predictions(text: str, where: str, labels: list[str] | None = None) -> list[PredictionRow]:
    """predictions.jsonl rows, checked line by line: a text, a gold label and a prediction from one label set (the
    probabilities' keys, equal to `labels` when given), probabilities finite, in [0, 1] and summing to 1."""
    import math

    rows: list[PredictionRow] = []
    names: list[str] | None = list(labels) if labels is not None else None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(what: str, line_number: int = number) -> RunFolderError:
            return RunFolderError(f"{where}, line {line_number}: {what}; rerun the run or eval that wrote it")

        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise bad("not a JSON object") from None
        if not isinstance(row, dict):
            raise bad("not a JSON object")
        probs = row.get("probabilities")
        if not isinstance(row.get("text"), str) or not isinstance(row.get("gold"), str):
            raise bad("`text` and `gold` must be strings")
        if not isinstance(probs, dict) or not probs:
            raise bad("`probabilities` must map every label to a probability")
        if names is None:
            names = list(probs)
        if list(probs) != names:
            raise bad(f"`probabilities` has the labels {list(probs)}, expected {names}")
        values = list(probs.values())
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise bad("`probabilities` must be finite numbers")
        if any(v < 0 or v > 1 for v in values) or abs(sum(values) - 1) > 1e-3:
            raise bad(f"`probabilities` must lie in [0, 1] and sum to 1 (they sum to {sum(values):.4g})")
        if row["gold"] not in names:
            raise bad(f"gold label {row['gold']!r} is not one of {names}")
        if row.get("prediction") is not None and row["prediction"] not in names:
            raise bad(f"prediction {row['prediction']!r} is not one of {names}")
        rows.append(row)
    if not rows:
        raise RunFolderError(f"{where} holds no predictions; rerun the run or eval that wrote it")
    return rows
