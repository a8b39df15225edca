"""Ensembles of adapters: one base loaded once, each adapter scored with its own prompt and calibration, the label
probabilities averaged; members that cannot be averaged are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fintrl.cli.main import main


def probabilities(folder: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return np.array([list(row["probabilities"].values()) for row in rows])


def test_an_ensemble_averages_its_members_calibrated_probabilities(
    tiny_run: Path, second_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    singles = []
    for i, run in enumerate((tiny_run, second_run)):
        assert main(["eval", str(run), "--exact-4bit", "--output-dir", str(tmp_path / f"m{i}")]) == 0
        singles.append(json.loads((tmp_path / f"m{i}" / "metrics.json").read_text()))
    assert main(["eval", str(tiny_run), str(second_run), "--output-dir", str(tmp_path / "both")]) == 0
    assert "once with 2 adapters" in capsys.readouterr().err
    assert np.abs(probabilities(tmp_path / "m0") - probabilities(tmp_path / "m1")).max() > 1e-3  # two answers
    expected = (probabilities(tmp_path / "m0") + probabilities(tmp_path / "m1")) / 2
    averaged = probabilities(tmp_path / "both")
    np.testing.assert_allclose(averaged, expected, atol=2e-6)
    report = json.loads((tmp_path / "both" / "metrics.json").read_text())
    gold = [json.loads(line)["gold"] for line in (tmp_path / "both" / "predictions.jsonl").read_text().splitlines()]
    labels = report["data"]["labels"]
    assert report["accuracy"] == pytest.approx(np.mean([labels[p] == g for p, g in zip(expected.argmax(1), gold)]))
    members = report["ensemble"]["per_member"]
    assert [m["accuracy"] for m in members] == [s["accuracy"] for s in singles]
    assert [m["f1_macro"] for m in members] == pytest.approx([s["f1_macro"] for s in singles])
    assert report["ensemble"]["members"] == [str(tiny_run), str(second_run)]


def test_predict_scores_with_an_ensemble_as_eval_does(
    tiny_run: Path, second_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["Profit doubled.", "Plant closes.", "Sales were flat."]
    flags = [a for t in texts for a in ("--text", t)]

    def predict(*targets: Path) -> list[dict]:
        assert main(["predict", *map(str, targets), *flags, "--exact-4bit"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]

    members = [predict(run) for run in (tiny_run, second_run)]
    both = predict(tiny_run, second_run)
    for i, row in enumerate(both):
        expected = np.mean([list(m[i]["probabilities"].values()) for m in members], axis=0)
        assert list(row["probabilities"].values()) == pytest.approx(expected.tolist(), abs=2e-6)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    assert main(["predict", str(tiny_run), str(second_run), "--text", "x", "--engine", "ray"]) == 2
    assert "score an ensemble with --engine local" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["SAME"], "each adapter once"),
        (["tiny-mistral", "--recipe", "RECIPE"], "tiny-mistral is not an adapter: an ensemble averages adapters"),
    ],
)
def test_members_that_cannot_be_averaged_are_refused(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    extra = [str(tiny_run / "recipe.yaml") if e == "RECIPE" else str(tiny_run) if e == "SAME" else e for e in extra]
    assert main(["eval", str(tiny_run), *extra, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fintrl: error: ") and message in err
    assert not (tmp_path / "out").exists()
