"""The tiny run, served once for all the serve tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fintrl.scoring.targets import resolve_target
from fintrl.serve.app import create_app
from tests.serve.helpers import running, wait_ready


@pytest.fixture(scope="package")
def served(tiny_run: Path) -> Iterator[tuple[str, object]]:
    """The run served as `fintrl serve` serves it (the model loads in the app's startup task)."""
    app = create_app(resolve_target(str(tiny_run)), max_batch_size=32, max_wait_ms=50)
    with running(app) as url:
        wait_ready(url)
        yield url, app.state.service
