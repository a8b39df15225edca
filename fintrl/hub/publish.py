"""The Hub side: publishing run folders as versioned repos, and reading their versions back (the card:
`fintrl.hub.card`).

A published version is one commit holding the whole run folder (minus `checkpoints/`) plus a `vX.Y.Z` tag on it.
Tags are never moved, so `revision="v1.1.0"` always loads the same adapter, card, recipe and metrics.

A published repo works on anyone's machine:
- its adapter_config.json and recipe.yaml name the base model by its Hub id (an offline name's, or `--base-model`);
  a base with no Hub id (a local folder) is refused before anything is uploaded;
- no path of this machine leaves it: the recipe and report are published with portable values, and every staged text
  file is checked for the run's, data's, model's, home, working and temp folders (`fintrl.hub.staging.stage`): one found
  refuses the publish, naming the file.

Publishing is safe to rerun and shares the repo with people:
- repo ids are checked before any request (`check_repo_id`);
- transient Hub failures (5xx answers, dropped or timed-out connections) are retried with exponential backoff
  (`fintrl.hub.retry`); 4xx answers never are;
- the commit deletes only files fintrl itself wrote in the last version (listed in that commit's description,
  `fintrl files:`), never `.gitattributes` or `.eval_results/**`; files others added are kept (and named);
- the tag comes after the commit: if tagging fails, rerunning the same publish finds fintrl's untagged commit of that
  version (same title, same files) at the branch head and only creates the tag.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.errors import FintrlError, HubError, first_line
from fintrl.hub.card import render_card
from fintrl.hub.download import read_file
from fintrl.hub.ensemble_card import render_ensemble_card
from fintrl.hub.ids import check_repo_id
from fintrl.hub.merged_card import is_export, render_merged_card, require_publishable
from fintrl.hub.retry import T, reason, with_retries
from fintrl.hub.staging import base_model_hub_id, stage, stage_ensemble, staged_files
from fintrl.hub.versions import list_versions, next_version, parse_version, version_tags
from fintrl.metrics.paired import with_previous
from fintrl.run_folder import CARD, PREDICTIONS, RunFolder

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

MANIFEST_HEADER = "fintrl files:"  # in each commit's description, followed by the files fintrl wrote, one a line
NEVER_DELETED = (".gitattributes", ".eval_results/")  # a path equal to, or under, one of these


@dataclass(frozen=True)
class Published:
    repo_id: str
    version: str
    commit: str
    url: str
    kept: tuple[str, ...] = ()  # files others put in the repo, left in place
    deleted: tuple[str, ...] = ()  # files fintrl wrote in the previous version and not in this one


@dataclass
class _Head:
    """A branch head: its history (newest first) and its files (path -> RepoFile)."""

    sha: str
    commits: list[Any]
    files: dict[str, Any]


def _read_head(api: HfApi, repo_id: str, sha: str, retry: bool = True) -> _Head:
    from huggingface_hub.hf_api import RepoFile

    def call(fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what=what) if retry else fn()

    commits = call(lambda: api.list_repo_commits(repo_id, revision=sha), "list_repo_commits")
    tree = call(lambda: list(api.list_repo_tree(repo_id, revision=sha, recursive=True)), "list_repo_tree")
    return _Head(sha, commits, {entry.path: entry for entry in tree if isinstance(entry, RepoFile)})


def _manifest(message: str | None) -> list[str] | None:
    """The files a fintrl commit wrote, from its description; None for commits without one."""
    lines = [line.strip() for line in (message or "").splitlines()]
    if MANIFEST_HEADER not in lines:
        return None
    return [line for line in lines[lines.index(MANIFEST_HEADER) + 1 :] if line]


def _same_content(entry: Any, path: Path) -> bool:
    """A file in the repo (RepoFile) holds exactly this local file: LFS files by sha256, others by git blob id."""
    if entry is None:
        return False
    data = path.read_bytes()
    if entry.lfs is not None:
        return entry.lfs.sha256 == hashlib.sha256(data).hexdigest()
    return entry.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_fintrl_commit(head: _Head, version: str, staged: dict[str, Path], tagged: set[str]) -> bool:
    """The head is fintrl's untagged commit of `version` holding exactly these files (the card, which names the
    publish date, aside): a publish whose commit landed and whose tag did not."""
    if head.sha in tagged or not head.commits or not head.commits[0].title.startswith(f"fintrl {version}:"):
        return False
    manifest = _manifest(head.commits[0].message)
    if manifest is not None and set(manifest) != set(staged):
        return False
    return all(name == CARD or _same_content(head.files.get(name), path) for name, path in staged.items())


def _never_deleted(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in NEVER_DELETED)


def _plan(api: HfApi, repo_id: str, head: _Head, staged: dict[str, Path], tagged: set[str]) -> tuple[list, list]:
    """(delete, keep) among the head's files that this version does not write. Deleted: files fintrl wrote in its
    newest commit on this branch, a tagged version or a commit whose tag failed (the manifest in its description; a
    tagged commit made before manifests replaced the whole tree, so every file in it). Kept: everything else, and
    never `.gitattributes` or `.eval_results/**`."""
    last = next(
        (
            c
            for c in head.commits
            if c.commit_id in tagged or (c.title.startswith("fintrl v") and _manifest(c.message) is not None)
        ),
        None,
    )
    ours: set[str] = set()
    if last is not None:
        manifest = _manifest(last.message)
        ours = (
            set(manifest)
            if manifest is not None
            else set(
                with_retries(lambda: api.list_repo_files(repo_id, revision=last.commit_id), what="list_repo_files")
            )
        )
    leftovers = sorted(path for path in head.files if path not in staged and path != ".gitattributes")
    delete = [path for path in leftovers if path in ours and not _never_deleted(path)]
    return delete, [path for path in leftovers if path not in delete]


def _commit(
    api: HfApi,
    repo_id: str,
    staged: dict[str, Path],
    delete: list[str],
    message: str,
    version: str,
    parent: str | None,
    tagged: set[str],
) -> str:
    """One commit (retried); before a retry, a commit that landed while its answer was lost is recognised."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    description = "\n".join([MANIFEST_HEADER, *staged])
    tries = 0

    def once() -> str:
        nonlocal tries
        tries += 1
        if tries > 1:
            sha = api.model_info(repo_id).sha
            if sha != parent and _is_fintrl_commit(_read_head(api, repo_id, sha, retry=False), version, staged, tagged):
                logger.info("the earlier try's commit %s landed", sha)
                return sha
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in staged.items()]
        operations += [CommitOperationDelete(path_in_repo=path) for path in delete]
        try:
            return api.create_commit(
                repo_id, operations, commit_message=message, commit_description=description, parent_commit=parent
            ).oid
        except ValueError as err:  # HfApi._validate_yaml: the Hub's 400 on the card's metadata
            if not str(err).startswith("Invalid metadata in README.md"):
                raise
            problems = " ".join(line.strip(" -") for line in str(err).splitlines()[1:]) or first_line(err)
            raise HubError(f"the Hub rejected the model card's metadata: {problems}") from None

    return with_retries(once, what="create_commit")


def _tag(api: HfApi, repo_id: str, version: str, commit: str, summary: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    def once() -> None:
        try:
            api.create_tag(repo_id, tag=version, revision=commit, tag_message=summary)
        except HfHubHTTPError as err:  # 409: an earlier try made it while its answer was lost?
            if err.response.status_code != 409 or version_tags(api, repo_id).get(version) != commit:
                raise

    with_retries(once, what=f"create_tag {version}")


def card_renderer(folder: Path) -> Callable[..., str]:
    """The card a folder gets, published or rendered by `fintrl card`: an ensemble's, a merged export's or a run's
    (each renderer takes the same keywords)."""
    if RunFolder(Path(folder)).is_ensemble:
        return render_ensemble_card
    return render_merged_card if is_export(folder) else render_card


def publish(
    run_dir: Path, repo_id: str, *, version: str | None = None, private: bool = False, base_model: str | None = None
) -> Published:
    """Upload a run folder as one commit and tag it `version` (default: the next minor version).

    Everything that can refuse (repo id, run folder, base model, token, version, local paths) is checked before
    anything is uploaded; the tag is created only after the commit succeeded, so a failed upload leaves no version
    behind. A commit whose tag failed is finished by running the same publish again (tag only, no second commit).
    `base_model`: the base's Hub id (default: the recipe's publish.base_model, else its model; see `base_model_hub_id`).
    A merged export (`fintrl export --merged`, `fintrl.hub.merged_card`) is published alike, with its own card, and so
    is an ensemble folder (`fintrl eval A B`, a recipe's `seeds:`): its report and card at the top, each member's run in
    a subfolder (`fintrl.hub.staging.stage_ensemble`), so `fintrl predict REPO` scores the ensemble.

    ```python
    publish(Path("runs/quickstart"), "your-org/fin-sentiment", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    ```
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import RepositoryNotFoundError

    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    members = run.ensemble_members(downloaded=False) if run.is_ensemble else []  # an ensemble: members in subfolders
    recipe = RunFolder(members[0] if members else run_dir).require_finished("publish").recipe()
    merged = is_export(run_dir)  # a merged export: no adapter, its own card
    require_publishable(run_dir, merged=merged)  # else a run with an adapter, or an ensemble of them
    metrics = run.metrics()
    base = base_model_hub_id(recipe, base_model)
    if get_token() is None:
        raise HubError("publishing needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi()

    def model_info() -> Any:
        try:
            return api.model_info(repo_id)
        except RepositoryNotFoundError:
            return None

    info = with_retries(model_info, what="model_info")
    if info is not None and private and not info.private:
        raise HubError(f"{repo_id} exists and is public: --private cannot hide it; change its visibility on the Hub")
    history = list_versions(repo_id) if info is not None else []
    taken = [v["version"] for v in history]
    version = "v{}.{}.{}".format(*parse_version(version)) if version else next_version(taken)
    if version in taken:
        raise HubError(
            f"{repo_id} already has {version} and published versions are immutable: "
            f"publish as {next_version(taken)} (--version) instead"
        )
    current = {
        "version": version,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "accuracy": metrics["accuracy"],
        "f1_macro": metrics["f1_macro"],
    }
    versions = sorted([current, *history], key=lambda v: parse_version(v["version"]), reverse=True)
    older = versions[versions.index(current) + 1 :]  # the previous version: the highest below this one
    prior = read_file(repo_id, PREDICTIONS, revision=older[0]["commit"]) if older else None
    compared = with_previous(run_dir, older[0]["version"], prior) if older else None
    card = card_renderer(run_dir)(
        run_dir, repo_id=repo_id, versions=versions, version=version, base_model=base, comparison=compared
    )
    summary = f"{version}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}"
    tagged = {v["commit"] for v in history}
    delete: list[str] = []
    kept: list[str] = []
    reused = False
    with tempfile.TemporaryDirectory(prefix="fintrl-publish-") as tmp:
        if members:
            stage_ensemble(run_dir, Path(tmp), members=members, card=card, base=base)
        else:
            stage(run_dir, Path(tmp), recipe=recipe, card=card, base=base)
        staged = staged_files(Path(tmp))
        head = _read_head(api, repo_id, info.sha) if info is not None else None
        if head is not None and _is_fintrl_commit(head, version, staged, tagged):
            commit, reused = head.sha, True
            logger.info(
                "%s: the head is fintrl's untagged commit %s of %s; creating only its tag", repo_id, commit, version
            )
        else:
            if head is not None:
                delete, kept = _plan(api, repo_id, head, staged, tagged)
            with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), what="create_repo")
            commit = _commit(
                api,
                repo_id,
                staged,
                delete,
                f"fintrl {summary}",
                version,
                head.sha if head is not None else None,
                tagged,
            )
    if delete:
        logger.info(
            "removed %d file(s) an earlier version wrote and %s does not: %s", len(delete), version, ", ".join(delete)
        )
    if kept:
        logger.info("kept %d file(s) not written by fintrl: %s", len(kept), ", ".join(kept))
    try:
        _tag(api, repo_id, version, commit, summary)
    except FintrlError:
        raise
    except Exception as err:
        raise HubError(
            f"{repo_id}: the commit {commit[:12]} of {version} landed but creating its tag failed "
            f"({reason(err)}); rerun the same `fintrl publish` to finish the tag"
        ) from err
    if reused:  # the run keeps the card as it was published (the one rendered now may differ in its date)
        try:
            card = read_file(repo_id, CARD, revision=commit) or card
        except Exception as err:
            logger.warning(
                "could not read the published card back (%s); the run gets the one rendered now", reason(err)
            )
    run.file(CARD).write_text(card)
    logger.info("published %s %s (commit %s)", repo_id, version, commit)
    return Published(repo_id, version, commit, f"{api.endpoint}/{repo_id}/tree/{version}", tuple(kept), tuple(delete))
