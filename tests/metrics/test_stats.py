"""The statistics, pinned against hand-computed cases and scikit-learn: bootstrap intervals, McNemar's exact test,
probability scores, the risk-coverage curve, and the paired comparison's verdict."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from fintrl.metrics import stats
from fintrl.metrics.paired import compare_pooled, compare_rows, flips, render, render_pooled, same_rows, verdict


def test_vectorised_scores_match_scikit_learn_on_every_resample() -> None:
    rng = np.random.default_rng(7)
    for trial in range(60):
        k, n = int(rng.integers(2, 6)), int(rng.integers(1, 30))
        gold = rng.integers(0, k, n)
        pred = rng.integers(-1 if trial % 3 == 0 else 0, k, n)  # -1: an invalid answer (generate mode)
        idx = rng.integers(0, n, size=(4, n))
        batch = stats.scores(stats.confusions(stats._codes(gold, pred, k), k, idx), k)
        for row in range(4):
            g, p, ids = gold[idx[row]], pred[idx[row]], list(range(k))
            expected = {
                "accuracy": accuracy_score(g, p),
                "f1_macro": f1_score(g, p, labels=ids, average="macro", zero_division=0),
                "f1_weighted": f1_score(g, p, labels=ids, average="weighted", zero_division=0),
                "mcc": matthews_corrcoef(g, p) if len(set(g) | set(p)) > 1 else 0.0,
            }
            for name, value in expected.items():
                assert batch[name][row] == pytest.approx(value, abs=1e-12), (name, g, p)


def test_hand_computed_point_scores() -> None:
    # gold 0 0 1 1, predicted 0 1 1 1: accuracy 3/4; F1 class 0 = 2/3, class 1 = 4/5; MCC = 1/sqrt(3)
    scores = stats.point_scores([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert scores["accuracy"] == 0.75
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert scores["f1_weighted"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert scores["mcc"] == pytest.approx(1 / np.sqrt(3))


def test_bootstrap_interval_contains_the_estimate_shrinks_with_n_and_is_seeded() -> None:
    rng = np.random.default_rng(0)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        gold = rng.integers(0, 3, n)
        return gold, np.where(rng.random(n) < 0.8, gold, (gold + 1) % 3)

    widths = []
    for n in (100, 400, 1600):
        gold, pred = rows(n)
        intervals = stats.bootstrap_intervals(gold, pred, 3)
        point = stats.point_scores(gold, pred, 3)
        for name in stats.HEADLINE:
            lo, hi = intervals[name]
            assert lo <= point[name] <= hi, (name, n)
        widths.append(intervals["accuracy"][1] - intervals["accuracy"][0])
        assert (intervals["resamples"], intervals["seed"], intervals["level"]) == (1000, 0, 0.95)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 100), rel=0.25)  # the normal approximation
    gold, pred = rows(300)
    assert stats.bootstrap_intervals(gold, pred, 3) == stats.bootstrap_intervals(gold, pred, 3)  # seeded
    assert stats.bootstrap_intervals(gold, gold, 3)["accuracy"] == [1.0, 1.0]  # always right: no uncertainty left


def test_bootstrap_in_chunks_is_the_same_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    gold = np.arange(50) % 3
    pred = np.where(np.arange(50) % 4 == 0, (gold + 1) % 3, gold)
    whole = stats.bootstrap_intervals(gold, pred, 3, resamples=300)
    monkeypatch.setattr(stats, "_CELLS", 50 * 7)  # 7 resamples per chunk
    chunked = stats.bootstrap_intervals(gold, pred, 3, resamples=300)
    assert chunked["accuracy"] == pytest.approx(whole["accuracy"], abs=0.03)


def test_mcnemar_exact_on_a_known_table() -> None:
    # b = 1, c = 7: two-sided exact binomial, 2 * (C(8,0) + C(8,1)) / 2^8 = 18 / 256
    assert stats.mcnemar(1, 7) == pytest.approx(0.0703125)
    assert stats.mcnemar(7, 1) == pytest.approx(0.0703125)
    assert stats.mcnemar(0, 6) == pytest.approx(2 / 64)
    assert stats.mcnemar(0, 0) == 1.0


def test_probability_scores_by_hand() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert stats.nll(probs, [0, 0]) == pytest.approx(-(np.log(0.8) + np.log(0.4)) / 2)
    # (0.2^2 + 0.2^2 + 0.6^2 + 0.6^2) / 2
    assert stats.brier(probs, [0, 0]) == pytest.approx((0.08 + 0.72) / 2)
    assert stats.brier(np.eye(2), [0, 1]) == 0.0


def test_risk_coverage_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    pred, gold = [0, 1, 1, 1], [0, 0, 1, 1]  # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right)
    table = {p["coverage"]: p for p in stats.risk_coverage(probs, pred, gold)["table"]}
    assert table[1.0] == {"coverage": 1.0, "n": 4, "accuracy": 0.75, "min_confidence": 0.6}
    assert table[0.5] == {"coverage": 0.5, "n": 2, "accuracy": 0.5, "min_confidence": 0.8}
    assert table[0.8]["n"] == 4 and table[0.9]["n"] == 4  # ceil(3.2), ceil(3.6)
    curve = stats.risk_coverage(probs, pred, gold)["curve"]
    assert len(curve) == stats.CURVE_POINTS and curve[0]["n"] == 1 and curve[0]["accuracy"] == 1.0
    assert stats.confidence(probs, [0, -1, 1, 0]).tolist() == [0.9, 0.0, 0.7, 0.4]  # invalid: confidence 0


def test_format_interval() -> None:
    assert stats.format_interval(0.8571, [0.8431, 0.8712]) == "0.857 [0.843, 0.871]"
    assert stats.format_interval(0.021, [0.008, 0.034], signed=True) == "+0.021 [+0.008, +0.034]"
    assert stats.format_interval(0.5, None) == "0.500"


def rows(predictions: str, gold: str = "nnnnpppp") -> list[dict]:
    names = {"n": "negative", "p": "positive", "x": None}
    return [
        {"text": f"row {i}", "gold": names[g], "prediction": names[p]}
        for i, (g, p) in enumerate(zip(gold, predictions))
    ]


def test_verdict_rule() -> None:
    assert (
        verdict(0.021, [0.008, 0.034], 0.003)
        == "B is better: +0.021 accuracy, 95 % CI [+0.008, +0.034], McNemar p = 0.003"
    )
    assert verdict(-0.05, [-0.08, -0.01], 0.01).startswith("A is better: -0.050 accuracy")
    # the interval excludes 0 but McNemar does not reject (or the reverse): no detectable difference
    assert verdict(0.02, [0.001, 0.04], 0.07).startswith("no detectable difference: +0.020 accuracy")
    assert verdict(0.02, [-0.001, 0.04], 0.01).startswith("no detectable difference")
    assert verdict(0.0, [0.0, 0.0], 1.0) == (
        "no detectable difference: +0.000 accuracy, 95 % CI [+0.000, +0.000], McNemar p = 1.000"
    )


def test_compare_rows_counts_flips_and_per_class_f1() -> None:
    a, b = rows("nnnnnnnn"), rows("nnnpppppp"[:8])  # B fixes 4 positives, breaks 1 negative
    assert same_rows(a, b) and not same_rows(a, rows("nnnnnnnn", gold="nnnnpppn"))
    report = compare_rows(a, b, ["negative", "positive"])
    assert report["mcnemar"]["b_right_a_wrong"] == 4 and report["mcnemar"]["a_right_b_wrong"] == 1
    assert report["mcnemar"]["p_value"] == pytest.approx(stats.mcnemar(4, 1))  # 12/32 = 0.375
    assert report["metrics"]["accuracy"]["a"] == 0.5 and report["metrics"]["accuracy"]["b"] == 0.875
    assert report["metrics"]["accuracy"]["difference"] == pytest.approx(0.375)
    assert report["per_class_f1"]["positive"] == {
        "a": 0.0,
        "b": pytest.approx(8 / 9),
        "difference": pytest.approx(8 / 9),
    }
    assert [r["text"] for r in report["flips"]["a_right_b_wrong"]] == ["row 3"]
    assert report["flips"]["b_right_a_wrong"][0] == {
        "text": "row 4",
        "gold": "positive",
        "a": "negative",
        "b": "positive",
    }
    assert report["verdict"].startswith("no detectable difference")  # 5 discordant rows cannot reach p < 0.05
    assert flips(a, b) == {"gained": 4, "lost": 1, "p_value": pytest.approx(0.375)}
    text = render(report)
    assert text.splitlines()[-1] == report["verdict"] and "B right, A wrong: 4 rows" in text


def test_compare_rows_with_itself_and_invalid_answers() -> None:
    a = rows("nnxnppxp")
    report = compare_rows(a, a, ["negative", "positive"])
    assert report["mcnemar"]["b_right_a_wrong"] == report["mcnemar"]["a_right_b_wrong"] == 0
    assert all(m["difference"] == 0 and m["interval"] == [0.0, 0.0] for m in report["metrics"].values())
    assert report["verdict"].startswith("no detectable difference: +0.000 accuracy")
    assert report["metrics"]["accuracy"]["a"] == 0.75  # an invalid answer is wrong
    with pytest.raises(ValueError, match="not on the same rows"):
        compare_rows(a, a[:-1])


def test_a_clear_improvement_is_detected() -> None:
    n = 400
    gold = "np" * (n // 2)
    a = rows("".join(g if i % 4 else ("p" if g == "n" else "n") for i, g in enumerate(gold)), gold)  # 75 % right
    b = rows(gold[:-8] + ("n" if gold[-8] == "p" else "p") + gold[-7:], gold)  # one row wrong
    report = compare_rows(a, b, ["negative", "positive"])
    assert report["verdict"].startswith("B is better: +0.248 accuracy, 95 % CI [+")
    assert report["mcnemar"]["p_value"] < 1e-20 and report["metrics"]["accuracy"]["interval"][0] > 0
    reverse = compare_rows(b, a, ["negative", "positive"])
    assert reverse["verdict"].startswith("A is better: -0.248 accuracy")


def flipped(gold: str, wrong: set[int]) -> str:
    return "".join(("p" if g == "n" else "n") if i in wrong else g for i, g in enumerate(gold))


def test_pooled_seeds_detect_what_no_single_pair_can() -> None:
    gold = "np" * 20
    pairs = [  # per seed, B fixes 7 of A's errors and breaks 1 row: p = 0.07 alone
        (rows(flipped(gold, set(range(0, 8))), gold), rows(flipped(gold, {7, 20}), gold)),
        (rows(flipped(gold, set(range(10, 18))), gold), rows(flipped(gold, {17, 30}), gold)),
    ]
    alone = [compare_rows(a, b, ["negative", "positive"]) for a, b in pairs]
    assert all(r["verdict"].startswith("no detectable difference") for r in alone)
    assert [r["mcnemar"]["p_value"] for r in alone] == [pytest.approx(stats.mcnemar(7, 1))] * 2
    pooled = compare_pooled(pairs, ["negative", "positive"], names=[("a42", "b42"), ("a7", "b7")])
    assert (pooled["mcnemar"]["b_right_a_wrong"], pooled["mcnemar"]["a_right_b_wrong"]) == (14, 2)
    assert pooled["mcnemar"]["p_value"] == pytest.approx(stats.mcnemar(14, 2)) and stats.mcnemar(14, 2) < 0.05
    accuracy = pooled["metrics"]["accuracy"]
    assert (accuracy["a"], accuracy["b"], accuracy["difference"]) == (0.8, pytest.approx(0.95), pytest.approx(0.15))
    assert accuracy["interval"][0] > 0 and pooled["verdict"].startswith("B is better: +0.150 accuracy")
    assert [(p["a"], p["b"], p["gained"], p["lost"]) for p in pooled["pairs"]] == [
        ("a42", "b42", 7, 1),
        ("a7", "b7", 7, 1),
    ]
    text = render_pooled(pooled)
    assert text.splitlines()[-1] == pooled["verdict"] and "a42 -> b42: accuracy 0.800 -> 0.950" in text


def test_one_pair_pooled_is_the_plain_comparison() -> None:
    a, b = rows("nnnnnnnn"), rows("nnnpppppp"[:8])
    plain, pooled = compare_rows(a, b, ["negative", "positive"]), compare_pooled([(a, b)], ["negative", "positive"])
    assert pooled["metrics"] == plain["metrics"] and pooled["verdict"] == plain["verdict"]
    assert pooled["mcnemar"]["p_value"] == plain["mcnemar"]["p_value"]
    with pytest.raises(ValueError, match="not all on the same rows"):
        compare_pooled([(a, b), (a[:-1], b[:-1])])
