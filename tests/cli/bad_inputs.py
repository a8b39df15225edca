"""The catalogue of bad inputs and faults, as a user (or an attacker) meets them through the CLI.

Every probe asserts three things: the exit code (see `fintrl.errors.EXIT_CODES`), exactly one `fintrl: error:` line
that names the problem (no traceback), and that nothing which existed before was changed (the finished run folder and
the probe's own files are hashed before and after). The probes live in `tests/cli/test_bad_*.py`, one file per
concern; this module holds what they share.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fintrl.cli.main import main
from tests.helpers import tiny_recipe_dict, tree_hash


@dataclass
class Ctx:
    tmp: Path
    run: Path

    def recipe(self, patch: dict | None = None, text: str | None = None, name: str = "r.yaml", **top) -> str:
        """A tiny recipe file (deep-merged with `patch`), or a file holding `text` as is."""
        path = self.tmp / name
        if text is not None:
            path.write_bytes(text.encode("latin-1") if isinstance(text, str) and "\\x" in text else text.encode())
            return str(path)
        raw = tiny_recipe_dict(self.tmp / "out")
        raw["train"] |= {"max_steps": 2}
        raw["eval"]["baselines"] = False
        for section, values in (patch or {}).items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section] = {**raw[section], **values}
            else:
                raw[section] = values
        raw |= top
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def file(self, name: str, data: bytes | str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    def data_recipe(self, files: dict[str, bytes | str], **data) -> str:
        folder = self.tmp / "data"
        for name, content in files.items():
            self.file(f"data/{name}", content)
        return self.recipe(
            {
                "data": {
                    "preset": None,
                    "path": str(folder),
                    "labels": ["negative", "neutral", "positive"],
                    "max_train_samples": None,
                    "max_eval_samples": None,
                    **data,
                }
            }
        )


@dataclass
class Probe:
    name: str
    argv: Callable[[Ctx], list[str]]
    code: int
    message: str  # a regex the one error line must match
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def check(probe: Probe, ctx: Ctx, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit code, exactly one error line matching the probe, no traceback, and nothing that existed changed."""
    argv = probe.argv(ctx)
    before = tree_hash(ctx.run), tree_hash(ctx.tmp)
    if probe.patch:
        probe.patch(monkeypatch)
    code = main(argv)  # argparse's own usage errors too: exit 2, one line
    err = capsys.readouterr().err
    assert code == probe.code, err
    lines = [line for line in err.splitlines() if line.startswith(("fintrl: error:", "fintrl: interrupted"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(probe.message, lines[0]), lines[0]
    assert tree_hash(ctx.run) == before[0], "the finished run changed"
    after = tree_hash(ctx.tmp)
    assert {k: v for k, v in after.items() if k in before[1]} == before[1], "a file that existed was changed"


def probe_test(probes: list[Probe]) -> Callable[..., None]:
    """The test that runs each of `probes` against the finished run; a catalogue file binds it to a `test_` name."""

    @pytest.mark.parametrize("probe", probes, ids=[p.name for p in probes])
    def test(
        probe: Probe,
        finished: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        check(probe, Ctx(tmp_path, finished), monkeypatch, capsys)

    return test


def csv(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    return header + "\n" + "".join(f"{t},{y}\n" for t, y in rows)


GOOD_ROWS = [
    (f"Sentence number {i} about {w}", w2)
    for i, (w, w2) in enumerate([("profit", "positive"), ("loss", "negative"), ("report", "neutral")] * 6)
]


def tampered(ctx: Ctx, name: str, change: Callable[[str], str] | str, *, drop: tuple[str, ...] = ()) -> str:
    """A copy of the finished run (as a download would be) whose file `name` is changed, or holds `change`."""
    copy = ctx.tmp / "copy"
    if not copy.exists():
        shutil.copytree(ctx.run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    path = copy / name
    path.write_text(change(path.read_text()) if callable(change) else change)
    for other in drop:
        (copy / other).unlink()
    return str(copy)


def with_fields(**fields: object) -> Callable[[str], str]:
    """A change for `tampered`: the JSON file with `fields` set."""
    return lambda text: json.dumps(json.loads(text) | fields)


BILLION_LAUGHS = (
    "model: {name_or_path: tiny-mistral}\ndata: {preset: quickstart}\njunk:\n  l0: &l0 [lol, lol, lol]\n"
    + "".join(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
)


def ray_input(ctx: Ctx) -> str:
    return ctx.file("in/texts.csv", "text\nProfit rose.\nSales fell.\n")


def ray_predict(ctx: Ctx, input_path: str, output: str, *options: str) -> list[str]:
    """`fintrl predict RUN --engine ray --input INPUT --output OUTPUT [options]` on the finished run."""
    return ["predict", str(ctx.run), "--engine", "ray", "--input", input_path, "--output", output, *options]
