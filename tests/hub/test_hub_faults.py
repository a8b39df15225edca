"""Publishing when the Hub misbehaves or is shared: retries, tag-after-commit, repo ids, files others added.

Faults come from the local Hub (`LocalHub.inject`, tests/hub_server.py); the clients are the real ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from fintrl.cli.main import main
from fintrl.errors import HubError
from fintrl.hub import publish as hub
from fintrl.hub.retry import RETRY_ATTEMPTS
from tests.helpers import REPO, copy_run


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr("fintrl.hub.retry.RETRY_BASE_DELAY", 0.01)


def titles() -> list[str]:
    return [c.title.split(":")[0] for c in HfApi().list_repo_commits(REPO)]


def tags() -> dict[str, str]:
    return {t.name: t.target_commit for t in HfApi().list_repo_refs(REPO).tags}


def posts(local_hub, part: str) -> int:
    return sum(method == "POST" and part in path for method, path in local_hub.requests)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def with_metrics(run_dir: Path, **changes) -> Path:
    metrics = json.loads((run_dir / "metrics.json").read_text()) | changes
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_publish_survives_two_500s_on_commit(trained, local_hub, tmp_path):
    fault = local_hub.inject(method="POST", path_contains="/commit/", fault="500", times=2)
    result = hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    assert fault.hits == 2 and posts(local_hub, "/commit/") == 3
    assert titles() == ["fintrl v1.0.0", "initial commit"] and tags() == {"v1.0.0": result.commit}


def test_publish_survives_slow_answers(trained, local_hub, tmp_path):
    """A Hub that answers slowly (under the clients' timeouts) slows the publish down, nothing else."""
    slow = [
        local_hub.inject(method="POST", path_contains=part, fault="slow", delay=1.0)
        for part in ("/preupload/", "/commit/", "/tag/")
    ]
    result = hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    assert [f.hits for f in slow] == [1, 1, 1] and posts(local_hub, "/commit/") == 1
    assert tags() == {"v1.0.0": result.commit}


def test_publish_survives_a_dropped_preupload(trained, local_hub, tmp_path):
    fault = local_hub.inject(method="POST", path_contains="/preupload/", fault="drop")
    result = hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    assert fault.hits == 1 and posts(local_hub, "/preupload/") == 2
    assert tags() == {"v1.0.0": result.commit}


def test_commit_whose_answer_was_lost_is_not_made_twice(trained, local_hub, tmp_path):
    """The commit lands, the connection drops before the answer: the retry finds fintrl's commit and tags it."""
    fault = local_hub.inject(method="POST", path_contains="/commit/", fault="drop", after=True)
    result = hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    assert fault.hits == 1 and posts(local_hub, "/commit/") == 1
    assert titles() == ["fintrl v1.0.0", "initial commit"] and tags() == {"v1.0.0": result.commit}


def test_reading_versions_retries_downloads(trained, local_hub, tmp_path):
    hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    fault = local_hub.inject(path_contains="/resolve/", fault="503", times=2)
    fault_refs = local_hub.inject(path_contains="/refs", fault="drop")
    [version] = hub.list_versions(REPO)
    assert version["version"] == "v1.0.0" and version["accuracy"] is not None
    assert fault.hits == 2 and fault_refs.hits == 1


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("503", "the Hub failed (503) after retries"),
        ("drop", "cannot reach the Hub (RemoteProtocolError"),
    ],
)
def test_persistent_failure_is_one_line_exit_6_and_no_version(trained, local_hub, tmp_path, capsys, fault, message):
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    card = (run_dir / "README.md").read_text()
    injected = local_hub.inject(method="POST", path_contains="/commit/", fault=fault, times=50)
    assert main(["publish", str(run_dir), "--repo", REPO]) == 6
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("fintrl: error: ") and message in lines[0]
    assert injected.hits == RETRY_ATTEMPTS
    assert tags() == {} and titles() == ["initial commit"]
    assert (run_dir / "README.md").read_text() == card


def test_4xx_is_not_retried(trained, local_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(Exception) as err:
        hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    assert err.value.response.status_code == 401
    assert len(local_hub.requests) == 1  # model_info, once


def test_tag_failure_then_rerun_finishes_the_tag(trained, local_hub, tmp_path, capsys):
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    fault = local_hub.inject(method="POST", path_contains="/tag/", fault="500", times=RETRY_ATTEMPTS)
    assert main(["publish", str(run_dir), "--repo", REPO]) == 6
    [line] = error_lines(capsys)
    assert "commit" in line and "landed" in line and "rerun the same `fintrl publish` to finish the tag" in line
    assert fault.hits == RETRY_ATTEMPTS and tags() == {} and titles() == ["fintrl v1.0.0", "initial commit"]
    landed = HfApi().model_info(REPO).sha

    commits_before, preuploads_before = posts(local_hub, "/commit/"), posts(local_hub, "/preupload/")
    result = hub.publish(run_dir, REPO)  # the same publish again: only the tag is made
    assert (result.version, result.commit) == ("v1.0.0", landed) and tags() == {"v1.0.0": landed}
    assert posts(local_hub, "/commit/") == commits_before and posts(local_hub, "/preupload/") == preuploads_before
    assert titles() == ["fintrl v1.0.0", "initial commit"]
    assert (run_dir / "README.md").read_text() == Path(
        hf_hub_download(REPO, "README.md", revision="v1.0.0")
    ).read_text()


def test_untagged_commit_of_another_run_is_not_reused(trained, local_hub, tmp_path):
    """Another run published after a failed tag gets its own commit; the untagged commit's files are fintrl's."""
    run_dir = copy_run(trained["dir"], tmp_path / "run")
    (run_dir / "extra.txt").write_text("only in the untagged commit\n")
    local_hub.inject(method="POST", path_contains="/tag/", fault="500", times=RETRY_ATTEMPTS)
    with pytest.raises(HubError, match="landed"):
        hub.publish(run_dir, REPO)
    other = hub.publish(with_metrics(copy_run(trained["dir"], tmp_path / "other"), accuracy=0.5), REPO)
    assert other.version == "v1.0.0" and titles() == ["fintrl v1.0.0", "fintrl v1.0.0", "initial commit"]
    assert tags() == {"v1.0.0": other.commit} and other.deleted == ("extra.txt",) and other.kept == ()
    assert "extra.txt" not in HfApi().list_repo_files(REPO, revision="v1.0.0")
    metrics = json.loads(Path(hf_hub_download(REPO, "metrics.json", revision="v1.0.0")).read_text())
    assert metrics["accuracy"] == 0.5


@pytest.mark.parametrize("repo_id", ["a/b/c", "-bad-/x", "x" * 200, "no_slash", "org/na--me", "org/", ""])
def test_invalid_repo_ids_are_refused_before_any_request(trained, local_hub, capsys, repo_id):
    with pytest.raises(HubError, match="invalid repo id"):
        hub.publish(trained["dir"], repo_id)
    with pytest.raises(HubError, match="invalid repo id"):
        hub.list_versions(repo_id)
    assert main(["versions", "--", repo_id]) == 6  # "--": "-bad-/x" is not an option
    [line] = error_lines(capsys)
    assert line.startswith("fintrl: error: invalid repo id") and len(line) < 300
    if repo_id:
        assert main(["publish", str(trained["dir"]), f"--repo={repo_id}"]) == 6
    assert local_hub.requests == []


def test_bad_card_metadata_fails_the_publish(trained, local_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "render_card", lambda *args, **kwargs: "---\ntags: [fintrl\nlicense: mit\n---\n# card\n")
    with pytest.raises(HubError, match="rejected the model card's metadata: .*ParserError"):
        hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    assert posts(local_hub, "/validate-yaml") == 1 and posts(local_hub, "/commit/") == 0  # 4xx: not retried
    assert tags() == {} and titles() == ["initial commit"]


def test_publish_keeps_what_others_added(trained, local_hub, tmp_path, caplog):
    """Someone adds NOTES.md and .eval_results/a.yaml to main between publishes: they stay, in every later version;
    a file fintrl wrote in v1.0.0 and not in v1.1.0 goes."""
    api = HfApi()
    run1 = copy_run(trained["dir"], tmp_path / "run1")
    (run1 / "extra_v1.txt").write_text("only in v1\n")
    v1 = hub.publish(run1, REPO)
    assert "extra_v1.txt" in api.list_repo_files(REPO, revision="v1.0.0")
    api.create_commit(
        REPO,
        [
            CommitOperationAdd("NOTES.md", b"# notes by a colleague\n"),
            CommitOperationAdd(".eval_results/a.yaml", b"- task: x\n"),
        ],
        commit_message="notes",
    )
    caplog.set_level(logging.INFO, logger="fintrl.hub.publish")
    run2 = with_metrics(copy_run(trained["dir"], tmp_path / "run2"), accuracy=0.875)
    v2 = hub.publish(run2, REPO)
    files = set(api.list_repo_files(REPO, revision="v1.1.0"))
    assert {"NOTES.md", ".eval_results/a.yaml", ".gitattributes"} <= files and "extra_v1.txt" not in files
    assert v2.kept == (".eval_results/a.yaml", "NOTES.md") and v2.deleted == ("extra_v1.txt",)
    assert "kept 2 file(s) not written by fintrl: .eval_results/a.yaml, NOTES.md" in caplog.text
    assert "extra_v1.txt" in api.list_repo_files(REPO, revision="v1.0.0")  # old versions are untouched
    assert v1.kept == v1.deleted == ()

    # the next version still keeps them: carried into v1.1.0's commit does not make them fintrl's
    v3 = hub.publish(with_metrics(run2, accuracy=0.9), REPO)
    assert {"NOTES.md", ".eval_results/a.yaml"} <= set(api.list_repo_files(REPO, revision="v1.2.0"))
    assert v3.kept == (".eval_results/a.yaml", "NOTES.md") and v3.deleted == ()
    assert Path(hf_hub_download(REPO, "NOTES.md", revision="v1.2.0")).read_text() == "# notes by a colleague\n"


def test_version_from_an_older_fintrl_is_replaced_whole(trained, local_hub, tmp_path):
    """Commits made before manifests replaced the whole tree: every file in such a tagged commit is fintrl's."""
    api = HfApi()
    api.create_repo(REPO)
    old = api.create_commit(
        REPO,
        [CommitOperationAdd("old_only.txt", b"v1\n"), CommitOperationAdd(".eval_results/e.yaml", b"- x\n")],
        commit_message="fintrl v1.0.0: accuracy 0.500, macro-F1 0.400",
    )
    api.create_tag(REPO, tag="v1.0.0", revision=old.oid)
    v2 = hub.publish(copy_run(trained["dir"], tmp_path / "run"), REPO)
    files = set(api.list_repo_files(REPO, revision="v1.1.0"))
    assert "old_only.txt" not in files and ".eval_results/e.yaml" in files
    assert v2.deleted == ("old_only.txt",) and v2.kept == (".eval_results/e.yaml",)
