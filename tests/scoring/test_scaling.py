"""The calibration maps (`fintrl.scoring.scaling`): temperature and vector scaling on toy models whose true
probabilities are known."""

from __future__ import annotations

import numpy as np
import pytest

from fintrl.metrics.stats import expected_calibration_error, nll
from fintrl.scoring import scaling


def overconfident(n: int = 3000, sharpen: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy model whose labels are drawn from softmax(z) but which reports softmax(3 z): over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 3))
    true_p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    gold = np.array([rng.choice(3, p=p) for p in true_p])
    reported = np.exp(sharpen * z) / np.exp(sharpen * z).sum(-1, keepdims=True)
    return reported, gold, true_p


def biased(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy model that under-predicts label 1: it reports softmax(z - 1.5 e_1) for labels drawn from softmax(z).
    One temperature cannot undo that; a bias per label can."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 3))
    true_p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    gold = np.array([rng.choice(3, p=p) for p in true_p])
    shifted = z - np.array([0.0, 1.5, 0.0])
    reported = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    return reported, gold, true_p


def test_temperature_makes_an_overconfident_model_better_calibrated() -> None:
    probs, gold, _ = overconfident()
    fit, held = slice(0, 1000), slice(1000, None)  # fitted on some rows, judged on others
    temperature = scaling.fit_temperature(probs[fit], gold[fit])
    assert temperature == pytest.approx(3.0, rel=0.15)  # it undoes the sharpening
    after = scaling.apply_temperature(probs[held], temperature)
    assert nll(after, gold[held]) < nll(probs[held], gold[held])
    assert expected_calibration_error(after, gold[held]) < expected_calibration_error(probs[held], gold[held]) / 2
    assert (after.argmax(-1) == probs[held].argmax(-1)).all()  # calibration never changes the predicted label
    np.testing.assert_allclose(after.sum(-1), 1)


def test_temperature_of_a_calibrated_model_is_about_one_and_underconfidence_sharpens() -> None:
    probs, gold, true_p = overconfident(sharpen=1.0)
    assert scaling.fit_temperature(true_p, gold) == pytest.approx(1.0, abs=0.1)
    soft, gold, _ = overconfident(sharpen=0.5)
    assert scaling.fit_temperature(soft, gold) == pytest.approx(0.5, rel=0.15)


def test_rows_that_are_all_right_fit_no_temperature() -> None:
    """Separable calibration rows pull T to its lower bound (every sharper T lowers their NLL) and would make the
    reported rows over-confident: measured on the quickstart, eval NLL 0.21 -> 1.33. T stays 1 instead."""
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]] * 8)
    assert scaling.fit_temperature(probabilities, np.array([0, 1, 2] * 8)) == 1.0


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 2.5, 20.0])
def test_temperature_never_changes_the_argmax(temperature: float) -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([0.3, 0.3, 0.3, 0.3], size=500)
    probs[:5] = np.eye(4)[[0, 1, 2, 3, 0]]  # one-hot rows (generate mode) stay one-hot
    scaled = scaling.apply_temperature(probs, temperature)
    assert (scaled.argmax(-1) == probs.argmax(-1)).all()
    np.testing.assert_array_equal(scaled[:5], probs[:5])
    np.testing.assert_allclose(scaled.sum(-1), 1)


def test_vector_scaling_undoes_a_bias_toward_labels_and_gains_accuracy() -> None:
    probs, gold, true_p = biased()
    fit, held = slice(0, 1000), slice(1000, None)
    vector = scaling.fit("vector", probs[fit], gold[fit])
    assert vector.reorders and vector.weights == pytest.approx([1, 1, 1], abs=0.15)
    b = np.asarray(vector.biases)
    assert b[1] - (b[0] + b[2]) / 2 == pytest.approx(1.5, abs=0.3)  # the shift it undoes (b is set up to a constant)
    after = vector.apply(probs[held])
    temperature = scaling.fit("temperature", probs[fit], gold[fit]).apply(probs[held])
    assert nll(after, gold[held]) < nll(temperature, gold[held]) < nll(probs[held], gold[held])
    assert nll(after, gold[held]) == pytest.approx(nll(true_p[held], gold[held]), abs=0.02)
    assert (after.argmax(-1) == gold[held]).mean() > (probs[held].argmax(-1) == gold[held]).mean() + 0.03
    np.testing.assert_allclose(after.sum(-1), 1)


def test_vector_scaling_of_a_calibrated_model_is_about_the_identity() -> None:
    _, gold, true_p = overconfident(sharpen=1.0)
    vector = scaling.fit("vector", true_p, gold)
    assert vector.weights == pytest.approx([1, 1, 1], abs=0.1)
    b = np.asarray(vector.biases)
    assert np.ptp(b) < 0.2


def test_a_map_that_keeps_everything_is_the_identity_and_never_reorders() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    for identity in (scaling.Scaling("vector"), scaling.Scaling("temperature")):
        assert identity.identity and not identity.reorders
        np.testing.assert_array_equal(identity.apply(probs), probs)
    assert not scaling.Scaling("temperature", 2.0).reorders
    vector = scaling.Scaling("vector", weights=(1.0, 1.0, 1.0), biases=(0.0, 3.0, 0.0))
    assert vector.reorders and vector.apply(probs)[0].argmax() == 1  # a bias moved the most probable label
    assert vector.apply(probs)[1] == pytest.approx([0, 0, 1], abs=1e-12)  # a zero probability stays (next to) zero


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="one of temperature, vector"):
        scaling.fit("platt", np.eye(3), [0, 1, 2])
