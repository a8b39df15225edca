"""`fintrl reproduce RUN`: train the run again from its own recipe and data, and say whether the adapter came out
bit-identical, or how far it moved (the largest weight change, and how often the two adapters' predictions agree).

The retraining happens in a temporary folder: the run folder is never changed. On CPU, training is deterministic: the
same seed gives the same adapter, bit for bit (tests/test_reproduce.py). On a GPU (not measured here) cuBLAS and
bitsandbytes' kernels are not guaranteed deterministic, so `bit_identical` may be false there with a tiny
`max_abs_dw`; the prediction agreement says whether that matters.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from fintrl.data.files import file_sha256
from fintrl.errors import RunFolderError
from fintrl.run_folder import ADAPTER_WEIGHTS, PREDICTIONS, RunFolder, read_predictions


def weight_change(a: Path, b: Path) -> float:
    """The largest |w_a - w_b| over the tensors of two adapters (inf when their tensors differ in names or shapes)."""
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    if left.keys() != right.keys() or any(left[k].shape != right[k].shape for k in left):
        return float("inf")
    return max((float((left[k].float() - right[k].float()).abs().max()) for k in left), default=0.0)


def reproduce(run_dir: str | Path, *, seed: int | None = None) -> dict[str, Any]:
    """Retrain `run_dir`'s recipe (with `seed` instead of the run's, when given) and compare the two adapters.

    ```python
    reproduce("runs/quickstart")["bit_identical"]
    ```
    """
    from fintrl.runner import run

    original = RunFolder(Path(run_dir)).require_finished("reproduce")
    if not original.file(ADAPTER_WEIGHTS).is_file():
        raise RunFolderError(f"{run_dir} holds no {ADAPTER_WEIGHTS}: only adapter runs can be reproduced")
    recipe = original.recipe()
    with tempfile.TemporaryDirectory(prefix="fintrl-reproduce-") as tmp:
        updates: dict[str, Any] = {"output_dir": str(Path(tmp) / "run"), "publish": type(recipe.publish)()}
        if seed is not None:
            updates["seed"] = seed
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines: stdout is the verdict's
            report = run(recipe.model_copy(update=updates))
        again = RunFolder(Path(tmp) / "run")
        before, after = original.metrics().get("provenance") or {}, report.get("provenance") or {}
        a_rows = read_predictions(original.file(PREDICTIONS)) or []
        b_rows = read_predictions(again.file(PREDICTIONS)) or []
        same = [x["prediction"] == y["prediction"] for x, y in zip(a_rows, b_rows)]
        dprob = [
            abs(x["probabilities"][k] - y["probabilities"][k])
            for x, y in zip(a_rows, b_rows)
            for k in x["probabilities"]
        ]
        shas = [file_sha256(original.file(ADAPTER_WEIGHTS)), file_sha256(again.file(ADAPTER_WEIGHTS))]
        return {
            "run": str(run_dir),
            "seed": recipe.seed if seed is None else seed,
            "bit_identical": shas[0] == shas[1],
            "adapter_sha256": shas,
            "max_abs_dw": weight_change(original.file(ADAPTER_WEIGHTS), again.file(ADAPTER_WEIGHTS)),
            "prediction_agreement": sum(same) / len(same) if same and len(a_rows) == len(b_rows) else None,
            "max_abs_dprob": max(dprob, default=None),
            "same_data": (before.get("data") or {}).get("train_sha256") == (after.get("data") or {}).get("train_sha256")
            if before
            else None,
            "accuracy": [original.metrics().get("accuracy"), report.get("accuracy")],
        }
