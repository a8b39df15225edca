"""Hub ids: what is one (syntax only, never the network), and the one line that says why a string is not.

Every check of a repo, model or dataset id goes through here: the recipe's checks (`fintrl validate`), publishing,
and resolving a target or a comparison side. The rules are huggingface_hub's own (`validate_repo_id`).
"""

from __future__ import annotations

from pathlib import Path

from fintrl.errors import HubError


def is_hub_id(name: object) -> bool:
    """`org/name` that is not a path on this machine (absolute, relative, `~` or existing)."""
    return (
        isinstance(name, str)
        and name.count("/") == 1
        and not name.startswith(("/", ".", "~"))
        and not Path(name).expanduser().exists()
    )


def _validation_error(value: str) -> str | None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return " ".join(str(err).split())
    return None


def hub_id_problem(value: str, kind: str, namespace: bool) -> str | None:
    """Why `value` is not a Hub id of `kind` (e.g. "Hub dataset id"), or None; `namespace`: it must be org/name."""
    why = _validation_error(value)
    if why:
        return f"{value!r} is not a {kind} ({why})"
    if namespace and "/" not in value:
        return f"{value!r} is not a {kind}: write it as org/name"
    return None


def check_repo_id(repo_id: str) -> str:
    """`namespace/name` as the Hub spells it, checked before any request; a HubError with the rules otherwise."""
    shown = repr(repo_id if not isinstance(repo_id, str) or len(repo_id) <= 60 else repo_id[:57] + "...")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubError(f"invalid repo id {shown}: use namespace/name, e.g. my-org/fin-sentiment")
    if _validation_error(repo_id):
        raise HubError(
            f"invalid repo id {shown}: namespace and name use letters, digits, '-', '_' and '.', neither "
            "starts nor ends with '-' or '.', no '--' or '..', at most 96 characters in all"
        )
    return repo_id
