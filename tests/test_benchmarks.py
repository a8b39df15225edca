"""The benchmarks' harness (workers in fresh processes) and the quality benchmark's own logic: the FPB agreement
breakdown, paired flips, the chart, and a --quick run end to end on the tiny model (`-m benchmarks.bench_quality`)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench_quality import fpb_agreement
from benchmarks.harness import run_worker
from benchmarks.quality_report import paired_flips, plot_results
from tests.helpers import ROOT as REPO
from tests.helpers import shared_data


def echo_worker(spec: dict) -> dict:  # run by run_worker in a fresh process
    return {"pid": os.getpid(), "echo": spec["message"]}


def sleepy_worker(spec: dict) -> dict:
    time.sleep(spec["seconds"])
    return {}


def test_run_worker_runs_a_function_in_a_fresh_process_and_stops_it_at_the_timeout(tmp_path: Path) -> None:
    done = run_worker("tests.test_benchmarks:echo_worker", {"message": "hi", "threads": 1}, log=tmp_path / "echo.log")
    assert done["echo"] == "hi" and done["pid"] != os.getpid() and done["process_seconds"] > 0
    assert done["environment"]["torch_threads"] == 1 and done["environment"]["cpu_count"] == os.cpu_count()

    failed = run_worker("tests.test_benchmarks:no_such_worker", {}, log=tmp_path / "failed.log")
    assert failed["error"] == "exit 1" and "no_such_worker" in (tmp_path / "failed.log").read_text()

    start = time.perf_counter()
    stopped = run_worker("tests.test_benchmarks:sleepy_worker", {"seconds": 300}, log=tmp_path / "slow.log", timeout=3)
    assert stopped["error"].startswith("stopped at the time budget") and time.perf_counter() - start < 60


def test_fpb_agreement_buckets_by_the_strictest_level(tmp_path: Path) -> None:
    # nested like Financial PhraseBank: every all-agree sentence is also in the 75 %, 66 % and 50 % folders
    levels = (("100%", "fpb_allagree"), ("75-99%", "fpb_75agree"), ("66-74%", "fpb_66agree"), ("50-65%", "fpb_50agree"))
    sentences = {"100%": ["a", "b"], "75-99%": ["c"], "66-74%": ["d"], "50-65%": ["e", "f"]}
    for i, (_, folder) in enumerate(levels):
        rows = [s for level, _ in levels[: i + 1] for s in sentences[level]]
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "train.csv").write_text("text,label\n" + "".join(f"{s},neutral\n" for s in rows))
    wrong = {"b", "e", "f"}
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"text": t, "gold": "neutral", "prediction": "positive" if t in wrong else "neutral"} for t in "abcdefz"]
    for line in lines:  # a predictions row as fintrl writes it: every label's probability, in one order
        line["probabilities"] = {"neutral": 0.1 if line["text"] in wrong else 0.9}
        line["probabilities"]["positive"] = 0.9 if line["text"] in wrong else 0.1
    (run / "predictions.jsonl").write_text("\n".join(json.dumps(p) for p in lines))
    assert fpb_agreement(run, tmp_path / "data") == {  # "z" is no FPB sentence (a mixture's other source): left out
        "100%": {"n": 2, "correct": 1, "accuracy": 0.5},
        "75-99%": {"n": 1, "correct": 1, "accuracy": 1.0},
        "66-74%": {"n": 1, "correct": 1, "accuracy": 1.0},
        "50-65%": {"n": 2, "correct": 0, "accuracy": 0.0},
    }
    assert fpb_agreement(run, tmp_path / "nowhere") is None


def _write_predictions(run: Path, texts: str, predictions: list[str]) -> Path:
    run.mkdir(parents=True)
    lines = [
        {
            "text": t,
            "gold": "neutral",
            "prediction": p,
            "probabilities": {"neutral": float(p == "neutral"), "positive": float(p != "neutral")},
        }
        for t, p in zip(texts, predictions)
    ]
    (run / "predictions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return run


def test_paired_flips_counts_rows_that_changed_and_tests_them(tmp_path: Path) -> None:
    neutral, positive = "neutral", "positive"
    old = _write_predictions(tmp_path / "old", "abcdefgh", [neutral, positive, *[positive] * 6])
    new = _write_predictions(tmp_path / "new", "abcdefgh", [positive, *[neutral] * 7])
    # b..h: right now, wrong before (7); a: right before, wrong now (1); exact two-sided binomial, 1 of 8
    assert paired_flips(old, new) == {"gained": 7, "lost": 1, "p_value": pytest.approx(18 / 256)}
    assert paired_flips(old, old) == {"gained": 0, "lost": 0, "p_value": 1.0}
    other_rows = _write_predictions(tmp_path / "other", "abcdefgz", [neutral] * 8)
    assert paired_flips(old, other_rows) is None
    assert paired_flips(old, tmp_path / "no_run") is None


def test_results_chart_is_drawn_from_the_rows_that_ran(tmp_path: Path) -> None:
    scores = {"accuracy": 0.8, "f1_macro": 0.7, "f1_weighted": 0.75}
    report = {
        "meta": {"model": "m"},
        "rows": [
            {"dataset": "fiqa", "method": "majority", **scores},
            {"dataset": "tfns", "method": "fine_tuned", **scores},
            {"dataset": "mixture", "method": "-", "error": "boom"},
        ],
    }
    chart = plot_results(report, tmp_path / "quality.png")
    assert chart is not None and chart.read_bytes()[:4] == b"\x89PNG"
    assert plot_results({**report, "rows": report["rows"][2:]}, tmp_path / "none.png") is None


@pytest.mark.data
def test_bench_quality_quick_runs_end_to_end(tmp_path: Path) -> None:
    shared_data("fpb_allagree")
    out = tmp_path / "quality.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_quality",
            "--quick",
            "--datasets",
            "fpb_allagree",
            "--set",
            "eval.curve_points=2",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"majority", "tfidf_logreg", "zero_shot", "fine_tuned"}
    assert all(0 <= rows[m]["accuracy"] <= 1 for m in rows)
    assert [p["step"] for p in rows["fine_tuned"]["learning_curve"]] == [0, 2, 4]
    assert "| fpb_allagree | fine_tuned" in done.stdout and "learning curve" in done.stdout
    assert out.with_suffix(".png").is_file()


def bench_serve(target: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_serve", "--quick", "--target", str(target), "--out", str(out), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_bench_serve_quick_runs_end_to_end(trained: dict, tmp_path: Path) -> None:
    """Two real `fintrl serve` processes (batching on and off) on the tiny run, a bounded load on loopback."""
    out = tmp_path / "serve.json"
    done = bench_serve(trained["dir"], out, "--requests", "12")
    report = json.loads(out.read_text())
    rows = {(r["concurrency"], r["server"]): r for r in report["rows"]}
    assert set(rows) == {(1, "on"), (1, "off"), (8, "on"), (8, "off")}
    assert all(r["requests"] == 12 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows.values())
    assert all(r["overhead_p50_over_score"] > 0 for r in rows.values())
    assert rows[(8, "on")]["batches"] < 12 and rows[(8, "off")]["batches"] == 12  # batched, and not
    assert report["servers"]["exit_codes"] == {"on": 130, "off": 130}  # both stopped by Ctrl-C, cleanly
    assert [r["concurrency"] for r in report["ratios"]["rows"]] == [1, 8] and "| clients | server |" in done.stdout


def test_bench_serve_compares_the_dense_form_with_the_4bit_one(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "forms.json"
    bench_serve(tiny_run, out, "--compare", "form", "--concurrency", "1", "--requests", "6")
    report = json.loads(out.read_text())
    forms = {name: info["form"] for name, info in report["servers"]["inference"].items()}
    assert forms == {"dense": "dense-merged", "4bit": "4bit-adapter"}
    assert report["ratios"]["of"] == ["dense", "4bit"] and report["ratios"]["rows"][0]["same_labels"] is True


def test_bench_inference_quick_compares_the_forms(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    argv = ["--quick", "--target", str(tiny_run), "--n", "6", "--single", "3", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_inference", *argv], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {name: r["form"]["form"] for name, r in report["forms"].items()} == {
        "dense": "dense-merged",
        "4bit": "4bit-adapter",
        "4bit-before": "4bit-adapter",
    }
    assert report["agreement"]["n"] == 6 and report["agreement"]["max_abs_dprob"] <= 1e-3
    assert set(report["ratios"]) == {"4bit", "4bit-before"}
    assert "dense vs 4bit: labels the same on 6/6 texts" in done.stdout


@pytest.mark.data
def test_bench_change_quick_compares_a_change_and_an_ensemble(tmp_path: Path, capsys) -> None:
    """Smoke: the recipe and the changed recipe (tiny model, 2 steps) trained, compared; two calls' seeds pooled;
    then both seeds averaged."""
    from benchmarks import bench_change
    from tests.helpers import shared_data

    shared_data("fpb_50agree")
    common = ["--quick", "--datasets", "fpb_50agree", "--runs-dir", str(tmp_path / "runs")]
    out = tmp_path / "change.json"
    argv = [*common, "--seeds", "42", "--change", "train.objective=label_softmax", "--out", str(out)]
    assert bench_change.main(argv) == 0
    [row] = json.loads(out.read_text())["rows"]
    assert row["change"] == ["train.objective=label_softmax"] and row["compare"]["verdict"]
    assert (tmp_path / "runs" / "fpb_50agree-seed42-train.objective=label_softmax" / "metrics.json").is_file()
    seven = tmp_path / "change7.json"
    argv = [*common, "--seeds", "7", "--change", "train.objective=label_softmax", "--out", str(seven)]
    assert bench_change.main(argv) == 0
    capsys.readouterr()
    assert bench_change.main(["--report", str(out), str(seven)]) == 0  # two calls' seeds, pooled
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("| fpb_50agree | 42+7 pooled | train.objective=label_softmax |")
    ensemble = tmp_path / "ensemble.json"
    assert bench_change.main([*common, "--seeds", "42", "7", "--ensemble", "--out", str(ensemble)]) == 0
    rows = json.loads(ensemble.read_text())["rows"]
    assert [r["seed"] for r in rows] == [42, 7, "42+7 pooled"] and rows[0]["changed"] == rows[1]["changed"]
    assert rows[2]["compare"]["verdict"]


def test_bench_change_report_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    """`--report` of a file that is absent or not bench_change's results: one line, no traceback."""
    from benchmarks import bench_change

    with pytest.raises(SystemExit, match="missing.json cannot be read"):
        bench_change.main(["--report", str(tmp_path / "missing.json")])
    foreign = tmp_path / "metrics.json"
    foreign.write_text('{"accuracy": 0.9}')
    with pytest.raises(SystemExit, match="is not a bench_change results JSON"):
        bench_change.main(["--report", str(foreign)])


def test_bench_scaling_refits_both_maps_on_a_finished_run(trained, tmp_path: Path, capsys) -> None:
    """Smoke: the tiny run's calibration rows rebuilt and scored, both maps fitted and checked, validation compared."""
    from benchmarks import bench_scaling

    out = tmp_path / "scaling.json"
    assert bench_scaling.main(["--runs", str(trained["dir"]), "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())["rows"]
    assert row["n_calibration"] == 3 and row["raw"]["accuracy"] == pytest.approx(row["run_accuracy"])
    assert row["temperature"]["labels_changed"] == 0 and row["vector"]["used"] in ("vector", "temperature", "none")
    assert row["vector_vs_raw"]["verdict"] and "| run |" in capsys.readouterr().out
    again = tmp_path / "again.json"
    assert bench_scaling.main(["--refit", str(out), "--out", str(again)]) == 0  # from the saved scores, no model
    [refit] = json.loads(again.read_text())["rows"]
    assert {k: refit[k] for k in ("raw", "temperature", "vector")} == {
        k: row[k] for k in ("raw", "temperature", "vector")
    }
    assert bench_scaling.main([]) == 2


@pytest.mark.data
def test_bench_change_continues_an_interrupted_run(tmp_path: Path) -> None:
    """A run stopped mid-training (its work folder left, as Ctrl-C or the end of a session leaves it) is resumed by
    the same command, not refused as unfinished."""
    from benchmarks import bench_change
    from fintrl.run_folder import RunFolder
    from fintrl.transaction import work_folder
    from tests.helpers import shared_data

    shared_data("fpb_50agree")
    out = tmp_path / "fpb_50agree-seed42-recipe"
    work = work_folder(out)
    work.mkdir(parents=True)
    RunFolder(work).write_recipe(bench_change.recipe_for("fpb_50agree", 42, [], out, quick=True))
    bench_change.train("fpb_50agree", 42, [], out, quick=True)
    assert RunFolder(out).is_finished and not work.exists()
