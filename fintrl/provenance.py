"""Where a run's numbers come from, recorded so a reader can check them: the exact data (a fingerprint of the rows as
trained and evaluated on, after carve-outs, balancing and exclusions, and the files they were read from), the
resolved recipe, the code (fintrl's version, its git commit and whether the tree was dirty), the seed, the hardware,
and the base model (its Hub id and revision, or the hash of its offline build).

A run writes this as `metrics.json`'s `provenance`; the model card shows it in a short block, `fintrl versions` lists
it per version, and `fintrl compare` says when two sides were evaluated on different data.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

    from fintrl.data.loading import LabeledData
    from fintrl.recipe.schema import Recipe


def rows_fingerprint(rows: Dataset, labels: list[str]) -> str:
    """sha256 over the rows in order, each its text and label name: equal exactly when the rows are."""
    digest = hashlib.sha256()
    for text, label in zip(rows["text"], rows["label"]):
        digest.update(json.dumps([text, labels[label]], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the resolved recipe (every field, defaults included; the output folder aside)."""
    raw = recipe.model_dump(mode="json")
    raw.pop("output_dir", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def code_version() -> dict[str, Any]:
    """fintrl's version and, in a git checkout, its commit and whether the tree differs from it."""
    from fintrl import __version__

    here = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") if (here / ".git").exists() else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"fintrl": __version__, "git_commit": commit, "git_dirty": bool(status) if commit else None}


def base_model(name_or_path: str, revision: str | None) -> dict[str, Any]:
    """The base by its Hub id and revision; an offline build (no revision to name) by the sha256 of its weights."""
    from fintrl.data.files import file_sha256
    from fintrl.model.loading import OFFLINE_MODELS, hub_id, resolve_model_path

    out: dict[str, Any] = {"id": hub_id(name_or_path), "revision": revision}
    if name_or_path in OFFLINE_MODELS:
        folder = Path(resolve_model_path(name_or_path))
        weights = sorted(folder.glob("*.safetensors"))
        out["offline_build"] = name_or_path
        out["weights_sha256"] = {p.name: file_sha256(p) for p in weights}
    return out


def record(recipe: Recipe, data: LabeledData, *, device: str, dtype: str, world_size: int) -> dict[str, Any]:
    """The run's provenance (metrics.json `provenance`)."""
    return {
        "data": {
            "source": data.source,
            "config_name": data.config_name,
            "files": data.files,
            "train_sha256": rows_fingerprint(data.train, data.labels),
            "eval_sha256": rows_fingerprint(data.eval, data.labels),
            "n_train": len(data.train),
            "n_eval": len(data.eval),
        },
        "recipe_sha256": recipe_hash(recipe),
        "code": code_version(),
        "seed": recipe.seed,
        "hardware": {"device": device, "dtype": dtype, "world_size": world_size},
        "base_model": base_model(recipe.model.name_or_path, recipe.model.revision),
    }
