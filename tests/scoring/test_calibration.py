"""Calibrated probabilities (temperature scaling on held-out train rows) and abstention: the statistics on toy models,
then on the tiny trained run through `eval` and `predict`, as a user calls them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fintrl.cli.main import main
from fintrl.metrics.stats import nll
from fintrl.scoring import calibration as cal
from fintrl.scoring import scaling
from fintrl.scoring.scorer import ScoreResult
from tests.scoring.test_scaling import biased, overconfident

LABELS = ["negative", "neutral", "positive"]


def test_a_temperature_that_would_worsen_new_rows_is_not_kept() -> None:
    """60 rows of an already calibrated model: in-sample the fit finds T far from 1 (it chases noise), and that T makes
    fresh rows of the same model worse; the cross-fitted check sees no gain beyond noise and keeps T = 1."""
    _, gold, true_p = overconfident(n=3060, sharpen=1.0, seed=9)
    rows, fresh = slice(0, 60), slice(60, None)
    fitted = scaling.fit_temperature(true_p[rows], gold[rows])
    assert abs(fitted - 1) > 0.2  # an in-sample fit would have changed the probabilities...
    assert nll(scaling.apply_temperature(true_p[fresh], fitted), gold[fresh]) > nll(
        true_p[fresh], gold[fresh]
    )  # ...for worse
    calibration = cal.calibrate_rows(true_p[rows], gold[rows], "trie", seed=0)
    assert calibration.temperature == 1.0 and calibration.fitted == pytest.approx(fitted, rel=1e-3)
    check = calibration.check
    assert check["kept"] is False and check["interval"][0] <= 0 and "not beyond noise" in check["reason"]


def test_a_temperature_that_helps_on_unseen_rows_is_kept_and_recorded() -> None:
    probs, gold, _ = overconfident(n=256)
    calibration = cal.calibrate_rows(probs, gold, "trie", seed=0)
    assert calibration.check["kept"] and calibration.check["interval"][0] > 0
    assert calibration.temperature == pytest.approx(3.0, rel=0.2) == calibration.fitted
    assert len(calibration.check["fold_temperatures"]) == cal.CHECK_FOLDS
    raw = ScoreResult(probs.argmax(-1).tolist(), probs, "trie")
    report = cal.calibration_report(calibration, raw, calibration.apply_result(raw), gold)
    assert report["check"] == calibration.check  # metrics.json says which happened and why
    from fintrl.metrics.stats import summary

    shown = summary({"accuracy": 1, "f1_macro": 1, "f1_weighted": 1, "calibration": report}, "out")["calibration"]
    assert shown["kept"] is True and shown["why"].startswith("it lowers NLL on rows it was not fitted on")


def test_all_right_rows_are_a_case_of_the_check() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]] * 8)
    check = cal.check_calibration(probabilities, np.array([0, 1, 2] * 8))
    assert check["kept"] is False and "search bound" in check["reason"]


def test_vector_scaling_that_helps_is_kept_and_moves_predictions_to_the_calibrated_argmax(tmp_path: Path) -> None:
    probs, gold, _ = biased(n=256)
    calibration = cal.calibrate_rows(probs, gold, "trie", seed=0, method="vector")
    check = calibration.check
    assert check["kept"] and check["interval"][0] > 0 and check["labels_fixed"] >= check["labels_broken"]
    assert check["over_temperature"]["interval"][0] > 0  # a bias per label does what one temperature cannot
    assert calibration.method == "vector" and calibration.temperature == 1.0 and calibration.fitted is None
    assert calibration.weights == tuple(check["fitted"]["weights"]) and len(check["folds"]) == cal.CHECK_FOLDS
    assert calibration.nll_after < calibration.nll_before
    raw = ScoreResult(probs.argmax(-1).tolist(), probs, "trie")
    scored = calibration.apply_result(raw)
    assert scored.predictions == scored.probabilities.argmax(-1).tolist() != raw.predictions  # labels follow it
    report = cal.calibration_report(calibration, raw, scored, gold)
    assert report["method"] == "vector scaling" and report["labels_changed"] > 0
    assert report["weights"] == list(calibration.weights)
    from fintrl.metrics.stats import summary

    shown = summary({"accuracy": 1, "f1_macro": 1, "f1_weighted": 1, "calibration": report}, "out")["calibration"]
    assert shown["method"] == "vector scaling" and shown["labels_changed"] == report["labels_changed"]
    cal.save_calibration(calibration, tmp_path)  # calibration.json round-trips
    assert cal.load_calibration(tmp_path, n_labels=3) == calibration


def test_vector_scaling_of_a_calibrated_model_is_not_kept() -> None:
    _, gold, true_p = overconfident(n=256, sharpen=1.0, seed=4)
    calibration = cal.calibrate_rows(true_p, gold, "trie", seed=0, method="vector")
    assert calibration.check["vector"]["kept"] is False and calibration.scaling.identity
    assert calibration.method == "temperature" and calibration.check["reason"].startswith("vector scaling not kept")
    raw = ScoreResult(true_p.argmax(-1).tolist(), true_p, "trie")
    assert calibration.apply_result(raw).predictions == raw.predictions


def test_vector_scaling_that_does_no_better_than_one_temperature_falls_back_to_it() -> None:
    """An over-confident model with no bias toward a label: one temperature undoes it; the vector map's extra
    parameters gain nothing beyond noise out of fold, so the run keeps the checked temperature instead."""
    probs, gold, _ = overconfident(n=256, seed=1)
    check = cal.check_calibration(probs, gold, "vector")
    assert check["interval"][0] > 0 and check["over_temperature"]["interval"][0] <= 0
    assert check["kept"] is False and "no better than one temperature" in check["reason"]
    calibration = cal.calibrate_rows(probs, gold, "trie", seed=0, method="vector")
    assert calibration.method == "temperature" and calibration.temperature == pytest.approx(3.0, rel=0.2)
    assert calibration.check["kept"] and calibration.check["vector"]["reason"] == check["reason"]


def test_a_map_that_breaks_more_labels_than_it_fixes_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Softening an over-confident model lowers NLL a lot; a bias toward one label on top of it breaks labels the
    model had right: the check refuses the map although its NLL gain is beyond noise."""
    probs, gold, _ = overconfident(n=256)
    harmful = scaling.Scaling("vector", weights=(0.33, 0.33, 0.33), biases=(0.0, 0.6, 0.0))
    monkeypatch.setattr(cal, "fit", lambda method, p, g: harmful)
    check = cal.check_calibration(probs, gold, "vector")
    assert check["interval"][0] > 0 and check["labels_broken"] > check["labels_fixed"]
    assert check["kept"] is False and check["reason"].startswith("on rows it was not fitted on it breaks")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": [1.0, 1.0]}, "one number per label"),
        ({"weights": [1.0, 0.0, 1.0]}, "weights 0.0 is outside"),
        ({"biases": [0.0, "x", 0.0]}, "biases 'x' is not a number"),
        ({"method": "platt scaling"}, "method 'platt scaling' is not one of"),
    ],
)
def test_a_vector_calibration_file_is_checked(tmp_path: Path, change: dict, message: str) -> None:
    from fintrl.errors import RunFolderError

    calibration = cal.Calibration(1.0, "trie", 10, "train", method="vector", weights=(1, 1, 1), biases=(0, 1, 0))
    (tmp_path / "calibration.json").write_text(json.dumps(calibration.record() | change))
    with pytest.raises(RunFolderError, match=message):
        cal.load_calibration(tmp_path, n_labels=3)


def test_a_run_fits_the_method_its_recipe_names(trained) -> None:
    from fintrl.recipe.schema import EvalSection
    from fintrl.scoring.targets import load_for_inference, resolve_target

    target = resolve_target(str(trained["dir"]))
    model, tokenizer = load_for_inference(target)
    rows = six_rows()
    section = EvalSection(calibration_method="vector")
    fitted = cal.fit_on_rows(model, tokenizer, target.prompt_builder(LABELS), rows, section, seed=0)
    vector = fitted.check.get("vector", fitted.check)  # six rows: the vector map falls back to a temperature
    assert vector["scaling"] == "vector scaling" and "folds" in vector


def six_rows():
    from datasets import ClassLabel, Dataset, Features, Value

    texts = ["Profit doubled.", "Plant closes.", "Sales were flat.", "Dividend raised.", "Costs rose.", "Flat year."]
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    return Dataset.from_dict({"text": texts, "label": [2, 0, 1, 2, 0, 1]}, features=features)


def test_eval_and_predict_follow_a_vector_calibration(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A hand-written calibration that favours `neutral`: eval's and predict's labels are its argmax."""
    from tests.helpers import copy_run

    run_dir = copy_run(trained["dir"], tmp_path / "run")
    mode = json.loads((run_dir / "calibration.json").read_text())["mode"]
    vector = cal.Calibration(1.0, mode, 3, "train", method="vector", weights=(0.05,) * 3, biases=(0.0, 20.0, 0.0))
    cal.save_calibration(vector, run_dir)
    assert main(["eval", str(run_dir), "--output-dir", str(tmp_path / "cal")]) == 0
    assert main(["eval", str(run_dir), "--uncalibrated", "--output-dir", str(tmp_path / "raw")]) == 0
    capsys.readouterr()
    calibrated, raw = (
        [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        for name in ("cal", "raw")
    )
    for c in calibrated:
        assert c["prediction"] == max(c["probabilities"], key=c["probabilities"].get)
    changed = sum(c["prediction"] != r["prediction"] for c, r in zip(calibrated, raw))
    assert changed > 0 and all(c["prediction"] == "neutral" for c in calibrated)
    metrics = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    assert metrics["calibration"]["labels_changed"] == changed and metrics["calibration"]["method"] == "vector scaling"
    from fintrl.hub.card import render_card

    (run_dir / "metrics.json").write_text(json.dumps(metrics))  # the run's card, had it been calibrated so
    card = render_card(run_dir)
    assert "calibrated by vector scaling" in card and f"which changed\n{changed} of the" in card
    assert "| calibrated (vector scaling) |" in card
    assert main(["predict", str(run_dir), "--text", "Profit doubled.", "--text", "Plant closes."]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]
    assert [r["label"] for r in rows] == ["neutral", "neutral"]


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "outside"), (0, "outside"), (1e9, "outside"), ("2", "not a number"), (float("nan"), "not a number")],
)
def test_a_calibration_file_is_checked_before_it_scales_anything(tmp_path: Path, value: object, message: str) -> None:
    from fintrl.errors import RunFolderError

    record = cal.Calibration(temperature=1.5, mode="trie", n=10, split="train").record() | {"temperature": value}
    (tmp_path / "calibration.json").write_text(json.dumps(record))
    with pytest.raises(RunFolderError, match=message):
        cal.load_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text(json.dumps(record | {"temperature": 1.5, "mode": "sideways"}))
    with pytest.raises(RunFolderError, match="mode 'sideways'"):
        cal.load_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text("{")
    with pytest.raises(RunFolderError, match="corrupt"):
        cal.load_calibration(tmp_path)


def test_calibration_applies_to_its_own_scoring_mode_only() -> None:
    calibration = cal.Calibration(temperature=2.0, mode="first_token", n=10, split="train")
    probs = np.array([[0.9, 0.1]])
    assert calibration.apply(probs, "first_token")[0, 0] == pytest.approx(0.75)  # 3 : 1 after the square root
    np.testing.assert_array_equal(calibration.apply(probs, "loglik"), probs)
    raw = ScoreResult([0], probs, "loglik")
    assert calibration.apply_result(raw) is raw
    report = cal.calibration_report(calibration, raw, raw, [0])
    assert report["applied"] is False and report["before"] == report["after"] and report["labels_changed"] == 0


def test_hold_out_is_stratified_seeded_and_leaves_training() -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    from fintrl.data.loading import LabeledData
    from fintrl.recipe.schema import EvalSection

    labels = [i % 3 for i in range(60)] + [0] * 40  # 60 % class 0
    texts = [f"text {i}" for i in range(100)]
    texts[99] = texts[0]  # a duplicate: both copies go with the held-out row, or both stay
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    train = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    data = LabeledData(train, train.select(range(3)), LABELS, "x", "sentiment", None, "validation")
    kept, held = cal.hold_out(data, EvalSection(), seed=3)
    assert len(held) == 10 and np.bincount(held["label"]).tolist() == [6, 2, 2]  # 10 % of 100, stratified
    assert not set(held["text"]) & set(kept.train["text"])
    assert len(kept.train) + len(held) + (texts[0] in held["text"]) == 100
    assert cal.hold_out(data, EvalSection(), seed=3)[1]["text"] == held["text"]  # seeded
    assert cal.hold_out(data, EvalSection(), seed=4)[1]["text"] != held["text"]
    assert cal.hold_out(data, EvalSection(calibration_samples=4), seed=3)[1].num_rows == 4
    assert cal.hold_out(data, EvalSection(calibration_samples=0), seed=3) == (data, None)
    assert cal.hold_out(data, EvalSection(mode="generate"), seed=3)[1] is None  # no probabilities to calibrate
    assert cal.calibration_size(24, 3, 256) == 3 and cal.calibration_size(8, 3, 256) == 0  # a small train split


def test_hold_out_draws_distinct_texts_so_balancing_copies_stay_in_training() -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    from fintrl.data.loading import LabeledData
    from fintrl.recipe.schema import EvalSection

    texts = [f"common {i}" for i in range(90)] + [f"rare {i % 10}" for i in range(90)]  # 10 rare texts, 9 copies each
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    train = Dataset.from_dict({"text": texts, "label": [0] * 90 + [1] * 90}, features=features)
    data = LabeledData(train, train.select(range(3)), LABELS, "x", "sentiment", None, "validation")
    kept, held = cal.hold_out(data, EvalSection(), seed=3)
    assert len(held) == 10 and np.bincount(held["label"]).tolist() == [9, 1]  # 10 % of 100 texts, by their shares
    assert len(set(held["text"])) == 10 and kept.train["label"].count(1) == 81  # 9 rare texts keep all their copies


def test_prediction_rows_abstain_below_the_threshold() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.0, 0.0, 1.0]])
    plain = cal.predict_rows(["a", "b", "c"], LABELS, [0, 0, -1], probs)
    assert [r["label"] for r in plain] == ["negative", "negative", None] and "top_label" not in plain[0]
    rows = cal.predict_rows(["a", "b", "c"], LABELS, [0, 0, -1], probs, min_confidence=0.5)
    assert [(r["label"], r["top_label"], r["confidence"]) for r in rows] == [
        ("negative", "negative", 0.7),
        ("abstain", "negative", 0.4),
        ("abstain", None, 0.0),  # an invalid answer always abstains
    ]
    assert rows[1]["probabilities"] == {"negative": 0.4, "neutral": 0.35, "positive": 0.25}


# -- on the tiny trained run -------------------------------------------------------------------------------------
def test_every_run_has_a_calibration_coverage_and_intervals(trained) -> None:
    run_dir = trained["dir"]
    record = json.loads((run_dir / "calibration.json").read_text())
    assert record["method"] == "temperature scaling" and scaling.BOUNDS[0] <= record["temperature"] <= scaling.BOUNDS[1]
    assert record["n"] == 3 and record["split"] == "train (held out of training)"
    assert record["mode"] in ("first_token", "trie")
    assert record["nll_after"] <= record["nll_before"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["n_train"] == 21  # 24 rows, 3 held out of training for calibration
    assert metrics["calibration"]["applied"] and metrics["calibration"]["temperature"] == record["temperature"]
    assert set(metrics["calibration"]["before"]) == set(metrics["calibration"]["after"]) == {"nll", "brier", "ece"}
    assert metrics["ece"] == pytest.approx(metrics["calibration"]["after"]["ece"])
    for name in ("accuracy", "f1_macro", "f1_weighted", "mcc"):
        lo, hi = metrics["intervals"][name]
        assert lo <= metrics[name] <= hi
    assert [p["coverage"] for p in metrics["coverage"]["table"]] == [1.0, 0.9, 0.8, 0.5]
    assert metrics["coverage"]["table"][0]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert (run_dir / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    card = (run_dir / "README.md").read_text()
    assert "### Calibrated probabilities" in card and "![Risk-coverage curve](coverage.png)" in card
    assert f"**{metrics['accuracy']:.3f}** [{metrics['intervals']['accuracy'][0]:.3f}," in card


def test_eval_applies_the_calibration_by_default(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = trained["dir"]
    temperature = json.loads((run_dir / "calibration.json").read_text())["temperature"]
    assert main(["eval", str(run_dir), "--output-dir", str(tmp_path / "cal")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "output_dir"') :])
    assert summary["calibration"]["temperature"] == pytest.approx(temperature, abs=1e-3)
    assert " -> " in summary["calibration"]["ece"] and set(summary["accuracy_at_coverage"]) == {
        "100%",
        "90%",
        "80%",
        "50%",
    }
    assert main(["eval", str(run_dir), "--uncalibrated", "--output-dir", str(tmp_path / "raw")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "output_dir"') :])
    assert "calibration" not in summary and summary["with_95_ci"]["accuracy"].startswith(f"{summary['accuracy']:.3f} [")

    def predictions(folder: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / folder / "predictions.jsonl").read_text().splitlines()]

    calibrated, raw = predictions("cal"), predictions("raw")
    assert [r["prediction"] for r in calibrated] == [r["prediction"] for r in raw]  # the same labels
    for c, r in zip(calibrated, raw):
        expected = scaling.apply_temperature(np.array([list(r["probabilities"].values())]), temperature)[0]
        assert list(c["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
        assert max(c["probabilities"], key=c["probabilities"].get) == max(
            r["probabilities"], key=r["probabilities"].get
        )
    with_cal = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    without = json.loads((tmp_path / "raw" / "metrics.json").read_text())
    assert with_cal["calibration"]["applied"] and "calibration" not in without
    assert with_cal["calibration"]["before"]["ece"] == pytest.approx(without["ece"])
    assert with_cal["accuracy"] == without["accuracy"]
    assert (tmp_path / "cal" / "coverage.png").is_file() and (tmp_path / "cal" / "reliability.png").is_file()


def test_predict_calibrates_and_abstains(trained, capsys: pytest.CaptureFixture) -> None:
    from fintrl.scoring.targets import resolve_target

    run_dir = trained["dir"]
    texts = ["Profit doubled.", "Plant closes.", "Sales were flat.", "Dividend raised.", "Costs rose."]

    def predict(*flags: str) -> list[dict]:
        args = ["predict", str(run_dir), *[a for t in texts for a in ("--text", t)], *flags]
        assert main(args) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]

    calibrated, raw = predict(), predict("--uncalibrated")
    target = resolve_target(str(run_dir))  # the hook a server applies: Target.calibrate
    assert target.calibration is not None and target.calibration.temperature > 0
    for c, r in zip(calibrated, raw):
        assert c["label"] == r["label"]
        probabilities = np.array([list(r["probabilities"].values())])
        scaled = target.calibrate(ScoreResult([0], probabilities, target.calibration.mode)).probabilities[0]
        assert list(c["probabilities"].values()) == pytest.approx(scaled.tolist(), abs=1e-5)
    abstained = predict("--min-confidence", "0.99")
    assert sum(r["label"] == "abstain" for r in abstained) >= 4  # a tiny model is never 99 % sure
    assert [r["top_label"] for r in abstained] == [r["label"] for r in calibrated]
    assert all(r["label"] in ("abstain", r["top_label"]) and r["confidence"] < 1 for r in abstained)
    assert all(r["label"] != "abstain" for r in predict("--min-confidence", "0"))
    assert main(["predict", str(run_dir), "--text", "x", "--min-confidence", "1.5"]) == 2
    assert "--min-confidence: 1.5: give a probability" in capsys.readouterr().err


def test_resume_refuses_another_calibration_sample_size() -> None:
    """The held-out rows are rows the checkpoint never trained on: --resume keeps them the same."""
    from fintrl.recipe.schema import recipe_from_dict
    from fintrl.transaction import recipe_differences
    from tests.helpers import tiny_recipe_dict

    before = recipe_from_dict(tiny_recipe_dict(Path("run")))
    after = tiny_recipe_dict(Path("run"))
    after["eval"] |= {"calibration_samples": 0, "batch_size": 8}  # batch_size may change, calibration_samples not
    assert recipe_differences(before, recipe_from_dict(after)) == ["eval.calibration_samples: 256 -> 0"]
