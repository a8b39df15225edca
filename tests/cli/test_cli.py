"""`fintrl eval` and `fintrl predict` on a trained tiny run folder, as a user calls them."""

import json
from pathlib import Path

import pytest

from fintrl.cli.main import main

LABELS = {"negative", "neutral", "positive"}


def test_eval_run_folder_in_every_mode(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("trie", "loglik", "generate"):
        out = tmp_path / mode
        assert main(["eval", str(tiny_run), "--mode", mode, "--output-dir", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["scoring"]["mode"] == mode and metrics["n"] == 12
        assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "reliability.png").stat().st_size > 0
        if mode != "generate":
            assert metrics["invalid_rate"] == 0
    capsys.readouterr()


def test_eval_refuses_a_different_label_set(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "eval",
            str(tiny_run),
            "--set",
            "data.labels=[negative, neutral, positive, mixed]",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 3 and "label sets differ" in capsys.readouterr().err


def test_predict_texts_and_stdin(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    assert main(["predict", str(tiny_run), "--text", "Profit doubled.", "--text", "Plant closes."]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]
    assert [r["text"] for r in rows] == ["Profit doubled.", "Plant closes."]
    assert all(r["label"] in LABELS and abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)

    monkeypatch.setattr("sys.stdin", io.StringIO("Sales fell.\n\nDividend raised.\n"))
    assert main(["predict", str(tiny_run), "--input", "-", "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["Sales fell.", "Dividend raised."]  # the empty line is skipped, with a warning


def test_zero_shot_base_model_needs_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "tiny-mistral"]) == 2
    assert "give a recipe" in capsys.readouterr().err
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny_test.yaml"
    assert (
        main(
            [
                "eval",
                "tiny-mistral",
                "--recipe",
                str(recipe),
                "--set",
                "data.max_eval_samples=6",
                "--set",
                "eval.baselines=false",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 6


def test_quiet_by_default_and_verbose_on_request(local_hub, tmp_path: Path) -> None:
    """A real process, as a user runs it: no HTTP request log or library chatter unless -v asks for it."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.endpoint,
        "HF_TOKEN": local_hub.token,
        "HF_HOME": str(tmp_path),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }

    def fintrl(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fintrl.cli.main", *argv], env=env, capture_output=True, text=True, timeout=120
        )

    quiet = fintrl("versions", "fintrl-test/none")
    assert quiet.returncode == 6 and quiet.stderr.strip().splitlines() == [
        "fintrl: error: fintrl-test/none: no such repo on " + local_hub.endpoint + " (or the token cannot see it)"
    ]
    loud = fintrl("-v", "versions", "fintrl-test/none")
    assert loud.returncode == 6 and "HTTP Request" in loud.stderr and "Traceback" in loud.stderr


def test_no_library_chatter_around_a_prediction(tiny_run: Path) -> None:
    """bitsandbytes' 'Failed to load CPU gemm_4bit_forward' and deprecation warnings carry no action: not shown."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fintrl.cli.main", "predict", str(tiny_run), "--text", "Profit rose."],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["label"] in LABELS
    for noise in ("gemm_4bit_forward", "DeprecationWarning", "FutureWarning", "HTTP Request"):
        assert noise not in done.stderr, done.stderr
    assert f"loading base model tiny-mistral with adapter {tiny_run}" in done.stderr
