"""A learning-curve point: the scorer's metrics with their noise, and what the trivial answer scores there."""

from __future__ import annotations

import pytest

from fintrl.evaluation.report import curve_point


def test_a_curve_point_carries_the_majority_answers_score() -> None:
    point = curve_point([0, 0, 0, 1], [1, 1, 0, 1], ["down", "up"])
    assert point["accuracy"] == 0.5
    assert point["majority"]["accuracy"] == 0.75  # every row answered `down`
    assert point["majority"]["f1_macro"] == pytest.approx((6 / 7) / 2)
