"""Calibrated probabilities, and abstaining when they are low.

A calibration map (`fintrl.scoring.scaling`: temperature scaling by default, per-label vector scaling with
`eval.calibration_method: vector`) is fitted by NLL on calibration rows: a seeded stratified sample of the train split,
held out of training (the eval split is the one reported, so it is never used), scored once after training with the
run's exact scorer. The run writes it to `calibration.json`; `eval`, `predict`, `serve`, Ray scoring and `audit`
apply it (`--uncalibrated`: not) through `Target.calibrate`, which also moves each prediction to the calibrated argmax
where the map can reorder the labels (vector scaling).

A map is kept only when it is seen to help on rows it was not fitted on (`check_calibration`): the calibration rows
are cross-fitted (each fold's map fitted on the other folds, its NLL measured on the fold), and the map is kept when
the out-of-fold NLL gain has a 95 % bootstrap interval above zero (and, for a map that can change labels, it fixes at
least as many of those rows' labels as it breaks); otherwise the probabilities stay as scored, and the report, the
card and the summary say why. A model that is already calibrated is left alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fintrl.errors import RunFolderError
from fintrl.metrics.stats import brier, confidence, nll
from fintrl.run_folder import CALIBRATION, write_atomic
from fintrl.scoring.scaling import BIAS_BOUND, BOUNDS, Method, Scaling, at_bound, fit

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fintrl.data.loading import LabeledData
    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import EvalSection
    from fintrl.scoring.scorer import ScoreResult

logger = logging.getLogger(__name__)

NAMES = {"temperature": "temperature scaling", "vector": "vector scaling"}  # calibration.json's `method`
CHECK_FOLDS = 2  # cross-fitting folds over the calibration rows
CHECK_RESAMPLES = 2000  # bootstrap resamples of the out-of-fold NLL gain
MODES = ("first_token", "trie", "loglik")  # the scoring modes with probabilities
MAX_FRACTION = 0.1  # of the train rows held out for calibration (at least one per label)
ABSTAIN = "abstain"


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map and what it was fitted on (calibration.json)."""

    temperature: float  # temperature scaling's T (1 for vector scaling, or when the fitted T was not kept)
    mode: str  # the scoring mode whose probabilities it was fitted on (first_token, trie, loglik)
    n: int
    split: str
    seed: int | None = None
    nll_before: float | None = None  # on the calibration rows
    nll_after: float | None = None
    fitted: float | None = None  # the T the fit found, kept (= temperature) or not (temperature = 1)
    check: dict[str, Any] | None = None  # `check_calibration`: out-of-fold NLL gain, its interval, kept, reason
    method: Method = "temperature"
    weights: tuple[float, ...] | None = None  # vector scaling, when kept: w and b per label
    biases: tuple[float, ...] | None = None

    @property
    def scaling(self) -> Scaling:
        return Scaling(self.method, self.temperature, self.weights, self.biases)

    def applies_to(self, mode: str | None) -> bool:
        """Probabilities of another scoring mode are another distribution: the map is not theirs."""
        return mode is None or mode == self.mode

    def _refuses(self, mode: str | None) -> bool:
        if self.applies_to(mode):
            return False
        logger.warning("calibration not applied: fitted on %s probabilities, these are %s ones", self.mode, mode)
        return True

    def apply(self, probabilities: np.ndarray, mode: str | None = None) -> np.ndarray:
        """Calibrated probabilities; unchanged (with a warning) for another scoring mode's."""
        if self._refuses(mode):
            return np.asarray(probabilities, dtype=float)
        return self.scaling.apply(probabilities)

    def apply_result(self, result: ScoreResult) -> ScoreResult:
        """The scorer's result, calibrated: its probabilities, and its predictions where the map can reorder labels
        (vector scaling: the calibrated argmax). What every command that calibrates calls; unchanged (with a
        warning) for another scoring mode's."""
        if self._refuses(result.mode):
            return result
        probabilities = self.scaling.apply(result.probabilities)
        predictions = probabilities.argmax(-1).tolist() if self.scaling.reorders else result.predictions
        return dataclasses.replace(result, probabilities=probabilities, predictions=predictions)

    def record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self) | {"method": NAMES[self.method]}
        return {k: v for k, v in record.items() if v is not None or k not in ("weights", "biases")}


def _row_nll(probabilities: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probabilities[np.arange(len(gold)), gold], 1e-12, None))


def _cross_fit(method: str, probabilities: np.ndarray, gold: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Each row's NLL and label under the map of `method` fitted on the other folds, and each fold's map."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(gold, minlength=probabilities.shape[1])
    stratified = counts[counts > 0].min() >= CHECK_FOLDS
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=CHECK_FOLDS, shuffle=True, random_state=seed)
    scaled, labels, folds = np.zeros(len(gold)), np.zeros(len(gold), int), []
    for fit_rows, held_rows in splitter.split(np.zeros(len(gold)), gold if stratified else None):
        fold = fit(method, probabilities[fit_rows], gold[fit_rows])
        folds.append(fold.record())
        calibrated = fold.apply(probabilities[held_rows])
        scaled[held_rows] = _row_nll(calibrated, gold[held_rows])
        labels[held_rows] = calibrated.argmax(-1)
    return scaled, labels, folds


def _interval(gain: np.ndarray, seed: int) -> tuple[float, float]:
    """95 % bootstrap interval over rows of the mean gain."""
    rng = np.random.default_rng(seed)
    means = np.array([gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(CHECK_RESAMPLES)])
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def check_calibration(
    probabilities: np.ndarray, gold: Any, method: str = "temperature", seed: int = 0
) -> dict[str, Any]:
    """Is a calibration map worth keeping on these rows? Cross-fitted: each fold's map is fitted on the other folds
    and judged on the fold, so the gain is measured on rows it never saw; kept when its 95 % bootstrap interval over
    rows is above zero and the map fitted on all rows is not at a search bound. Vector scaling must also fix at least
    as many out-of-fold labels as it breaks, and beat one temperature out of fold beyond noise (its 2 parameters per
    label must earn their keep). Returns the record metrics.json and the card show."""
    probabilities, gold = np.asarray(probabilities, dtype=float), np.asarray(gold)
    fitted = fit(method, probabilities, gold)
    raw = _row_nll(probabilities, gold)
    scaled, labels, folds = _cross_fit(method, probabilities, gold, seed)
    gain = raw - scaled  # > 0: the map lowered that row's NLL
    low, high = _interval(gain, seed)
    right_before, right_after = probabilities.argmax(-1) == gold, labels == gold
    fixed, broken = int((right_after & ~right_before).sum()), int((right_before & ~right_after).sum())
    record: dict[str, Any] = {
        "method": f"{CHECK_FOLDS}-fold cross-fit, 95 % bootstrap over rows ({CHECK_RESAMPLES} resamples)",
        "scaling": NAMES[method],
    }
    if method == "temperature":
        record |= {"fitted_temperature": fitted.temperature, "fold_temperatures": [f["temperature"] for f in folds]}
    else:
        record |= {"fitted": fitted.record(), "folds": folds, "labels_fixed": fixed, "labels_broken": broken}
    record |= {"nll_raw": float(raw.mean()), "nll_scaled": float(scaled.mean()), "gain": float(gain.mean())}
    record["interval"] = [low, high]
    bound = at_bound(fitted.temperature) if method == "temperature" else any(map(at_bound, fitted.weights or ()))
    if bound:
        return record | {
            "kept": False,
            "reason": f"the fitted {_fitted_text(fitted)} sits at its search bound: these rows cannot tell",
        }
    if low <= 0:
        reason = (
            f"on rows it was not fitted on it changes NLL by {-gain.mean():+.4f} (gain [{low:.4f}, {high:.4f}] "
            "includes no gain): not beyond noise, so the probabilities stay as scored"
        )
        return record | {"kept": False, "reason": reason}
    if broken > fixed:
        return record | {
            "kept": False,
            "reason": f"on rows it was not fitted on it breaks {broken} labels and fixes {fixed}",
        }
    if method == "vector":
        over = _cross_fit("temperature", probabilities, gold, seed)[0] - scaled  # > 0: vector beat one temperature
        over_low, over_high = _interval(over, seed)
        record["over_temperature"] = {"gain": float(over.mean()), "interval": [over_low, over_high]}
        if over_low <= 0:
            reason = (
                f"on rows neither was fitted on it does no better than one temperature (NLL {-over.mean():+.4f} "
                f"against it, gain [{over_low:.4f}, {over_high:.4f}] includes none)"
            )
            return record | {"kept": False, "reason": reason}
    return record | {
        "kept": True,
        "reason": f"it lowers NLL on rows it was not fitted on by {gain.mean():.4f} [{low:.4f}, {high:.4f}]",
    }


def _fitted_text(scaling: Scaling) -> str:
    if scaling.method == "vector":
        return "w = [" + ", ".join(f"{w:.3g}" for w in scaling.weights or ()) + "]"
    return f"T ({scaling.temperature:.3g})"


def probability_scores(probabilities: np.ndarray, gold: Any) -> dict[str, float]:
    from fintrl.metrics.stats import expected_calibration_error

    return {
        "nll": nll(probabilities, gold),
        "brier": brier(probabilities, gold),
        "ece": expected_calibration_error(probabilities, np.asarray(gold)),
    }


def load_calibration(folder: Path | str, n_labels: int | None = None) -> Calibration | None:
    """The folder's calibration.json, or None when it has none (a run without calibration, a base model); every
    parameter checked (a number, in its bounds, one per label) before it scales anything."""
    path = Path(folder) / CALIBRATION
    if not path.is_file():
        return None
    from fintrl.run_folder import read_json

    record = read_json(path)
    fields = {f.name for f in dataclasses.fields(Calibration)}
    if not isinstance(record, dict) or not {"temperature", "mode", "n", "split"} <= set(record) <= fields:
        raise RunFolderError(f"{path}: not a fintrl calibration (fields {sorted(fields)}); rerun the run")
    methods = {name: method for method, name in NAMES.items()}
    if record.get("method", NAMES["temperature"]) not in methods:
        raise RunFolderError(f"{path}: method {record['method']!r} is not one of {', '.join(methods)}; rerun the run")
    record["method"] = methods[record.get("method", NAMES["temperature"])]
    _check_numbers(path, "temperature", [record["temperature"]], BOUNDS)
    if record["method"] == "vector" and (record.get("weights") is not None or record.get("biases") is not None):
        weights, biases = record.get("weights"), record.get("biases")
        lengths = {len(v) if isinstance(v, list) else None for v in (weights, biases)} | (
            {n_labels} if n_labels else set()
        )
        if len(lengths) != 1 or None in lengths:
            raise RunFolderError(f"{path}: weights and biases need one number per label; rerun the run")
        _check_numbers(path, "weights", weights, BOUNDS)
        _check_numbers(path, "biases", biases, (-BIAS_BOUND, BIAS_BOUND))
        record |= {"weights": tuple(weights), "biases": tuple(biases)}
    if record["mode"] not in MODES:
        raise RunFolderError(f"{path}: mode {record['mode']!r} is not one of {', '.join(MODES)}; rerun the run")
    return Calibration(**record)


def _check_numbers(path: Path, name: str, values: list[Any], bounds: tuple[float, float]) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunFolderError(f"{path}: {name} {value!r} is not a number; rerun the run")
        if not bounds[0] <= value <= bounds[1]:
            raise RunFolderError(f"{path}: {name} {value} is outside [{bounds[0]}, {bounds[1]}]; rerun the run")


def save_calibration(calibration: Calibration, folder: Path) -> None:
    write_atomic(Path(folder) / CALIBRATION, json.dumps(calibration.record(), indent=2) + "\n")


def calibration_size(n_train: int, n_labels: int, wanted: int) -> int:
    """How many train rows to hold out: `wanted`, at most 10 % of train but at least one per label; 0 when that
    would take more than a fifth of a small train split."""
    size = min(wanted, max(n_labels, round(MAX_FRACTION * n_train)))
    return size if wanted and size <= 0.2 * n_train else 0


def hold_out(data: LabeledData, section: EvalSection, seed: int) -> tuple[LabeledData, Dataset | None]:
    """Carve the calibration rows out of the train split before training: a seeded sample of distinct texts,
    stratified by label (largest remainders; every label keeps a training row); every row with a held-out text leaves
    training. Drawn over distinct texts, so the copies `data.balance` makes of a rare class's rows neither inflate its
    share of the hold-out nor take most of its texts out of training."""
    texts = data.train["text"]
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    unique = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    size = calibration_size(len(unique), len(data.labels), section.calibration_samples)
    if not size or section.mode == "generate":
        if section.calibration_samples:
            logger.info("no calibration: %s", "generate mode has no probabilities" if size else "too few train rows")
        return data, None
    labels = np.asarray(data.train["label"])[unique]
    counts = np.bincount(labels, minlength=len(data.labels))
    share = size * counts / counts.sum()
    quota = np.floor(share).astype(int)
    for label in np.argsort(-(share - quota), kind="stable")[: size - quota.sum()]:
        quota[label] += 1
    quota = np.minimum(quota, np.maximum(counts - 1, 0))
    rng = np.random.default_rng(seed)
    picked = sorted(
        int(unique[i]) for c in range(len(counts)) for i in rng.permutation(np.flatnonzero(labels == c))[: quota[c]]
    )
    held = {texts[i] for i in picked}
    train = data.train.select([i for i, text in enumerate(texts) if text not in held])
    logger.info("calibration: %d train rows held out of training (seed %d)", len(held), seed)
    return dataclasses.replace(data, train=train), data.train.select(picked)


def fit_on_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    builder: PromptBuilder,
    rows: Dataset,
    section: EvalSection,
    seed: int | None = None,
) -> Calibration:
    """Score the held-out rows once with the exact scorer, as `evaluate` will score the eval split, and fit the map."""
    from fintrl.scoring.scorer import LabelScorer

    scorer = LabelScorer.from_eval(model, tokenizer, builder, section)
    result = scorer.score_sharded(rows["text"], progress=False)  # a shard per process, gathered
    gold = np.asarray(rows["label"])
    return calibrate_rows(result.probabilities, gold, result.mode, seed, section.calibration_method)


def calibrate_rows(
    probabilities: np.ndarray, gold: Any, mode: str, seed: int | None = None, method: Method = "temperature"
) -> Calibration:
    """The calibration of scored held-out rows: the fitted map where `check_calibration` keeps it, else none
    (T = 1: the probabilities as scored). Vector scaling that is not kept falls back to one checked temperature
    (`check.vector` keeps its record)."""
    gold = np.asarray(gold)
    check = check_calibration(probabilities, gold, method, seed or 0)
    if method == "vector" and not check["kept"]:
        vector, method = check, "temperature"
        check = check_calibration(probabilities, gold, method, seed or 0)
        reason = f"vector scaling not kept ({vector['reason']}); one temperature instead: {check['reason']}"
        check |= {"vector": vector, "reason": reason}
    kept, fitted = check["kept"], check.get("fitted") or {}
    vector = method == "vector" and kept
    scaling = Scaling(
        method,
        check["fitted_temperature"] if kept and not vector else 1.0,
        tuple(fitted["weights"]) if vector else None,
        tuple(fitted["biases"]) if vector else None,
    )
    logger.info(
        "calibration: %s on %d held-out rows %s: %s",
        NAMES[method],
        len(gold),
        "kept" if kept else "not kept (probabilities as scored)",
        check["reason"],
    )
    return Calibration(
        temperature=scaling.temperature,
        mode=mode,
        n=len(gold),
        split="train (held out of training)",
        seed=seed,
        nll_before=nll(probabilities, gold),
        nll_after=nll(scaling.apply(probabilities), gold),
        fitted=check.get("fitted_temperature"),
        check=check,
        method=method,
        weights=scaling.weights,
        biases=scaling.biases,
    )


def calibration_report(
    calibration: Calibration, raw: ScoreResult, calibrated: ScoreResult, gold: Any
) -> dict[str, Any]:
    """metrics.json `calibration`: the map, what it was fitted on, the check, and NLL / Brier / ECE before and after
    on the reported rows, with how many predicted labels it changed (`applied: false` when the scoring mode is not
    the one it was fitted on)."""
    applied = calibration.applies_to(raw.mode)
    after = calibrated if applied else raw
    return {
        "method": NAMES[calibration.method],
        "temperature": calibration.temperature,
        **(
            {"weights": list(calibration.weights or ()), "biases": list(calibration.biases or ())}
            if calibration.method == "vector"
            else {}
        ),
        "fitted_on": {"split": calibration.split, "n": calibration.n, "mode": calibration.mode},
        "check": calibration.check,  # kept or not, and why (None: a calibration made before runs checked it)
        "applied": applied,
        "labels_changed": sum(a != b for a, b in zip(raw.predictions, after.predictions)),
        "before": probability_scores(raw.probabilities, gold),
        "after": probability_scores(after.probabilities, gold),
    }


def predict_rows(
    texts: list[str],
    labels: list[str],
    predictions: list[int],
    probabilities: np.ndarray,
    min_confidence: float | None = None,
) -> list[dict[str, Any]]:
    """What `predict` writes per text: the label and every label's probability; with `min_confidence`, also
    `top_label` and `confidence`, and the label `abstain` where the predicted label's probability is below it."""
    conf = confidence(probabilities, predictions)
    rows = []
    for text, pred, probs, c in zip(texts, predictions, probabilities, conf):
        label = labels[pred] if pred >= 0 else None
        row: dict[str, Any] = {"text": text, "label": label}
        if min_confidence is not None:
            row |= {"label": label if c >= min_confidence else ABSTAIN, "top_label": label, "confidence": round(c, 6)}
        rows.append(row | {"probabilities": {n: round(float(p), 6) for n, p in zip(labels, probs)}})
    return rows
