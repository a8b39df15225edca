"""The Hub's repo API over in-memory repos: what `tests/hub_server.py` answers once a request is routed.

Each repo holds commits (each a full ``{path: bytes}`` snapshot) plus ``branches`` and ``tags`` mapping names to commit
shas. Endpoints are methods named ``_<method>_<action>`` for ``/api/{type}s/{ns}/{name}/{action}/...``; errors raise
:class:`HubError`, which the server turns into the Hub's error answer.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class HubError(Exception):
    """An error answer.  ``code`` goes in ``X-Error-Code``, which the client turns into
    ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``EntryNotFoundError``."""

    def __init__(self, status: int, message: str, code: str = "", **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = extra.pop("headers", {})
        self.extra = extra  # merged into the JSON body


def git_blob_sha(data: bytes) -> str:
    """Git's blob id: preupload returns it so the client can skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    title: str
    message: str
    parent: str | None
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    created: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        """A branch, a tag or a full commit sha: the Hub accepts all three in every URL."""
        sha = self.branches.get(rev) or self.tags.get(rev) or rev
        if sha not in self.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[sha]


@dataclass
class File:
    """A raw file answer (``resolve``), as opposed to a JSON one."""

    data: bytes
    headers: dict


class HubApi:
    """The repos and the endpoints that read and change them; ``endpoint`` is the server's base URL."""

    def __init__(self) -> None:
        self.endpoint = ""
        self.repos: dict[tuple[str, str], Repo] = {}
        self._ids = itertools.count()

    def _repo(self, repo_type: str, repo_id: str, authed: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):  # the Hub hides private repos
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _new_commit(self, repo: Repo, branch: str, files: dict, title: str, message: str = "") -> Commit:
        parent = repo.branches.get(branch)
        sha = hashlib.sha1(f"{repo.repo_id}:{parent}:{next(self._ids)}".encode()).hexdigest()
        repo.commits[sha] = Commit(sha, files, title, message, parent)
        repo.branches[branch] = sha
        return repo.commits[sha]

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # -- endpoints: named _<method>_<action> for /api/{type}s/{ns}/{name}/{action}/...
    def _create_repo(self, payload: dict) -> dict:
        """A 409 must still carry ``url``: ``create_repo(exist_ok=True)`` relies on it."""
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if (repo_type, repo_id) in self.repos:
            url = self._url(self.repos[(repo_type, repo_id)])
            raise HubError(409, "You already created this repo", url=url)
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        self._new_commit(repo, "main", {".gitattributes": gitattributes}, "initial commit")
        self.repos[(repo_type, repo_id)] = repo
        return {"url": self._url(repo), "name": repo_id, "id": repo_id}

    def _get_info(self, repo: Repo, args, query, body) -> dict:
        """``model_info``/``repo_info``: transformers turns a tag into a sha with it."""
        commit = repo.resolve(args[0] if args else "main")
        siblings = [
            {"rfilename": path, "size": len(data), "blobId": git_blob_sha(data)}
            for path, data in sorted(commit.files.items())
        ]
        return {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }

    _get_revision = _get_info  # /api/models/{repo}/revision/{rev}

    def _get_tree(self, repo: Repo, args, query, body) -> list:
        commit = repo.resolve(args[0] if args else "main")
        folder = "/".join(args[1:]).strip("/")
        prefix = folder + "/" if folder else ""
        if folder and not any(path.startswith(prefix) for path in commit.files):
            raise HubError(404, f"Folder not found: {folder}", "EntryNotFound")
        recursive = query.get("recursive", "").lower() in ("1", "true")
        entries: dict[str, dict] = {}

        def add_folder(path: str) -> None:
            oid = hashlib.sha1(path.encode()).hexdigest()
            entries.setdefault(path, {"type": "directory", "path": path, "oid": oid})

        for path, data in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            if not recursive and len(rest) > 1:
                add_folder(prefix + rest[0])
                continue
            for depth in range(1, len(rest)):  # recursive: list every parent folder too
                add_folder(prefix + "/".join(rest[:depth]))
            entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha(data)}
        return list(entries.values())

    def _get_refs(self, repo: Repo, args, query, body) -> dict:
        def refs(names: dict[str, str], kind: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in sorted(names.items())]

        return {
            "branches": refs(repo.branches, "heads"),
            "tags": refs(repo.tags, "tags"),
            "converts": [],
            "pullRequests": [],
        }

    def _get_commits(self, repo: Repo, args, query, body) -> list:
        """``list_repo_commits``: newest first, following parents."""
        commit: Commit | None = repo.resolve(args[0] if args else "main")
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": "user"}],
                }
            )
            commit = repo.commits.get(commit.parent or "")
        return history

    def _post_preupload(self, repo: Repo, args, query, body) -> dict:
        """Always ``regular`` (no LFS/Xet); ``oid`` lets the client skip unchanged files."""
        files = repo.resolve(args[0]).files
        return {
            "files": [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha(files[f["path"]]) if f["path"] in files else None,
                }
                for f in json.loads(body)["files"]
            ]
        }

    def _post_commit(self, repo: Repo, args, query, body) -> dict:
        """NDJSON: a ``header`` line, then ``file`` / ``deletedFile`` / ``deletedFolder`` lines."""
        branch = args[0]
        if query.get("create_pr"):
            raise HubError(400, "LocalHub does not support pull requests")
        if branch not in repo.branches:
            raise HubError(404, f"Branch not found: {branch}", "RevisionNotFound")
        files, header = dict(repo.resolve(branch).files), {}
        for line in filter(None, body.splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {path: data for path, data in files.items() if not path.startswith(folder)}
            else:  # "lfsFile" cannot happen: preupload never answers "lfs"
                raise HubError(400, f"LocalHub does not support commit operation {key!r}")
        if header.get("parentCommit") not in (None, repo.branches[branch]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = self._new_commit(repo, branch, files, header.get("summary", ""), header.get("description", ""))
        return {
            "success": True,
            "commitOid": commit.sha,
            "pullRequestUrl": None,
            "commitUrl": f"{self._url(repo)}/commit/{commit.sha}",
        }

    def _post_tag(self, repo: Repo, args, query, body) -> dict:
        tag = json.loads(body)["tag"]
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = repo.resolve(args[0]).sha
        return {}

    def _delete_tag(self, repo: Repo, args, query, body) -> dict:
        if repo.tags.pop(args[0], None) is None:
            raise HubError(404, f"Tag not found: {args[0]}", "RevisionNotFound")
        return {}

    def _post_branch(self, repo: Repo, args, query, body) -> dict:
        if args[0] in repo.branches:
            raise HubError(409, f"Branch {args[0]} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo.branches[args[0]] = repo.resolve(start).sha
        return {}

    def _resolve(self, repo: Repo, rev: str, path: str) -> File:
        """``hf_hub_download`` needs ``X-Repo-Commit``, ``ETag`` and ``Content-Length``.
        A 404 for a missing file still names the commit, so the client can cache the miss."""
        commit = repo.resolve(rev)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        return File(data, {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(data)}"'})


def validate_yaml(payload: dict) -> dict:
    """The card's metadata through huggingface_hub's own parser; the real Hub answers 400 + ``errors`` when invalid
    (``HfApi._validate_yaml`` then raises ``ValueError``), 200 + ``warnings`` otherwise."""
    import yaml
    from huggingface_hub import DatasetCard, ModelCard, SpaceCard

    card_class = {"dataset": DatasetCard, "space": SpaceCard}.get(payload.get("repoType") or "model", ModelCard)
    try:
        card_class(payload.get("content") or "", ignore_metadata_errors=False)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError) as err:
        message = " ".join(f"{type(err).__name__}: {err}".split())
        raise HubError(400, f"Invalid metadata: {message}", errors=[{"message": message}], warnings=[]) from None
    return {"errors": [], "warnings": []}
