"""`fintrl compare A B` and `fintrl versions org/name --compare OLD NEW` on tiny runs, as a user calls them: saved
predictions reused when both sides cover the same rows, a side scored when not, the verdict line, the JSON, and the
card's "Compared with the previous version" when publishing over an earlier version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from fintrl.cli.main import main
from fintrl.errors import RunFolderError
from fintrl.evaluation.compare import compare
from fintrl.hub import publish as hub
from fintrl.recipe.schema import recipe_from_dict
from fintrl.runner import run
from tests.helpers import REPO, copy_run, tiny_recipe_dict

VERDICTS = ("B is better: ", "A is better: ", "no detectable difference: ")


@pytest.fixture(scope="module")
def other(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny run on the same data and eval rows as `trained`: fewer steps, another seed."""
    out = tmp_path_factory.mktemp("other") / "run"
    raw = tiny_recipe_dict(out, path=str(trained["data"]))
    raw["train"] |= {"max_steps": 3, "learning_rate": 1e-2, "save_steps": 1000}
    raw |= {"quantization": None, "seed": 7}
    raw["eval"]["baselines"] = False
    run(recipe_from_dict(raw))
    return out


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_a_run_against_itself(trained) -> None:
    report = compare(str(trained["dir"]), str(trained["dir"]))
    assert report["rows"].startswith("the same eval rows") and report["n"] == 12
    assert report["mcnemar"] == {**report["mcnemar"], "b_right_a_wrong": 0, "a_right_b_wrong": 0, "p_value": 1.0}
    assert report["flips"] == {"b_right_a_wrong": [], "a_right_b_wrong": []}
    assert all(m["difference"] == 0 for m in report["metrics"].values())
    assert report["verdict"].startswith("no detectable difference: +0.000 accuracy, 95 % CI [+0.000, +0.000]")


def test_two_runs_through_the_cli(trained, other, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "compare.json"
    assert main(["compare", str(trained["dir"]), str(other), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert last_line(printed) == report["verdict"] and report["verdict"].startswith(VERDICTS)
    assert "McNemar's exact test" in printed and f"A: {trained['dir']}" in printed
    assert (report["a"], report["b"]) == (str(trained["dir"]), str(other))
    assert report["a_rows"] == report["b_rows"] == "saved predictions"  # same eval rows: nothing scored again
    a, b = rows(trained["dir"]), rows(other)
    gained = sum(y["prediction"] == y["gold"] != x["prediction"] for x, y in zip(a, b))
    lost = sum(x["prediction"] == x["gold"] != y["prediction"] for x, y in zip(a, b))
    assert (report["mcnemar"]["b_right_a_wrong"], report["mcnemar"]["a_right_b_wrong"]) == (gained, lost)
    assert len(report["flips"]["b_right_a_wrong"]) == min(gained, 5)
    accuracy = report["metrics"]["accuracy"]
    assert accuracy["difference"] == pytest.approx((gained - lost) / 12)
    assert accuracy["interval"][0] <= accuracy["difference"] <= accuracy["interval"][1]
    assert set(report["per_class_f1"]) == {"negative", "neutral", "positive"}
    assert report["bootstrap"]["resamples"] == 1000 and "rule" in report


def test_pairs_pooled_through_the_cli(trained, other, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b, out = str(trained["dir"]), str(other), tmp_path / "pooled.json"
    assert main(["compare", a, b, b, a, "--output", str(out)]) == 0  # the second pair mirrors the first
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    first, mirrored = report["pairs"]
    assert (first["a"], first["b"], mirrored["a"], mirrored["b"]) == (a, b, b, a)
    pooled = report["pooled"]
    both = first["mcnemar"]["b_right_a_wrong"] + first["mcnemar"]["a_right_b_wrong"]
    assert pooled["mcnemar"]["b_right_a_wrong"] == pooled["mcnemar"]["a_right_b_wrong"] == both
    assert pooled["metrics"]["accuracy"]["difference"] == pytest.approx(0) and pooled["mcnemar"]["p_value"] == 1.0
    assert "== pair 2 of 2 ==" in printed and last_line(printed) == pooled["verdict"]
    assert pooled["verdict"].startswith("no detectable difference: +0.000 accuracy")
    assert main(["compare", a, b, a]) == 2
    assert "fintrl compare takes pairs A B [A2 B2 ...]; got 3 side(s)" in capsys.readouterr().err
    fewer = [copy_run(Path(side), tmp_path / name) for side, name in ((a, "a6"), (b, "b6"))]
    for folder in fewer:  # a pair evaluated on 6 of the rows: comparable with itself, not poolable with the rest
        lines = (folder / "predictions.jsonl").read_text().splitlines(keepends=True)
        (folder / "predictions.jsonl").write_text("".join(lines[:6]))
    assert main(["compare", a, b, *map(str, fewer)]) == 3
    assert "the pairs pooled must all be evaluated on the same rows" in capsys.readouterr().err


def test_a_side_without_predictions_is_scored_on_the_other_sides_rows(trained, other, tmp_path: Path) -> None:
    saved = compare(str(trained["dir"]), str(other))
    bare = copy_run(other, tmp_path / "adapter")
    (bare / "predictions.jsonl").unlink()  # an adapter folder: recipe and weights, no predictions
    scored = compare(str(trained["dir"]), str(bare))
    assert scored["b_rows"] == "scored now on A's rows" and scored["a_rows"] == "saved predictions"
    assert scored["mcnemar"] == saved["mcnemar"] and scored["verdict"] == saved["verdict"]


def test_eval_outputs_compare_and_other_rows_are_scored(trained, tmp_path: Path, capsys) -> None:
    full, half = tmp_path / "full", tmp_path / "half"
    assert main(["eval", str(trained["dir"]), "--output-dir", str(full)]) == 0
    args = ["eval", str(trained["dir"]), "--set", "data.max_eval_samples=6", "--output-dir", str(half)]
    assert main(args) == 0
    capsys.readouterr()
    assert compare(str(full), str(trained["dir"]))["verdict"].startswith("no detectable difference")
    # the eval output on 6 rows is A: the run is scored on those rows
    report = compare(str(half), str(trained["dir"]))
    assert report["n"] == 6 and report["b_rows"] == "scored now on A's rows"
    assert report["mcnemar"]["b_right_a_wrong"] == report["mcnemar"]["a_right_b_wrong"] == 0
    # reversed, the eval output would have to be scored again, and it holds no model
    with pytest.raises(RunFolderError, match="no recipe or weights to score it again"):
        compare(str(trained["dir"]), str(half))
    assert main(["compare", str(trained["dir"]), str(tmp_path / "nowhere")]) == 5


def flipped(run_dir: Path, dest: Path, how: dict[int, str]) -> Path:
    """A copy of a run whose saved predictions changed on the rows `how` names (row -> new prediction)."""
    copy = copy_run(run_dir, dest)
    lines = rows(copy)
    for i, label in how.items():
        lines[i]["prediction"] = label
    (copy / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return copy


def test_versions_compare_and_the_published_card(trained, local_hub, tmp_path: Path, capsys) -> None:
    run1 = copy_run(trained["dir"], tmp_path / "v1")
    hub.publish(run1, REPO)
    gold = [r["gold"] for r in rows(run1)]
    right = {i: gold[i] for i in range(12)}  # v1.1.0 answers every row right
    run2 = flipped(run1, tmp_path / "v2", right)
    hub.publish(run2, REPO)
    fixed = sum(r["prediction"] != r["gold"] for r in rows(run1))

    out = tmp_path / "versions.json"
    assert main(["versions", REPO, "--compare", "v1.0.0", "v1.1.0", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (report["a"], report["b"]) == (f"{REPO}@v1.0.0", f"{REPO}@v1.1.0")
    assert report["a_rows"] == report["b_rows"] == "saved predictions"  # read from the Hub, nothing scored
    assert (report["mcnemar"]["b_right_a_wrong"], report["mcnemar"]["a_right_b_wrong"]) == (fixed, 0)
    assert report["metrics"]["accuracy"]["b"] == 1.0 and last_line(printed) == report["verdict"]

    card = hf_hub_download(REPO, "README.md", revision="v1.1.0")
    text = " ".join(Path(card).read_text().split())
    assert (
        "## Compared with the previous version" in text and "Against `v1.0.0`, on the same 12 evaluation rows" in text
    )
    assert f"This version is right where `v1.0.0` was wrong on {fixed} rows, and wrong where it was right on 0" in text
    verdict = (
        report["verdict"].replace("B is better", "This version is better").replace("no detectable", "No detectable")
    )
    assert f"**{verdict}**" in text
    first = Path(hf_hub_download(REPO, "README.md", revision="v1.0.0")).read_text()
    assert "Compared with the previous version" not in first  # nothing to compare with

    run3 = copy_run(run1, tmp_path / "v3")
    (run3 / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(run1)[:6]))
    hub.publish(run3, REPO)
    text = " ".join(Path(hf_hub_download(REPO, "README.md", revision="v1.2.0")).read_text().split())
    assert "`v1.1.0` cannot be compared with this version row by row: it was evaluated on different rows" in text
    assert f"fintrl compare {REPO}@v1.1.0 {REPO}@v1.2.0" in text
    shutil.rmtree(run3)
