"""Reading a repo's versions back: every `vX.Y.Z` tag and what the files at it say (base model, data, headline
metrics, provenance), for `fintrl versions`, the card's version table and publishing the next version."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from fintrl.errors import HubError, RecipeError
from fintrl.hub.download import read_file
from fintrl.hub.ids import check_repo_id
from fintrl.hub.retry import with_retries
from fintrl.run_folder import ADAPTER_CONFIG, METRICS, RECIPE

if TYPE_CHECKING:
    from huggingface_hub import HfApi

VERSION_TAG = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int]:
    """`v1.2.3` (or `1.2.3`) -> (1, 2, 3): versions are semantic so they sort and bump without surprises."""
    match = VERSION_TAG.fullmatch("v" + text.strip().removeprefix("v"))
    if match is None:
        raise RecipeError(f"version {text!r} is not a semantic version: use vMAJOR.MINOR.PATCH, e.g. v1.1.0")
    major, minor, patch = map(int, match.groups())
    return major, minor, patch


def next_version(taken: list[str]) -> str:
    """v1.0.0 first, then the highest version with its minor number bumped."""
    if not taken:
        return "v1.0.0"
    major, minor, _ = max(map(parse_version, taken))
    return f"v{major}.{minor + 1}.0"


def version_tags(api: HfApi, repo_id: str) -> dict[str, str]:
    """`vX.Y.Z` tag -> commit sha; other tags are not fintrl versions and are left alone."""
    refs = with_retries(lambda: api.list_repo_refs(repo_id), what="list_repo_refs")
    return {t.name: t.target_commit for t in refs.tags if VERSION_TAG.fullmatch(t.name)}


def _version_record(api: HfApi, repo_id: str, tag: str, commit: str) -> dict[str, Any]:
    """What a version is, read from the files at its tag (not from a side index that could drift)."""

    def read(name: str, parse: Callable[[str], Any]) -> dict[str, Any]:
        """A file of the version as a mapping; anything else (a hand-edited or hostile file) reads as empty."""
        try:
            value = parse(read_file(repo_id, name, revision=commit) or "{}")
        except (ValueError, yaml.YAMLError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    metrics, adapter, recipe = read(METRICS, json.loads), read(ADAPTER_CONFIG, json.loads), read(RECIPE, yaml.safe_load)
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    scored = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}  # an ensemble has no recipe
    source = metrics.get("provenance") if isinstance(metrics.get("provenance"), dict) else {}
    fingerprints = source.get("data") if isinstance(source.get("data"), dict) else {}
    code = source.get("code") if isinstance(source.get("code"), dict) else {}
    date = with_retries(lambda: api.list_repo_commits(repo_id, revision=commit), what="list_repo_commits")[0].created_at
    return {
        "version": tag,
        "date": date.strftime("%Y-%m-%d"),
        "commit": commit,
        "base_model": adapter.get("base_model_name_or_path")
        or (recipe.get("model") or {}).get("name_or_path")
        or metrics.get("model"),
        "data": data.get("preset") or data.get("source") or data.get("path") or scored.get("source"),
        "n_train": scored.get("n_train"),
        "n_eval": scored.get("n_eval"),
        **{k: metrics.get(k) for k in ("accuracy", "f1_macro", "f1_weighted")},
        "provenance": {
            "train_sha256": fingerprints.get("train_sha256"),
            "eval_sha256": fingerprints.get("eval_sha256"),
            "recipe_sha256": source.get("recipe_sha256"),
            "seed": source.get("seed"),
            "fintrl": code.get("fintrl"),
            "git_commit": code.get("git_commit"),
            "git_dirty": code.get("git_dirty"),
        },
    }


def list_versions(repo_id: str) -> list[dict[str, Any]]:
    """Every published version of a repo, highest first: date, commit, base model, data and headline metrics."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    check_repo_id(repo_id)
    api = HfApi()
    try:
        tags = version_tags(api, repo_id)
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id}: no such repo on {api.endpoint} (or the token cannot see it)") from None
    ordered = sorted(tags, key=parse_version, reverse=True)
    return [_version_record(api, repo_id, tag, tags[tag]) for tag in ordered]
