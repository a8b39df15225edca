"""Calibrated probabilities, and abstaining when they are low.

Temperature scaling (one parameter, Guo et al. 2017): the scorer's per-label log-probabilities are divided by T and
renormalised, p_k^(1/T) / sum_j p_j^(1/T). T > 1 softens an over-confident model, T < 1 sharpens an under-confident
one; the order of the labels, hence the predicted label, never changes. T minimises the negative log-likelihood
(`scipy.optimize.minimize_scalar` over log T, bounded to [0.05, 20]; T = 1 unless that lowers it) on calibration rows:
a seeded stratified sample of the train split, held out of training (the eval split is the one reported, so it is
never used), scored once after training with the run's exact scorer. The run writes it to `calibration.json`;
`eval` and `predict` apply it (`--uncalibrated`: not), and so can any server: `Target.calibrate`.
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


def fit_temperature(probabilities: np.ndarray, gold: Any) -> float:
    """The T in BOUNDS that minimises the mean NLL of the gold labels; 1.0 when none does better than 1.0, and when the
    rows cannot tell: if every row is already right, a sharper T always lowers their NLL (T runs to the bound, and
    the rows it is applied to become over-confident), so an optimum at a bound is no calibration either."""
    from scipy.optimize import minimize_scalar

    if (np.asarray(probabilities).argmax(-1) == np.asarray(gold)).all():
        logger.warning("calibration: every held-out row is already right, so no temperature can be fitted; T stays 1")
        return 1.0

    def loss(log_t: float) -> float:
        return nll(apply_temperature(probabilities, math.exp(log_t)), gold)

    best = minimize_scalar(loss, bounds=tuple(map(math.log, BOUNDS)), method="bounded", options={"xatol": 1e-4})
    temperature = float(math.exp(best.x))
    if not BOUNDS[0] * 1.05 < temperature < BOUNDS[1] / 1.05:
        logger.warning("calibration: the fitted temperature sits at its bound (%.3g); T stays 1", temperature)
        return 1.0
    return temperature if best.fun < loss(0.0) else 1.0


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
    try:
        record = json.loads(path.read_text())
        record.pop("method", None)
        return Calibration(**record)
    except (ValueError, TypeError) as err:
        raise RunFolderError(f"{path} is corrupt ({err}); delete it to score uncalibrated, or rerun the run") from None


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
    temperature = fit_temperature(result.probabilities, gold)
    calibration = Calibration(
        temperature=round(temperature, 6),
        mode=result.mode,
        n=len(gold),
        split="train (held out of training)",
        seed=seed,
        nll_before=nll(result.probabilities, gold),
        nll_after=nll(apply_temperature(result.probabilities, temperature), gold),
    )
    logger.info(
        "calibration: T = %.3f on %d held-out rows (NLL %.3f -> %.3f)",
        temperature,
        len(gold),
        calibration.nll_before,
        calibration.nll_after,
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
