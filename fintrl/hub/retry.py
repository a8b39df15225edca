"""Transient Hub failures (5xx answers, dropped or timed-out connections) retried with exponential backoff; 4xx answers
never are. huggingface_hub retries only its upload and download transfers, not commits, tags or repo calls."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from fintrl.errors import first_line

logger = logging.getLogger(__name__)

RETRY_ATTEMPTS = 4  # tries per Hub call, the first included
RETRY_BASE_DELAY = 1.0  # seconds before the second try; doubles each time (1, 2, 4): tests shrink it
RETRY_MAX_DELAY = 30.0


T = TypeVar("T")


def is_transient(exc: BaseException | None) -> bool:
    """A 5xx answer or a dropped / timed-out connection, also when huggingface_hub wrapped it (a download that could
    not reach the Hub raises LocalEntryNotFoundError *from* the original error). 4xx answers never are."""
    from huggingface_hub.errors import HfHubHTTPError

    transport = tuple(m.TransportError for m in map(sys.modules.get, ("httpx2", "httpx")) if m is not None)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
            return exc.response.status_code >= 500
        if transport and isinstance(exc, transport):
            return True
        exc = exc.__cause__
    return False


def reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"HTTP {response.status_code}"
    return f"{type(exc).__name__}: {first_line(exc)}"


def with_retries(fn: Callable[[], T], *, what: str, attempts: int | None = None, base_delay: float | None = None) -> T:
    """`fn()`, tried again after a transient Hub failure (see `is_transient`), waiting `base_delay` seconds (default
    `RETRY_BASE_DELAY`), then twice as long each time; the last failure, or any other error, propagates."""
    attempts = attempts or RETRY_ATTEMPTS
    delay = RETRY_BASE_DELAY if base_delay is None else base_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:
            if attempt >= attempts or not is_transient(err):
                raise
            logger.warning(
                "the Hub failed on %s (%s); try %d of %d in %.1fs", what, reason(err), attempt + 1, attempts, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)
    raise AssertionError("unreachable")
