"""The fintrl error family: every failure a user can fix, each with one sentence and its own exit code.

The CLI is the one boundary that catches them (`fintrl.cli.main.main`): it prints `fintrl: error: <message>` on one line
and exits with the error's `exit_code`; the traceback only with `-v`. Library code raises these, never `SystemExit`.
Errors that other libraries raise for the same user mistakes (a Hub 404, a full disk, a non-UTF-8 file) are turned
into this family by `translate`, so they read the same way.

>>> err = DataError("data.path: train.csv is empty; it needs a header row and at least one row per class")
>>> err.exit_code
3
"""

from __future__ import annotations

import errno
import sys

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: rerun with -v and report the traceback)",
    2: "bad command line or recipe (fix the flag or key the message names)",
    3: "bad data (the file, column or rows the message names)",
    4: "model or adapter cannot be found or loaded",
    5: "run folder state (exists, locked by another run, unfinished, or not a run folder)",
    6: "Hugging Face Hub (network, token, repo id, missing repo or version, conflict)",
    7: "scoring (labels and chat template cannot be aligned, or an empty text)",
    8: "storage (disk full, read-only, permission denied, a file where a folder should be)",
    130: "interrupted (Ctrl-C); a training run continues with --resume",
}


class FintrlError(Exception):
    """Base of every expected failure: a one-line message that says what to do; `exit_code` for the CLI."""

    exit_code = 1


class RecipeError(FintrlError):
    """A recipe or command-line problem, with its key path (e.g. `train.learnig_rate`) and what was expected."""

    exit_code = 2


class DataError(FintrlError):
    """Data that cannot produce a valid report: unreadable files, missing columns, too few rows or classes."""

    exit_code = 3


class ModelError(FintrlError):
    """A base model or adapter that cannot be found, built or loaded."""

    exit_code = 4


class RunFolderError(FintrlError):
    """A run folder in the wrong state for the command: finished, locked, unfinished, or not a run folder."""

    exit_code = 5


class HubError(FintrlError):
    """The Hub refused or could not be reached: token, repo id, missing repo/version, conflict, server errors."""

    exit_code = 6


class ScoringError(FintrlError):
    """The scorer cannot map the model's output onto the labels (template misalignment, empty texts, mode)."""

    exit_code = 7


class StorageError(FintrlError):
    """The disk said no: full, read-only, permission denied, or a file where a folder is needed."""

    exit_code = 8


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(exc: BaseException) -> FintrlError | None:
    """The fintrl error for a library exception that a user can fix, or None for a real bug.

    Kept in one place so that every command turns a Hub 404 or a full disk into the same sentence.
    """
    if isinstance(exc, FintrlError):
        return exc
    hub = _translate_hub(exc)
    if hub is not None:
        return hub
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"a file is not UTF-8 text ({first_line(exc)}); save it as UTF-8")
    if isinstance(exc, OSError):
        return _translate_os(exc)
    if isinstance(exc, RecursionError):  # a JSON or YAML file nested thousands deep, read by a library
        return DataError("a file is nested too deeply to read (thousands of levels); it is not one fintrl wrote")
    jinja = sys.modules.get("jinja2.exceptions")
    if jinja is not None and isinstance(exc, jinja.TemplateError):  # a chat template: the sandbox refused it, or broke
        return ModelError(
            f"a Jinja template failed ({type(exc).__name__}: {first_line(exc)}); is the chat template right?"
        )
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return RecipeError(f"YAML syntax error: {' '.join(str(exc).split())}")
    datasets_errors = sys.modules.get("datasets.exceptions")
    if datasets_errors is not None and isinstance(exc, datasets_errors.DatasetNotFoundError):
        return DataError(f"{first_line(exc)}; give a Hub dataset id, or a local folder or file with data.path")
    return None


def _translate_os(exc: OSError) -> FintrlError:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"no space left on the device writing{where}; free some space and rerun (--resume continues a run)"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write{where}: {exc.strerror or first_line(exc)}; choose a writable --output-dir")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return StorageError(
            f"{exc.strerror or first_line(exc)}:{where}; a file stands where a folder is needed (or the reverse)"
        )
    if exc.errno == errno.ENOENT:
        return StorageError(f"no such file or folder:{where or ' ' + first_line(exc)}")
    message = first_line(exc)
    if (
        "is not a local folder and is not a valid model identifier" in message
        or "does not appear to have a file" in message
    ):
        return ModelError(message)
    return StorageError(message) if exc.errno is not None else ModelError(message)


def _translate_hub(exc: BaseException) -> FintrlError | None:
    hf = sys.modules.get("huggingface_hub.errors")  # only what was imported can have raised
    if hf is None:
        return None
    if isinstance(exc, hf.HFValidationError):
        return HubError(f"invalid repo id: {first_line(exc)}")
    if isinstance(exc, hf.GatedRepoError):
        return HubError(f"gated repo: {first_line(exc)}; accept its terms on the Hub and log in (`hf auth login`)")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubError("repo not found on the Hub (or your token cannot see it): check the id and `hf auth whoami`")
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubError(
            "no such revision (version, branch or commit) in that Hub repo: `fintrl versions ORG/NAME` lists them"
        )
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return HubError("the Hub is off (HF_HUB_OFFLINE=1): unset it to reach the Hub, or point at a local folder")
    if isinstance(exc, hf.LocalEntryNotFoundError):
        cause = _translate_hub(exc.__cause__) if exc.__cause__ is not None else None
        if cause is not None:  # the Hub's own failure (a 500, a dropped connection) says more than "offline?"
            return cause
        return HubError(
            "cannot reach the Hub and the file is not in the local cache (offline?): "
            "connect, or point at a local folder instead"
        )
    if isinstance(exc, hf.EntryNotFoundError):
        return HubError(f"file not found in that Hub repo: {first_line(exc)}")
    if isinstance(exc, hf.HfHubHTTPError):
        status = exc.response.status_code if getattr(exc, "response", None) is not None else None
        if status == 401:
            return HubError("the Hub refused the token (401): set a valid HF_TOKEN or run `hf auth login`")
        if status == 403:
            return HubError("the token may not do this (403): it needs write access to that repo")
        if status is not None and status >= 500:
            return HubError(
                f"the Hub failed ({status}) after retries; try again later (published versions are never half-made)"
            )
        return HubError(f"the Hub answered {status}: {first_line(exc)}")
    transport = tuple(m.TransportError for m in map(sys.modules.get, ("httpx2", "httpx")) if m is not None)
    if transport and isinstance(exc, transport):  # huggingface_hub 2.x speaks httpx2
        return HubError(
            f"cannot reach the Hub ({type(exc).__name__}: {first_line(exc)}); check the network or HF_ENDPOINT"
        )
    return None
