"""notebooks/quickstart.ipynb runs top to bottom (executed with nbclient on a tiny recipe, so it cannot rot), and is
committed without outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from tests.helpers import LABELS, ROOT, tiny_recipe_dict

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, tiny_model_dir):
    """Every cell runs without error in a fresh kernel, in an empty working folder (about 12 s on 2 cores): the recipe
    is a tiny one (FINTRL_NOTEBOOK_RECIPE), the model the session's tiny Mistral (the kernel inherits FINTRL_HOME)."""
    import nbformat
    from nbclient import NotebookClient

    recipe = tiny_recipe_dict(Path("runs") / "notebook")
    recipe["train"] |= {"max_steps": 2}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("FINTRL_NOTEBOOK_RECIPE", str(tmp_path / "tiny.yaml"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the kernel's python
    pythonpath = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))  # this checkout's fintrl, installed or not
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    where = {"metadata": {"path": str(tmp_path)}}  # the kernel's working folder
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=where).execute()

    assert (tmp_path / "runs" / "notebook" / "metrics.json").is_file()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the plots, inline
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("this model" in html for html in tables)  # the metrics table
    assert any("cut 500 jobs" in html and any(label in html for label in LABELS) for html in tables)  # predictions
