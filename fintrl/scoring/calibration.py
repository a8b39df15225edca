"""Calibrated probabilities, and abstaining when they are low.

Temperature scaling (one parameter, Guo et al. 2017): the scorer's per-label log-probabilities are divided by T and
renormalised, p_k^(1/T) / sum_j p_j^(1/T). T > 1 softens an over-confident model, T < 1 sharpens an under-confident
one; the order of the labels, hence the predicted label, never changes. T minimises the negative log-likelihood
(`scipy.optimize.minimize_scalar` over log T, bounded to [0.05, 20]; T = 1 unless that lowers it) on calibration rows:
a seeded stratified sample of the train split, held out of training (the eval split is the one reported, so it is
never used), scored once after training with the run's exact scorer. The run writes it to `calibration.json`;
`eval` and `predict` apply it (`--uncalibrated`: not), and so can any server: `Target.calibrate`.

A temperature is kept only when it is seen to help on rows it was not fitted on (`check_temperature`): the
calibration rows are cross-fitted (each fold's T fitted on the other folds, its NLL measured on the fold), and T is kept
when the out-of-fold NLL gain has a 95 % bootstrap interval above zero; otherwise T = 1 (probabilities as scored),
and the report, the card and the summary say why. A model that is already calibrated is left alone.
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

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fintrl.data.loading import LabeledData
    from fintrl.model.prompts import PromptBuilder
    from fintrl.recipe.schema import EvalSection

logger = logging.getLogger(__name__)

METHOD = "temperature scaling"
BOUNDS = (0.05, 20.0)
CHECK_FOLDS = 2  # cross-fitting folds over the calibration rows
CHECK_RESAMPLES = 2000  # bootstrap resamples of the out-of-fold NLL gain
MODES = ("first_token", "trie", "loglik")  # the scoring modes with probabilities
MAX_FRACTION = 0.1  # of the train rows held out for calibration (at least one per label)
ABSTAIN = "abstain"


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it was fitted on (calibration.json)."""

    temperature: float
    mode: str  # the scoring mode whose probabilities it was fitted on (first_token, trie, loglik)
    n: int
    split: str
    seed: int | None = None
    nll_before: float | None = None  # on the calibration rows
    nll_after: float | None = None
    fitted: float | None = None  # the T the fit found, kept (= temperature) or not (temperature = 1)
    check: dict[str, Any] | None = None  # `check_temperature`: out-of-fold NLL gain, its interval, kept, reason

    def applies_to(self, mode: str | None) -> bool:
        """Probabilities of another scoring mode are another distribution: the temperature is not theirs."""
        return mode is None or mode == self.mode

    def apply(self, probabilities: np.ndarray, mode: str | None = None) -> np.ndarray:
        """Temperature-scaled probabilities; unchanged (with a warning) for another scoring mode's."""
        if not self.applies_to(mode):
            logger.warning("calibration not applied: fitted on %s probabilities, these are %s ones", self.mode, mode)
            return np.asarray(probabilities, dtype=float)
        return apply_temperature(probabilities, self.temperature)

    def record(self) -> dict[str, Any]:
        return {"method": METHOD, **dataclasses.asdict(self)}


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row; a zero probability stays zero (a one-hot row stays one-hot)."""
    p = np.asarray(probabilities, dtype=float)
    with np.errstate(divide="ignore"):
        logits = np.log(p) / temperature
    scaled = np.exp(logits - logits.max(-1, keepdims=True))
    return scaled / scaled.sum(-1, keepdims=True)


def optimal_temperature(probabilities: np.ndarray, gold: Any) -> float:
    """The T in BOUNDS that minimises the mean NLL of the gold labels (it may sit at a bound)."""
    from scipy.optimize import minimize_scalar

    def loss(log_t: float) -> float:
        return nll(apply_temperature(probabilities, math.exp(log_t)), gold)

    best = minimize_scalar(loss, bounds=tuple(map(math.log, BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x)) if best.fun < loss(0.0) else 1.0


def at_bound(temperature: float) -> bool:
    return not BOUNDS[0] * 1.05 < temperature < BOUNDS[1] / 1.05


def fit_temperature(probabilities: np.ndarray, gold: Any) -> float:
    """`optimal_temperature`, or 1.0 when the optimum sits at a bound: the rows cannot tell (every row right, say: a
    sharper T always lowers their NLL and would make the rows it is applied to over-confident)."""
    temperature = optimal_temperature(probabilities, gold)
    return 1.0 if at_bound(temperature) else temperature


def _row_nll(probabilities: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probabilities[np.arange(len(gold)), gold], 1e-12, None))


def check_temperature(probabilities: np.ndarray, gold: Any, seed: int = 0) -> dict[str, Any]:
    """Is a temperature worth keeping on these rows? Cross-fitted: each fold's T is fitted on the other folds and
    judged on the fold, so the gain is measured on rows T never saw; kept when its 95 % bootstrap interval over rows
    is above zero and the T fitted on all rows is not at a bound. Returns the record metrics.json and the card show."""
    from sklearn.model_selection import KFold, StratifiedKFold

    probabilities, gold = np.asarray(probabilities, dtype=float), np.asarray(gold)
    fitted = optimal_temperature(probabilities, gold)
    counts = np.bincount(gold, minlength=probabilities.shape[1])
    stratified = counts[counts > 0].min() >= CHECK_FOLDS
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=CHECK_FOLDS, shuffle=True, random_state=seed)
    raw, scaled, fold_temperatures = _row_nll(probabilities, gold), np.zeros(len(gold)), []
    for fit_rows, held_rows in splitter.split(np.zeros(len(gold)), gold if stratified else None):
        t = optimal_temperature(probabilities[fit_rows], gold[fit_rows])
        fold_temperatures.append(round(t, 4))
        scaled[held_rows] = _row_nll(apply_temperature(probabilities[held_rows], t), gold[held_rows])
    gain = raw - scaled  # > 0: the temperature lowered that row's NLL
    rng = np.random.default_rng(seed)
    means = np.array([gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(CHECK_RESAMPLES)])
    low, high = (float(v) for v in np.quantile(means, [0.025, 0.975]))
    if at_bound(fitted):
        kept, reason = False, f"the fitted T ({fitted:.3g}) sits at its search bound: these rows cannot tell"
    elif low > 0:
        kept, reason = True, f"it lowers NLL on rows it was not fitted on by {gain.mean():.4f} [{low:.4f}, {high:.4f}]"
    else:
        kept, reason = (
            False,
            (
                f"on rows it was not fitted on it changes NLL by {-gain.mean():+.4f} (gain [{low:.4f}, {high:.4f}] "
                "includes no gain): not beyond noise, so the probabilities stay as scored"
            ),
        )
    return {
        "method": f"{CHECK_FOLDS}-fold cross-fit, 95 % bootstrap over rows ({CHECK_RESAMPLES} resamples)",
        "fitted_temperature": round(fitted, 6),
        "fold_temperatures": fold_temperatures,
        "nll_raw": float(raw.mean()),
        "nll_scaled": float(scaled.mean()),
        "gain": float(gain.mean()),
        "interval": [low, high],
        "kept": kept,
        "reason": reason,
    }


def probability_scores(probabilities: np.ndarray, gold: Any) -> dict[str, float]:
    from fintrl.metrics.stats import expected_calibration_error

    return {
        "nll": nll(probabilities, gold),
        "brier": brier(probabilities, gold),
        "ece": expected_calibration_error(probabilities, np.asarray(gold)),
    }


def load_calibration(folder: Path | str) -> Calibration | None:
    """The folder's calibration.json, or None when it has none (a run without calibration, a base model)."""
    path = Path(folder) / CALIBRATION
    if not path.is_file():
        return None
    from fintrl.run_folder import read_json

    record = read_json(path)
    fields = {f.name for f in dataclasses.fields(Calibration)}
    if not isinstance(record, dict) or not {"temperature", "mode", "n", "split"} <= set(record) <= fields | {"method"}:
        raise RunFolderError(f"{path}: not a fintrl calibration (fields {sorted(fields)}); rerun the run")
    temperature = record["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise RunFolderError(f"{path}: temperature {temperature!r} is not a number; rerun the run")
    if not BOUNDS[0] <= temperature <= BOUNDS[1]:
        raise RunFolderError(f"{path}: temperature {temperature} is outside [{BOUNDS[0]}, {BOUNDS[1]}]; rerun the run")
    if record["mode"] not in MODES:
        raise RunFolderError(f"{path}: mode {record['mode']!r} is not one of {', '.join(MODES)}; rerun the run")
    record.pop("method", None)
    return Calibration(**record)


def save_calibration(calibration: Calibration, folder: Path) -> None:
    write_atomic(Path(folder) / CALIBRATION, json.dumps(calibration.record(), indent=2) + "\n")


def calibration_size(n_train: int, n_labels: int, wanted: int) -> int:
    """How many train rows to hold out: `wanted`, at most 10 % of train but at least one per label; 0 when that
    would take more than a fifth of a small train split."""
    size = min(wanted, max(n_labels, round(MAX_FRACTION * n_train)))
    return size if wanted and size <= 0.2 * n_train else 0


def hold_out(data: LabeledData, section: EvalSection, seed: int) -> tuple[LabeledData, Dataset | None]:
    """Carve the calibration rows out of the train split before training: a seeded sample stratified by label
    (largest remainders; every label keeps a training row); rows whose text is held out leave training too."""
    size = calibration_size(len(data.train), len(data.labels), section.calibration_samples)
    if not size or section.mode == "generate":
        if section.calibration_samples:
            logger.info("no calibration: %s", "generate mode has no probabilities" if size else "too few train rows")
        return data, None
    labels = np.asarray(data.train["label"])
    counts = np.bincount(labels, minlength=len(data.labels))
    share = size * counts / counts.sum()
    quota = np.floor(share).astype(int)
    for label in np.argsort(-(share - quota), kind="stable")[: size - quota.sum()]:
        quota[label] += 1
    quota = np.minimum(quota, np.maximum(counts - 1, 0))
    rng = np.random.default_rng(seed)
    picked = sorted(
        int(i) for c in range(len(counts)) for i in rng.permutation(np.flatnonzero(labels == c))[: quota[c]]
    )
    texts = data.train["text"]
    held: dict[str, int] = {}
    for i in picked:
        held.setdefault(texts[i], i)
    train = data.train.select([i for i, text in enumerate(texts) if text not in held])
    logger.info("calibration: %d train rows held out of training (seed %d)", len(held), seed)
    return dataclasses.replace(data, train=train), data.train.select(sorted(held.values()))


def fit_on_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    builder: PromptBuilder,
    rows: Dataset,
    section: EvalSection,
    seed: int | None = None,
) -> Calibration:
    """Score the held-out rows once with the exact scorer, as `evaluate` will score the eval split, and fit T."""
    from fintrl.scoring.scorer import LabelScorer

    scorer = LabelScorer.from_eval(model, tokenizer, builder, section)
    result = scorer.score_sharded(rows["text"], progress=False)  # a shard per process, gathered
    gold = np.asarray(rows["label"])
    return calibrate_rows(result.probabilities, gold, result.mode, seed)


def calibrate_rows(probabilities: np.ndarray, gold: Any, mode: str, seed: int | None = None) -> Calibration:
    """The calibration of scored held-out rows: the fitted T where `check_temperature` keeps it, else T = 1."""
    gold = np.asarray(gold)
    check = check_temperature(probabilities, gold, seed or 0)
    temperature = check["fitted_temperature"] if check["kept"] else 1.0
    calibration = Calibration(
        temperature=round(temperature, 6),
        mode=mode,
        n=len(gold),
        split="train (held out of training)",
        seed=seed,
        nll_before=nll(probabilities, gold),
        nll_after=nll(apply_temperature(probabilities, temperature), gold),
        fitted=check["fitted_temperature"],
        check=check,
    )
    logger.info(
        "calibration: fitted T = %.3f on %d held-out rows, %s: %s",
        check["fitted_temperature"],
        len(gold),
        "kept" if check["kept"] else "not kept (T = 1)",
        check["reason"],
    )
    return calibration


def calibration_report(
    calibration: Calibration, raw: np.ndarray, calibrated: np.ndarray, gold: Any, mode: str
) -> dict[str, Any]:
    """metrics.json `calibration`: the temperature, what it was fitted on, and NLL / Brier / ECE before and after on
    the reported rows (`applied: false` when the scoring mode is not the one it was fitted on)."""
    applied = calibration.applies_to(mode)
    return {
        "method": METHOD,
        "temperature": calibration.temperature,
        "fitted_on": {"split": calibration.split, "n": calibration.n, "mode": calibration.mode},
        "check": calibration.check,  # kept or not, and why (None: a calibration made before runs checked it)
        "applied": applied,
        "before": probability_scores(raw, gold),
        "after": probability_scores(calibrated if applied else raw, gold),
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
