"""The statistics behind a report's uncertainty: bootstrap intervals, paired differences, McNemar's exact test,
probability scores (NLL, Brier) and the risk-coverage curve. Pure functions on numpy arrays; scipy for the test.

The bootstrap is vectorised: each chunk of resamples is an index matrix [resamples, rows]; one `np.bincount` over
`resample * cells + gold * (K + 1) + predicted` gives every resample's confusion matrix at once, and the headline
metrics are computed from those matrices as arrays (no Python loop per resample). An invalid answer (a negative
prediction, `generate` mode only) is one more predicted column, as scikit-learn counts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "mcc")
RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
COVERAGE_LEVELS = (1.0, 0.9, 0.8, 0.5)
CURVE_POINTS = 20  # coverage 5 %, 10 %, ... 100 %
_CELLS = 4_000_000  # index-matrix cells per chunk (resamples x rows): bounded memory on large eval sets


def _codes(gold: Any, pred: Any, k: int) -> np.ndarray:
    """Each row's confusion cell, gold * (k + 1) + predicted; an invalid answer (negative) is predicted column k."""
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if gold.shape != pred.shape or not gold.size:
        raise ValueError(f"need as many predictions as gold labels, and at least one ({pred.size} / {gold.size})")
    return gold * (k + 1) + np.where(pred < 0, k, pred)


def confusions(codes: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """One confusion matrix (rows gold, columns predicted, the last column invalid) per row of `idx`: [B, k+1, k+1]."""
    b, cells = idx.shape[0], (k + 1) ** 2
    flat = (codes[idx] + np.arange(b, dtype=np.int64)[:, None] * cells).ravel()
    return np.bincount(flat, minlength=b * cells).reshape(b, k + 1, k + 1)


def scores(cm: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1, weighted-F1 (over the k labels, as scikit-learn with `labels=range(k)`, zero_division=0)
    and MCC (multi-class, Gorodkin's R_K; 0 when undefined, as scikit-learn) of a batch of confusion matrices."""
    cm = np.asarray(cm, dtype=float)
    n = cm.sum((-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    gold, predicted = cm.sum(-1), cm.sum(-2)  # per class, the invalid column included in `predicted`
    f1 = per_class_f1(cm, k)
    cov = correct * n - (gold * predicted).sum(-1)
    denominator = np.sqrt((n**2 - (predicted**2).sum(-1)) * (n**2 - (gold**2).sum(-1)))
    return {
        "accuracy": correct / n,
        "f1_macro": f1.mean(-1),
        "f1_weighted": (f1 * gold[..., :k]).sum(-1) / n,
        "mcc": np.divide(cov, denominator, out=np.zeros_like(cov), where=denominator > 0),
    }


def per_class_f1(cm: np.ndarray, k: int) -> np.ndarray:
    """F1 of each of the k labels: 2 TP / (gold + predicted), 0 for a label neither present nor predicted."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)[..., :k]
    both = cm.sum(-1)[..., :k] + cm.sum(-2)[..., :k]
    return np.divide(2 * tp, both, out=np.zeros_like(tp), where=both > 0)


def class_f1(gold: Any, pred: Any, k: int) -> np.ndarray:
    """Each label's F1 on the rows as they are."""
    codes = _codes(gold, pred, k)
    return per_class_f1(confusions(codes, k, np.arange(len(codes))[None])[0], k)


def point_scores(gold: Any, pred: Any, k: int) -> dict[str, float]:
    """The headline metrics of the rows as they are (the bootstrap's point estimate)."""
    codes = _codes(gold, pred, k)
    cm = confusions(codes, k, np.arange(len(codes))[None])
    return {name: float(value[0]) for name, value in scores(cm, k).items()}


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Seeded resamples of n row indices (with replacement), in chunks of at most _CELLS cells."""
    rng = np.random.default_rng(seed)
    step = max(1, _CELLS // n)
    for start in range(0, resamples, step):
        yield rng.integers(0, n, size=(min(step, resamples - start), n))


def _interval(values: np.ndarray, level: float) -> list[float]:
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _method(level: float, resamples: int, seed: int, paired: bool = False) -> dict[str, Any]:
    what = "paired bootstrap over the rows (both sides resampled alike)" if paired else "bootstrap over the eval rows"
    return {"method": f"{what}, percentile interval", "level": level, "resamples": resamples, "seed": seed}


def bootstrap_intervals(
    gold: Any, pred: Any, k: int, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> dict[str, Any]:
    """`{accuracy: [lo, hi], f1_macro, f1_weighted, mcc, method, level, resamples, seed}`: percentile intervals."""
    codes = _codes(gold, pred, k)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in HEADLINE}
    for idx in _resamples(len(codes), resamples, seed):
        for name, values in scores(confusions(codes, k, idx), k).items():
            draws[name].append(values)
    return {name: _interval(np.concatenate(draws[name]), level) for name in HEADLINE} | _method(level, resamples, seed)


def paired_differences(
    gold: Any, pred_a: Any, pred_b: Any, k: int, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> dict[str, Any]:
    """Per headline metric: A, B, the difference B - A and its interval, from resamples applied to both sides alike
    (the rows are paired: both sides scored the same rows). Plus `bootstrap`: how the intervals were made."""
    return pooled_differences(gold, [(pred_a, pred_b)], k, resamples=resamples, seed=seed, level=level)


def pooled_differences(
    gold: Any,
    pairs: list[tuple[Any, Any]],
    k: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """`paired_differences` averaged over pairs of predictions on the same rows (one pair per training seed): A and B
    are the pairs' mean metrics, and each resample of the rows is applied to every pair alike, so the interval of
    the mean difference carries the rows' sampling noise while the seeds' spread is in the mean. One pair: exactly
    `paired_differences`."""
    codes = [(_codes(gold, a, k), _codes(gold, b, k)) for a, b in pairs]
    draws: dict[str, list[np.ndarray]] = {name: [] for name in HEADLINE}
    for idx in _resamples(len(codes[0][0]), resamples, seed):
        sums = {name: np.zeros(len(idx)) for name in HEADLINE}
        for codes_a, codes_b in codes:
            a, b = scores(confusions(codes_a, k, idx), k), scores(confusions(codes_b, k, idx), k)
            for name in HEADLINE:
                sums[name] += b[name] - a[name]
        for name in HEADLINE:
            draws[name].append(sums[name] / len(codes))
    points = [(point_scores(gold, a, k), point_scores(gold, b, k)) for a, b in pairs]
    out: dict[str, Any] = {}
    for name in HEADLINE:
        a, b = (float(np.mean([p[side][name] for p in points])) for side in (0, 1))
        out[name] = {"a": a, "b": b, "difference": b - a, "interval": _interval(np.concatenate(draws[name]), level)}
    return out | {"bootstrap": _method(level, resamples, seed, paired=True)}


def mcnemar(b_only: int, a_only: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant rows (B right where A was wrong, and the
    reverse) under p = 1/2. 1.0 when no row is discordant."""
    from scipy.stats import binomtest

    return float(binomtest(b_only, b_only + a_only, 0.5).pvalue) if b_only + a_only else 1.0


def nll(probabilities: Any, gold: Any) -> float:
    """Mean negative log-likelihood of the gold labels (probabilities clipped at 1e-12)."""
    p = np.asarray(probabilities, dtype=float)
    return float(-np.log(np.clip(p[np.arange(len(p)), np.asarray(gold)], 1e-12, None)).mean())


def brier(probabilities: Any, gold: Any) -> float:
    """Multi-class Brier score: mean over rows of the squared distance between the probabilities and the one-hot
    gold label (0 is perfect, 2 the worst)."""
    p = np.asarray(probabilities, dtype=float)
    onehot = np.eye(p.shape[1])[np.asarray(gold)]
    return float(((p - onehot) ** 2).sum(-1).mean())


def confidence(probabilities: Any, pred: Any) -> np.ndarray:
    """The probability of each row's predicted label: what abstention thresholds (0 for an invalid answer)."""
    p, pred = np.asarray(probabilities, dtype=float), np.asarray(pred)
    return np.where(pred >= 0, p[np.arange(len(p)), np.clip(pred, 0, None)], 0.0)


def risk_coverage(
    probabilities: Any, pred: Any, gold: Any, levels: tuple[float, ...] = COVERAGE_LEVELS
) -> dict[str, Any]:
    """Accuracy on the most confident rows at each coverage: `table` at `levels`, `curve` every 5 %. Each point: the
    coverage, its n rows, their accuracy and `min_confidence` (the n-th row's confidence: `predict --min-confidence`
    at that value keeps about that coverage; ties may keep a few more rows)."""
    conf = confidence(probabilities, pred)
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum((np.asarray(pred) == np.asarray(gold))[order])
    n = len(conf)

    def at(level: float) -> dict[str, float]:
        k = min(n, max(1, math.ceil(level * n - 1e-9)))
        return {
            "coverage": round(level, 4),
            "n": k,
            "accuracy": round(float(hits[k - 1] / k), 4),
            "min_confidence": round(float(conf[order[k - 1]]), 4),
        }

    return {
        "confidence": "probability of the predicted label (calibrated when a calibration applied)",
        "table": [at(level) for level in levels],
        "curve": [at((i + 1) / CURVE_POINTS) for i in range(CURVE_POINTS)],
    }


def format_interval(value: float, interval: list[float] | None, signed: bool = False) -> str:
    """`0.857 [0.843, 0.871]` (signed: `+0.021 [+0.008, +0.034]`); the value alone without an interval."""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(value)
    return f"{text} [{fmt.format(interval[0])}, {fmt.format(interval[1])}]" if interval else text


def summary(metrics: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """What `fintrl run` and `fintrl eval` print: where the report went, the headline metrics, each with its 95 %
    interval, the calibration (NLL, Brier, ECE before -> after), the accuracy at each coverage of the table, the
    invalid rate, the baselines and (a run) the seconds per stage."""
    out: dict[str, Any] = {"output_dir": output_dir}
    out |= {k: round(metrics[k], 4) for k in ("accuracy", "f1_macro", "f1_weighted")}
    intervals = metrics.get("intervals") or {}
    if intervals:
        out["with_95_ci"] = {k: format_interval(metrics[k], intervals.get(k)) for k in HEADLINE if k in metrics}
    calibration = metrics.get("calibration") or {}
    if calibration.get("applied"):
        before, after = calibration["before"], calibration["after"]
        check = calibration.get("check") or {}
        scaling = (
            {"method": calibration["method"], "labels_changed": calibration.get("labels_changed", 0)}
            if "weights" in calibration
            else {"temperature": round(calibration["temperature"], 3)}
        )
        out["calibration"] = (
            scaling
            | ({"kept": check["kept"], "why": check["reason"]} if check else {})
            | {k: f"{before[k]:.3f} -> {after[k]:.3f}" for k in ("ece", "nll", "brier")}
        )
    if metrics.get("coverage"):
        out["accuracy_at_coverage"] = {f"{p['coverage']:.0%}": p["accuracy"] for p in metrics["coverage"]["table"]}
    out |= {"invalid_rate": metrics.get("invalid_rate"), "baselines": metrics.get("baselines", {})}
    return out | ({"timings_s": metrics["timings"]} if metrics.get("timings") else {})


def confidence_bins(
    probabilities: np.ndarray, y_true: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label confidence, whether it was right, and its bin index (equal-width bins over [0, 1])."""
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == np.asarray(y_true)
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return confidence, correct, which


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: |accuracy - confidence| per confidence bin, weighted by bin size (none in sklearn for this)."""
    confidence, correct, which = confidence_bins(probabilities, y_true, bins)
    return float(
        sum(
            abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins)
            if (which == b).any()
        )
    )
