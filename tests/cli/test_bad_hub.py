"""Bad inputs that meet the Hub: tokens, repo ids, versions, faults while uploading or downloading, the Hub
switched off, and links that would carry a secret out of a run folder. The Hub is the project's local one
(`tests/hub_server.py`), with faults injected.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fintrl.cli.main import main
from tests.cli.bad_inputs import Ctx, Probe, check, probe_test
from tests.helpers import tree_hash


def published(c: Ctx, hub) -> None:
    """The finished run, published once as v1.0.0 of fintrl-test/fin (set-up, before the probe's hashes)."""
    from fintrl.hub.publish import publish

    publish(c.run, "fintrl-test/fin", version="v1.0.0")


def hub_down(fault: str, path: str) -> Callable:
    def arrange(c: Ctx, hub) -> None:
        hub.inject(path_contains=path, fault=fault, times=50)

    return arrange


H = Probe
HUB_PROBES: list[tuple[Probe, Callable | None]] = [
    (
        H(
            "publish without a token",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "token",
            lambda mp: [mp.delenv("HF_TOKEN"), mp.setattr("huggingface_hub.get_token", lambda: None)],
        ),
        None,
    ),
    (
        H(
            "publish with a wrong token",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "401|token",
            lambda mp: mp.setenv("HF_TOKEN", "hf_wrong"),
        ),
        None,
    ),
    (H("publish to an invalid repo id", lambda c: ["publish", str(c.run), "--repo", "a/b/c"], 6, "repo id"), None),
    (
        H(
            "publish a bad version",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin", "--version", "1.x"],
            2,
            "semantic version",
        ),
        None,
    ),
    (
        H(
            "publish an existing version",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin", "--version", "v1.0.0"],
            6,
            "already has v1.0.0",
        ),
        published,
    ),
    (
        H(
            "publish while commits fail",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "500|failed",
        ),
        hub_down("500", "/commit/"),
    ),
    (
        H(
            "publish while connections drop",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "cannot reach|Hub",
        ),
        hub_down("drop", "/api/"),
    ),
    (H("versions of a missing repo", lambda c: ["versions", "fintrl-test/none"], 6, "no such repo"), None),
    (H("versions of an invalid id", lambda c: ["versions", "org/bad..name"], 6, "repo id"), None),
    (H("predict a missing Hub repo", lambda c: ["predict", "fintrl-test/none", "--text", "x"], 6, "not found"), None),
    (
        H("predict a missing version", lambda c: ["predict", "fintrl-test/fin@v9.9.9", "--text", "x"], 6, "revision"),
        published,
    ),
    (H("predict an invalid repo id", lambda c: ["predict", "org/bad..name", "--text", "x"], 6, "repo id"), None),
    (
        H(
            "eval while downloads fail",
            lambda c: ["eval", "fintrl-test/fin", "--output-dir", str(c.tmp / "e")],
            6,
            "Hub",
        ),
        lambda c, hub: [published(c, hub), hub.inject(path_contains="/api/models", fault="503", times=50)],
    ),
]


@pytest.mark.parametrize(("probe", "arrange"), HUB_PROBES, ids=[p.name for p, _ in HUB_PROBES])
def test_bad_hub_input(
    probe: Probe,
    arrange: Callable | None,
    finished: Path,
    local_hub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("fintrl.hub.retry.RETRY_BASE_DELAY", 0.001)
    if arrange:
        arrange(Ctx(tmp_path, finished), local_hub)

    def versions() -> set[tuple[str, str, str]]:
        return {(repo.repo_id, tag, sha) for repo in local_hub.repos.values() for tag, sha in repo.tags.items()}

    before = versions()
    check(probe, Ctx(tmp_path, finished), monkeypatch, capsys)
    assert versions() == before, "a version was made or moved"


OFFLINE_PROBES = [
    H(
        "versions offline",
        lambda c: ["versions", "org/name"],
        6,
        "HF_HUB_OFFLINE|cannot reach",
        patch=lambda mp: mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True),
    ),
]
test_bad_offline_input = probe_test(OFFLINE_PROBES)


def test_publish_never_follows_a_link_out_of_the_run(finished: Path, local_hub, tmp_path: Path, capsys) -> None:
    """A link in the run folder to a file outside it (a token, a key) is refused before anything is uploaded."""
    secret = tmp_path / "token"
    secret.write_text("hf_secret_token_value")
    run = Path(shutil.copytree(finished, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
    (run / "notes.txt").symlink_to(secret)
    before = tree_hash(run)
    assert main(["publish", str(run), "--repo", "fintrl-test/linked", "--base-model", "fintrl-test/tiny-mistral"]) == 5
    err = capsys.readouterr().err
    assert "notes.txt is a symbolic link" in err and "hf_secret" not in err
    assert tree_hash(run) == before
    repo = local_hub.repos.get(("model", "fintrl-test/linked"))
    assert repo is None or not repo.tags
