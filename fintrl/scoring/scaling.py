"""The calibration maps: what turns the scorer's label probabilities into calibrated ones (Guo et al. 2017).

- `temperature` (one parameter): softmax(log p / T). T > 1 softens an over-confident model, T < 1 sharpens an
  under-confident one; the order of the labels, hence the predicted label, never changes.
- `vector` (two parameters per label): softmax(w * log p + b), every w > 0. Per label, so it can also undo a bias
  toward one label (a class the model under-predicts); the predicted label may change, to the calibrated argmax.

Both minimise the mean negative log-likelihood of the gold labels with scipy (bounded scalar search for T, L-BFGS-B
with the analytic gradient for w and b). Whether a fitted map is kept is `fintrl.scoring.calibration`'s check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fintrl.metrics.stats import nll

Method = Literal["temperature", "vector"]
METHODS: tuple[str, ...] = ("temperature", "vector")
BOUNDS = (0.05, 20.0)  # of T, and of each w
BIAS_BOUND = 20.0  # |b| at most this
_RIDGE = 1e-3  # pulls w to 1 and b to 0 where the rows cannot tell (b is otherwise defined up to a constant)
_FLOOR = 1e-30  # log p is taken of p >= this: a zero probability stays (next to) zero under any w > 0


@dataclass(frozen=True)
class Scaling:
    """A fitted map: `temperature` for temperature scaling; `weights` and `biases` (one per label) for vector."""

    method: Method = "temperature"
    temperature: float = 1.0
    weights: tuple[float, ...] | None = None
    biases: tuple[float, ...] | None = None

    @property
    def identity(self) -> bool:
        if self.method == "vector":
            return all(w == 1.0 for w in self.weights or ()) and not any(self.biases or ())
        return self.temperature == 1.0

    @property
    def reorders(self) -> bool:
        """Can it change which label is most probable (so predictions follow the calibrated argmax)?"""
        return self.method == "vector" and not self.identity

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        if self.identity:
            return np.asarray(probabilities, dtype=float)
        if self.method == "vector":
            return apply_vector(probabilities, np.asarray(self.weights), np.asarray(self.biases))
        return apply_temperature(probabilities, self.temperature)

    def record(self) -> dict[str, Any]:
        if self.method == "vector":
            return {"weights": list(self.weights or ()), "biases": list(self.biases or ())}
        return {"temperature": self.temperature}


def _softmax(logits: np.ndarray) -> np.ndarray:
    scaled = np.exp(logits - logits.max(-1, keepdims=True))
    return scaled / scaled.sum(-1, keepdims=True)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row; a zero probability stays zero (a one-hot row stays one-hot)."""
    p = np.asarray(probabilities, dtype=float)
    with np.errstate(divide="ignore"):
        return _softmax(np.log(p) / temperature)


def apply_vector(probabilities: np.ndarray, weights: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """softmax(w * log p + b), row by row (w and b per label)."""
    p = np.asarray(probabilities, dtype=float)
    return _softmax(np.log(np.clip(p, _FLOOR, None)) * weights + biases)


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


def optimal_vector(probabilities: np.ndarray, gold: Any) -> tuple[np.ndarray, np.ndarray]:
    """The w (in BOUNDS) and b (|b| <= BIAS_BOUND) that minimise the mean NLL of the gold labels, plus a small ridge
    toward w = 1, b = 0 (a label no row has gets no arbitrary bias)."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(np.asarray(probabilities, dtype=float), _FLOOR, None))
    n, k = logp.shape
    onehot = np.eye(k)[np.asarray(gold)]

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = x[:k], x[k:]
        z = logp * w + b
        z = z - z.max(-1, keepdims=True)
        log_q = z - np.log(np.exp(z).sum(-1, keepdims=True))
        grad_z = (np.exp(log_q) - onehot) / n
        value = -(log_q * onehot).sum() / n + _RIDGE * (((w - 1) ** 2).sum() + (b**2).sum())
        grad = np.concatenate([(grad_z * logp).sum(0) + 2 * _RIDGE * (w - 1), grad_z.sum(0) + 2 * _RIDGE * b])
        return float(value), grad

    start = np.concatenate([np.ones(k), np.zeros(k)])
    bounds = [BOUNDS] * k + [(-BIAS_BOUND, BIAS_BOUND)] * k
    best = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return best.x[:k], best.x[k:]


def fit(method: str, probabilities: np.ndarray, gold: Any) -> Scaling:
    """The map of `method` that minimises NLL on these rows (not yet checked)."""
    if method == "vector":
        weights, biases = optimal_vector(probabilities, gold)
        return Scaling("vector", weights=_rounded(weights), biases=_rounded(biases))
    if method != "temperature":
        raise ValueError(f"calibration method {method!r}: one of {', '.join(METHODS)}")
    return Scaling("temperature", temperature=round(optimal_temperature(probabilities, gold), 6))


def _rounded(values: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)
