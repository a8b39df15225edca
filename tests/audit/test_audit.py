"""`fintrl audit`: the confident-learning rule on hand-made probabilities (a planted mislabelled row is found, clean
rows are not, thresholds as computed by hand, the same rows as cleanlab's reference), and the command on the session's
tiny run: eval rows from its predictions, train rows by k-fold cross-fitting or in-sample, the files it writes, the
run folder left unchanged, and one line for each bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fintrl.audit.confident import NEVER, confident_thresholds, find_label_issues
from fintrl.audit.folds import FOLD_SCORED, HELD_OUT, IN_SAMPLE
from fintrl.cli.main import main
from tests.helpers import LABELS, tree_hash

COLUMNS = ["rank", "flagged", "split", "row", "gold", "suggested", "predicted", "confidence", "p_gold", "margin",
           "fold", "scored", "text", *(f"p_{name}" for name in LABELS)]  # fmt: skip

# Rows 0-5: the model agrees with gold. Row 6: gold says negative, the model is sure it is positive (planted).
# Row 7: gold neutral, the model leans positive but below positive's threshold (unsure, not flagged).
# Row 8: gold neutral; only negative reaches its threshold, but neutral is still the most likely (not flagged).
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.55, 0.35, 0.10],
        [0.10, 0.80, 0.10],
        [0.05, 0.90, 0.05],
        [0.05, 0.15, 0.80],
        [0.10, 0.10, 0.80],
        [0.03, 0.02, 0.95],
        [0.10, 0.45, 0.45],
        [0.495, 0.50, 0.005],
    ]
)
GOLD = np.array([0, 0, 1, 1, 2, 2, 0, 1, 1])


def test_thresholds_are_each_labels_mean_self_confidence() -> None:
    by_hand = [(0.90 + 0.55 + 0.03) / 3, (0.80 + 0.90 + 0.45 + 0.50) / 4, (0.80 + 0.80) / 2]
    assert confident_thresholds(PROBS, GOLD) == pytest.approx(by_hand)
    missing = confident_thresholds(PROBS[2:6], GOLD[2:6])  # no negative row: no probability can reach it
    assert missing[0] == NEVER and missing[1:] == pytest.approx([0.85, 0.80])


def test_the_planted_mislabelled_row_is_flagged_and_clean_rows_are_not() -> None:
    issues = find_label_issues(PROBS, GOLD)
    assert issues.flagged.tolist() == [False] * 6 + [True, False, False]
    assert issues.suggested[6] == 2 and issues.margin[6] == pytest.approx(0.95 - 0.03)
    assert issues.suggested[7] == -1 and issues.suggested[8] == 0  # row 8: negative (0.495) reaches 0.493
    assert issues.confident_joint[0].tolist() == [2, 0, 1]  # gold negative: 2 confirmed, 1 confidently positive
    clean = find_label_issues(PROBS[:6], GOLD[:6])
    assert not clean.flagged.any()


def test_the_rule_flags_the_rows_cleanlab_flags() -> None:
    filter_ = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(0)
    for trial in range(20):
        k, n = 3 + trial % 3, 300
        truth = rng.integers(0, k, n)
        logits = rng.normal(size=(n, k)) + 3 * np.eye(k)[truth]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        gold = np.where(rng.random(n) < 0.1, rng.integers(0, k, n), truth)  # 10 % noise
        ours = find_label_issues(probs, gold).flagged
        theirs = filter_.find_label_issues(gold, probs, filter_by="confident_learning", n_jobs=1)
        assert ours.tolist() == theirs.tolist()
        assert ours.sum() > 0


def planted_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the tiny run whose predictions say what a good model would: right on every row, sure of it, except
    one row whose gold label was flipped (the model still says the true label). Returns (run, planted text)."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "planted", ignore=shutil.ignore_patterns("checkpoints")))
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(1)
    for row in rows:
        sure = 0.7 + 0.25 * rng.random()
        row["probabilities"] = {name: sure if name == row["gold"] else (1 - sure) / 2 for name in LABELS}
        row["prediction"] = row["gold"]
    planted = rows[5]
    planted["gold"] = next(name for name in LABELS if name != planted["prediction"])  # the label flipped in the data
    planted["probabilities"] = {name: 0.97 if name == planted["prediction"] else 0.015 for name in LABELS}
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, planted["text"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_command_finds_the_planted_row_among_eval_rows(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, text = planted_run(tiny_run, tmp_path)
    before = tree_hash(run)
    out = tmp_path / "audit"
    assert main(["audit", str(run), "--split", "eval", "--output-dir", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "audit.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 12
    assert [r["flagged"] for r in rows] == ["True"] + ["False"] * 11
    first = rows[0]
    assert (first["rank"], first["split"], first["row"], first["text"]) == ("1", "eval", "5", text)
    assert first["suggested"] == first["predicted"] != first["gold"] and float(first["p_gold"]) == 0.015
    summary = json.loads((out / "audit.json").read_text())
    assert summary["flagged"] == 1 and summary["pairs"] == {f"{first['gold']} -> {first['suggested']}": 1}
    assert summary["splits"]["eval"]["scored"].startswith("out-of-sample") and "train" not in summary["splits"]
    assert "1 of 12 rows flagged" in printed and f"eval      5  {first['gold']}" in printed
    assert "gold \\ suggested" in printed and str(out / "audit.csv") in printed
    assert tree_hash(run) == before  # the run is read, never written

    assert main(["audit", str(run), "--split", "eval", "--output-dir", str(out)]) == 5  # no silent overwrite
    assert "already holds an audit; --overwrite replaces it" in capsys.readouterr().err
    assert main(["audit", str(run), "--split", "eval", "--output-dir", str(out), "--overwrite"]) == 0


def test_train_rows_are_scored_out_of_sample_by_fold_adapters(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_hash(tiny_run)
    monkeypatch.chdir(tmp_path)  # the default output folder, runs/audit/<run name>, lands here
    assert main(["audit", str(tiny_run), "--folds", "2"]) == 0
    out = tmp_path / "runs" / "audit" / tiny_run.name
    rows = read_csv(out / "audit.csv")
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 24 and len(rows) == 24 + 12
    assert sorted(int(r["row"]) for r in train) == list(range(24))
    assert {r["fold"] for r in train} == {"1", "2"} and all(r["fold"] == "" for r in rows if r["split"] == "eval")
    assert {r["scored"] for r in train} == {FOLD_SCORED.format(fold=k, folds=2) for k in (1, 2)}
    for r in rows:
        assert sum(float(r[f"p_{name}"]) for name in LABELS) == pytest.approx(1, abs=1e-4)
    summary = json.loads((out / "audit.json").read_text())
    assert list(summary["splits"]) == ["train", "eval"] and summary["splits"]["train"]["folds"] == 2
    assert summary["n"] == 36 and summary["flagged"] == sum(r["flagged"] == "True" for r in rows)
    printed = capsys.readouterr().out
    assert "2-fold cross-fitting" in printed and "'loss'" not in printed  # the fold trainers' log lines go to stderr
    assert tree_hash(tiny_run) == before  # k-fold training happened in a temporary folder, not the run


def test_folds_0_scores_train_rows_in_sample_and_says_so(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    assert main(["audit", str(tiny_run), "--folds", "0", "--split", "train", "--output-dir", str(out)]) == 0
    rows = read_csv(out / "audit.csv")
    assert len(rows) == 24 and {r["split"] for r in rows} == {"train"}
    scored = [r["scored"] for r in rows]
    assert scored.count(HELD_OUT) == 3 and scored.count(IN_SAMPLE) == 21  # the run held 3 rows out to calibrate
    assert json.loads((out / "audit.json").read_text())["splits"]["train"]["scored"].startswith("in-sample")


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("not a run", 5, "is not a fintrl run folder"),
        ("unfinished", 5, "holds no finished run"),
        ("missing", 5, "no such run folder"),
        ("--folds 1", 2, "--folds 1: give 0"),
        ("--folds -2", 2, "--folds -2: give 0"),
        ("--folds 30", 3, "--folds 30: the train split has only 24 rows"),
        ("--folds 9", 3, "fewer than 9 rows of {'positive': 6}"),
        ("inside the run", 5, "is inside the run folder"),
        ("no predictions", 5, "has no predictions.jsonl"),
        ("--top -1", 2, "--top -1"),
    ],
)
def test_bad_inputs_get_one_line(
    case: str, code: int, message: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, extra = str(tiny_run), ["--output-dir", str(tmp_path / "out")]
    if case == "not a run":
        (tmp_path / "folder").mkdir()
        target = str(tmp_path / "folder")
    elif case == "unfinished":
        (tmp_path / "run").mkdir()
        shutil.copy(tiny_run / "recipe.yaml", tmp_path / "run")
        target = str(tmp_path / "run")
    elif case == "missing":
        target = str(tmp_path / "nowhere")
    elif case.startswith("--"):
        extra += case.split() + (["--split", "train"] if "folds" in case else [])
    elif case == "inside the run":
        extra = ["--output-dir", str(tiny_run / "audit")]
    elif case == "no predictions":
        target = str(shutil.copytree(tiny_run, tmp_path / "bare", ignore=shutil.ignore_patterns("predictions.jsonl")))
    before = tree_hash(tiny_run)
    assert main(["audit", target, *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert tree_hash(tiny_run) == before and not (tmp_path / "out").exists()


def test_the_fpb_check_counts_low_agreement_rows_among_flagged_ones() -> None:
    from benchmarks.bench_audit import agreement_stats, verdict

    levels = {"a": "50-65", "b": "50-65", "c": "100", "d": "100", "e": "75-99", "f": "66-74", "g": "100", "h": "100"}
    flagged = {"a", "b", "c"}
    rows = [{"text": t, "flagged": t in flagged} for t in [*levels, "not fpb"]]
    stats = agreement_stats(rows, levels)
    assert (stats["n"], stats["not_found"], stats["flagged"], stats["low_agreement"]) == (8, 1, 3, 2)
    assert stats["base_rate"] == 0.25 and stats["share_of_flagged"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["lift"] == pytest.approx(2.67) and stats["hit_rate"] == 1.0 and stats["other_flag_rate"] == 0.1667
    assert stats["by_level"]["100"] == {"n": 4, "flagged": 1, "flag_rate": 0.25}
    assert verdict(stats).startswith("PASS: the flagged rows are mostly low-agreement")
    rows = [{"text": t, "flagged": t in {"a", "c", "d"}} for t in levels]
    assert verdict(agreement_stats(rows, levels)).startswith("FAIL: lift 1.33")


def test_a_runs_accuracy_per_agreement_level_beside_a_random_annotators() -> None:
    from benchmarks.bench_audit import accuracy_by_level

    levels = {"a": "50-65", "b": "50-65", "c": "100", "d": "100", "e": "75-99", "f": "66-74"}
    right = {"a", "c", "d", "e"}
    rows = [{"text": t, "gold": "up", "prediction": "up" if t in right else "down"} for t in [*levels, "not fpb"]]
    result = accuracy_by_level(rows, levels)
    assert (result["n"], result["not_found"], result["accuracy"]) == (6, 1, round(4 / 6, 4))
    assert result["by_level"]["50-65"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert result["by_level"]["66-74"] == {"n": 1, "correct": 0, "accuracy": 0.0}
    assert result["annotator"] == round((2 * 0.575 + 2 * 1.0 + 0.87 + 0.70) / 6, 4)


@pytest.mark.data
def test_fpb_agreement_levels_from_the_shared_data() -> None:
    from benchmarks.bench_audit import agreement_levels
    from tests.helpers import SHARED_DATA, shared_data

    for name in ("fpb_50agree", "fpb_66agree", "fpb_75agree", "fpb_allagree"):
        shared_data(name)
    levels = agreement_levels(SHARED_DATA)
    counts = {level: list(levels.values()).count(level) for level in ("50-65", "66-74", "75-99", "100")}
    assert counts == {"50-65": 501, "66-74": 608, "75-99": 952, "100": 1807}  # train + validation of each level
