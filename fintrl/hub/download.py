"""Reading from the Hub: one file of a repo at a revision, or the files a target needs. Transient failures are retried
(`fintrl.hub.retry`), and every other failure becomes one fintrl error line naming the repo (`fintrl.errors`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fintrl.errors import HubError, translate
from fintrl.hub.ids import check_repo_id
from fintrl.hub.retry import with_retries

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _mapped(repo_id: str, revision: str | None, fn: Callable[[], T], what: str) -> T:
    try:
        return with_retries(fn, what=what)
    except Exception as err:
        mapped = translate(err)
        if mapped is None:
            raise
        raise type(mapped)(f"{repo_id}{'@' + revision if revision else ''}: {mapped}") from None


def read_file(repo_id: str, filename: str, *, revision: str | None = None) -> str | None:
    """The text of `filename` in `repo_id` at `revision`, or None when the repo has no such file there."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def download() -> str | None:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision)).read_text(encoding="utf-8")
        except EntryNotFoundError as err:
            if isinstance(err, LocalEntryNotFoundError):  # the Hub did not answer: the file may well exist
                raise
            return None

    return _mapped(repo_id, revision, download, f"downloading {filename}")


def download_repo(repo_id: str, *, revision: str | None, patterns: list[str]) -> Path:
    """A local snapshot of the files of `repo_id` at `revision` that match `patterns`."""
    from huggingface_hub import snapshot_download

    try:
        check_repo_id(repo_id)
    except HubError:
        raise HubError(f"{repo_id}: not a local folder, and not a valid Hub repo id (namespace/name)") from None
    logger.info("downloading %s%s from the Hub", repo_id, f"@{revision}" if revision else "")
    return _mapped(
        repo_id,
        revision,
        lambda: Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns)),
        f"downloading {repo_id}",
    )
