"""The bad-input catalogue as a whole (`tests/cli/test_bad_*.py`): large, every probe distinct, every exit code
documented.
"""

from __future__ import annotations

import re

from tests.cli import (
    test_bad_command_line,
    test_bad_hub,
    test_bad_inputs,
    test_bad_recipes,
    test_bad_run_folders,
    test_bad_stored_runs,
)
from tests.helpers import ROOT


def test_the_catalogue_is_large_and_distinct() -> None:
    names = [
        probe.name
        for module in (
            test_bad_command_line,
            test_bad_inputs,
            test_bad_recipes,
            test_bad_run_folders,
            test_bad_stored_runs,
        )
        for probe in module.PROBES
    ]
    names += [probe.name for probe, _ in test_bad_hub.HUB_PROBES] + [p.name for p in test_bad_hub.OFFLINE_PROBES]
    assert len(names) >= 160 and len(set(names)) == len(names)


def test_exit_codes_are_documented() -> None:
    from fintrl.errors import EXIT_CODES

    manual = (ROOT / "docs" / "errors.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", manual, flags=re.M)}
    assert documented == set(EXIT_CODES), "docs/errors.md's exit-code table and fintrl.errors.EXIT_CODES differ"
