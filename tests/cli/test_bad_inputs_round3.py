"""The catalogue, round 3: what a hostile run folder or downloaded repo holds, where outputs may land, inputs no
tokenizer takes, recipes built to exhaust memory, and serve's and Ray's own options. Each probe asserts what the
first catalogue's do (`tests/cli/test_bad_inputs.py`): the exit code, one `fintrl: error:` line and no traceback, and
that neither the finished run nor any file the probe made was changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fintrl.cli.main import main
from tests.cli.test_bad_inputs import Ctx, Probe, check
from tests.helpers import tree_hash

RUN_FILES = ("calibration.json", "prompt.json", "metrics.json", "predictions.jsonl", "recipe.yaml")


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


def calibration(**fields: object) -> Callable[[str], str]:
    return lambda text: json.dumps(json.loads(text) | fields)


def prompt(**fields: object) -> Callable[[str], str]:
    return lambda text: json.dumps(json.loads(text) | fields)


def first_prediction(**fields: object) -> Callable[[str], str]:
    def change(text: str) -> str:
        lines = text.splitlines()
        lines[0] = json.dumps(json.loads(lines[0]) | fields)
        return "\n".join(lines) + "\n"

    return change


BILLION_LAUGHS = (
    "model: {name_or_path: tiny-mistral}\ndata: {preset: quickstart}\njunk:\n  l0: &l0 [lol, lol, lol]\n"
    + "".join(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
)


def ray_input(ctx: Ctx) -> str:
    return ctx.file("in/texts.csv", "text\nProfit rose.\nSales fell.\n")


P = Probe
PROBES: list[Probe] = [
    # -- a run folder's calibration.json, as downloaded or hand-edited: exit 5, nothing scored ------------------------
    *(
        P(
            f"calibration temperature {value!r}",
            lambda c, v=value: ["eval", tampered(c, "calibration.json", calibration(temperature=v))],
            5,
            says,
        )
        for value, says in (
            (-1.0, "outside"),
            (0, "outside"),
            (1e9, "outside"),
            ("abc", "not a number"),
            (None, "not a number"),
        )
    ),
    P(
        "calibration NaN",
        lambda c: [
            "eval",
            tampered(c, "calibration.json", '{"temperature": NaN, "mode": "trie", "n": 1, "split": "x"}'),
        ],
        5,
        "not a number",
    ),
    P("calibration not JSON", lambda c: ["eval", tampered(c, "calibration.json", "{")], 5, "corrupt"),
    P(
        "calibration a list",
        lambda c: ["eval", tampered(c, "calibration.json", "[1, 2]")],
        5,
        "not a fintrl calibration",
    ),
    P(
        "calibration unknown mode",
        lambda c: ["predict", tampered(c, "calibration.json", calibration(mode="sideways")), "--text", "x"],
        5,
        "mode 'sideways'",
    ),
    P(
        "calibration unknown field",
        lambda c: ["predict", tampered(c, "calibration.json", calibration(shift=3)), "--text", "x"],
        5,
        "not a fintrl calibration",
    ),
    # -- the stored prompt: checked as strictly as a recipe's -------------------------------------------------------
    P(
        "prompt template reaches into the text",
        lambda c: [
            "predict",
            tampered(c, "prompt.json", prompt(template="{text.__class__} {instruction}")),
            "--text",
            "x",
        ],
        5,
        "unknown placeholder",
    ),
    P(
        "prompt template with a conversion",
        lambda c: ["eval", tampered(c, "prompt.json", prompt(template="{instruction} {text!r}"))],
        5,
        "unknown placeholder",
    ),
    P(
        "prompt template without the text",
        lambda c: ["eval", tampered(c, "prompt.json", prompt(template="{instruction}"))],
        5,
        "must contain the \\{text\\}",
    ),
    P(
        "prompt answers not distinct",
        lambda c: ["eval", tampered(c, "prompt.json", prompt(answers=["a", "a", "b"]))],
        5,
        "distinct",
    ),
    P(
        "prompt labels differ from the report",
        lambda c: ["eval", tampered(c, "prompt.json", prompt(labels=["x", "y", "z"]))],
        5,
        "differ from its report",
    ),
    P("prompt truncated", lambda c: ["eval", tampered(c, "prompt.json", lambda t: t[: len(t) // 2])], 5, "corrupt"),
    P(
        "prompt with an extra field",
        lambda c: ["eval", tampered(c, "prompt.json", prompt(run="rm -rf"))],
        5,
        "not a fintrl prompt record",
    ),
    P(
        "prompt system not a string",
        lambda c: ["eval", tampered(c, "prompt.json", prompt(system=["x"]))],
        5,
        "system must be a string",
    ),
    P(
        "prompt deeply nested",
        lambda c: ["eval", tampered(c, "prompt.json", "[" * 100000 + "]" * 100000)],
        5,
        "corrupt|nested",
    ),
    # -- the report and the recipe of a run folder ------------------------------------------------------------------
    P(
        "metrics truncated",
        lambda c: ["predict", tampered(c, "metrics.json", lambda t: t[:40]), "--text", "x"],
        5,
        "corrupt",
    ),
    P("metrics a list", lambda c: ["predict", tampered(c, "metrics.json", "[]"), "--text", "x"], 5, "data.labels"),
    P(
        "metrics without labels",
        lambda c: ["predict", tampered(c, "metrics.json", '{"data": {}}'), "--text", "x"],
        5,
        "data.labels",
    ),
    P(
        "metrics with duplicate labels",
        lambda c: ["eval", tampered(c, "metrics.json", '{"data": {"labels": ["a", "a"]}}')],
        5,
        "distinct",
    ),
    P(
        "metrics deeply nested",
        lambda c: ["card", tampered(c, "metrics.json", '{"a": ' * 50000 + "1" + "}" * 50000)],
        5,
        "corrupt|nested",
    ),
    P("run recipe billion laughs", lambda c: ["eval", tampered(c, "recipe.yaml", BILLION_LAUGHS)], 5, "aliases expand"),
    P(
        "run recipe nested deep",
        lambda c: ["eval", tampered(c, "recipe.yaml", "a: " + "[" * 3000 + "]" * 3000)],
        5,
        "nested",
    ),
    P(
        "run recipe unknown key",
        lambda c: ["eval", tampered(c, "recipe.yaml", lambda t: t + "\nexploit: 1\n")],
        5,
        "exploit",
    ),
    # -- predictions.jsonl as compare, audit and export read it -----------------------------------------------------
    P(
        "predictions empty",
        lambda c: ["audit", tampered(c, "predictions.jsonl", ""), "--split", "eval", "--output-dir", str(c.tmp / "a")],
        5,
        "holds no predictions",
    ),
    P(
        "predictions NaN",
        lambda c: [
            "audit",
            tampered(
                c,
                "predictions.jsonl",
                lambda t: t.replace('"probabilities": {"negative": ', '"probabilities": {"negative": NaN, "x": ', 1),
            ),
            "--split",
            "eval",
            "--output-dir",
            str(c.tmp / "a"),
        ],
        5,
        "line 1",
    ),
    P(
        "predictions truncated line",
        lambda c: [
            "audit",
            tampered(c, "predictions.jsonl", lambda t: t[:-30]),
            "--split",
            "eval",
            "--output-dir",
            str(c.tmp / "a"),
        ],
        5,
        "not a JSON object",
    ),
    P(
        "predictions unknown gold",
        lambda c: [
            "audit",
            tampered(c, "predictions.jsonl", first_prediction(gold="bullish")),
            "--split",
            "eval",
            "--output-dir",
            str(c.tmp / "a"),
        ],
        5,
        "gold label 'bullish'",
    ),
    P(
        "predictions not summing to one",
        lambda c: [
            "audit",
            tampered(
                c,
                "predictions.jsonl",
                first_prediction(probabilities={"negative": 0.9, "neutral": 0.9, "positive": 0.9}),
            ),
            "--split",
            "eval",
            "--output-dir",
            str(c.tmp / "a"),
        ],
        5,
        "sum to 1",
    ),
    P(
        "predictions another label set",
        lambda c: [
            "audit",
            tampered(c, "predictions.jsonl", first_prediction(probabilities={"up": 0.5, "down": 0.5})),
            "--split",
            "eval",
            "--output-dir",
            str(c.tmp / "a"),
        ],
        5,
        "labels",
    ),
    P(
        "predictions a string",
        lambda c: ["compare", tampered(c, "predictions.jsonl", '"text"\n'), str(c.run)],
        5,
        "not a JSON object",
    ),
    P(
        "predictions unknown prediction",
        lambda c: ["compare", str(c.run), tampered(c, "predictions.jsonl", first_prediction(prediction="maybe"))],
        5,
        "prediction 'maybe'",
    ),
    # -- adapter weights: safetensors only --------------------------------------------------------------------------
    P(
        "adapter only as a pickle",
        lambda c: [
            "predict",
            tampered(c, "adapter_model.bin", "pickle", drop=("adapter_model.safetensors",)),
            "--text",
            "x",
        ],
        4,
        "safetensors only",
    ),
    P(
        "adapter without weights",
        lambda c: ["eval", tampered(c, "README.md", "x", drop=("adapter_model.safetensors",))],
        4,
        "no adapter_model.safetensors",
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
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            ray_input(c),
            "--output",
            str(c.run / "shards"),
        ],
        5,
        "inside the run folder",
    ),
    P(
        "ray output is the input folder",
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            str(Path(ray_input(c)).parent),
            "--output",
            str(c.tmp / "in"),
        ],
        5,
        "overlaps",
    ),
    P(
        "ray output inside the input folder",
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            str(Path(ray_input(c)).parent),
            "--output",
            str(c.tmp / "in" / "out"),
        ],
        5,
        "overlaps",
    ),
    # -- texts no tokenizer takes; inputs as files of every kind ----------------------------------------------------
    P(
        "a text with a lone surrogate",
        lambda c: ["predict", str(c.run), "--text", "\ud800 x"],
        3,
        "not valid Unicode|surrogate",
    ),
    P(
        "stdin-like input with a lone surrogate",
        lambda c: ["predict", str(c.run), "--input", c.file("s.jsonl", '{"text": "\\ud800"}\n')],
        3,
        "not valid Unicode|surrogate",
    ),
    P("input is a folder", lambda c: ["predict", str(c.run), "--input", str(c.tmp)], 3, "is a folder"),
    P(
        "input CSV without the column",
        lambda c: ["predict", str(c.run), "--input", c.file("t.csv", "body\nx\n")],
        3,
        "has no column 'text'",
    ),
    P(
        "input parquet that is not",
        lambda c: ["predict", str(c.run), "--input", c.file("t.parquet", "not parquet")],
        3,
        "cannot read it as parquet",
    ),
    P(
        "input JSONL that is not",
        lambda c: ["predict", str(c.run), "--input", c.file("t.jsonl", "{not json\n")],
        3,
        "cannot read it as json",
    ),
    P(
        "ray txt with a column",
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            c.file("t.txt", "x\n"),
            "--output",
            str(c.tmp / "o"),
            "--text-column",
            "body",
        ],
        3,
        "no columns",
    ),
    P(
        "ray input of another kind",
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            c.file("t.md", "x\n"),
            "--output",
            str(c.tmp / "o"),
        ],
        3,
        "give a .txt",
    ),
    # -- recipes built to exhaust memory or escape the prompt -------------------------------------------------------
    P("recipe billion laughs", lambda c: ["validate", c.recipe(text=BILLION_LAUGHS)], 2, "aliases expand"),
    P(
        "recipe billion laughs under a known key",
        lambda c: ["validate", c.recipe(text=BILLION_LAUGHS.replace("junk:", "train:"))],
        2,
        "aliases expand",
    ),
    P(
        "recipe nested deep",
        lambda c: ["validate", c.recipe(text="model: " + "{a: " * 2000 + "1" + "}" * 2000)],
        2,
        "nested",
    ),
    P(
        "recipe template attribute",
        lambda c: ["validate", c.recipe({"prompt": {"template": "{instruction} {text} {text.__class__.__mro__}"}})],
        2,
        "unknown placeholder",
    ),
    P(
        "recipe template conversion",
        lambda c: ["validate", c.recipe({"prompt": {"template": "{instruction} {text} {text!s}"}})],
        2,
        "unknown placeholder",
    ),
    P(
        "recipe instruction format spec",
        lambda c: ["validate", c.recipe({"prompt": {"instruction": "{labels:>999999999}"}})],
        2,
        "unknown placeholder",
    ),
    P(
        "recipe template index",
        lambda c: ["validate", c.recipe({"prompt": {"template": "{instruction} {text} {text[0]}"}})],
        2,
        "unknown placeholder",
    ),
    P(
        "chat template that loops without end",
        lambda c: [
            "predict",
            tampered(
                c,
                "chat_template.jinja",
                "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
            ),
            "--text",
            "x",
        ],
        4,
        "loops without end",
        patch=lambda mp: mp.setattr("fintrl.model.loading.TEMPLATE_SECONDS", 3.0),
    ),
    P(
        "chat template reaching out of the sandbox",
        lambda c: [
            "predict",
            tampered(c, "chat_template.jinja", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
            "--text",
            "x",
        ],
        4,
        "Jinja template failed|chat template",
    ),
    # -- serve's own options ---------------------------------------------------------------------------------------
    P("serve with an empty key", lambda c: ["serve", str(c.run), "--api-key", ""], 2, "--api-key is empty"),
    P("serve with a blank key", lambda c: ["serve", str(c.run), "--api-key", "  "], 2, "--api-key is empty"),
    P(
        "serve with an empty key variable",
        lambda c: ["serve", str(c.run)],
        2,
        "FINTRL_API_KEY is empty",
        patch=lambda mp: mp.setenv("FINTRL_API_KEY", ""),
    ),
    P("serve on port 99999", lambda c: ["serve", str(c.run), "--port", "99999"], 2, "--port 99999"),
    P("serve on a negative port", lambda c: ["serve", str(c.run), "--port", "-1"], 2, "--port -1"),
    # -- Ray's cluster address -------------------------------------------------------------------------------------
    P(
        "ray address nothing answers",
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            ray_input(c),
            "--output",
            str(c.tmp / "o"),
            "--address",
            "127.0.0.1:1",
        ],
        2,
        "no Ray cluster answers",
    ),
    P(
        "ray address not host:port",
        lambda c: [
            "predict",
            str(c.run),
            "--engine",
            "ray",
            "--input",
            ray_input(c),
            "--output",
            str(c.tmp / "o"),
            "--address",
            "headnode",
        ],
        2,
        "host:port",
    ),
    # -- the Hub switched off ------------------------------------------------------------------------------------------
    P(
        "versions offline",
        lambda c: ["versions", "org/name"],
        6,
        "HF_HUB_OFFLINE|cannot reach",
        patch=lambda mp: mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True),
    ),
]


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_bad_input_round3(
    probe: Probe, finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check(probe, Ctx(tmp_path, finished), monkeypatch, capsys)


def test_round3_adds_sixty_distinct_probes() -> None:
    from tests.cli.test_bad_inputs import HUB_PROBES
    from tests.cli.test_bad_inputs import PROBES as EARLIER

    names = [p.name for p in PROBES]
    assert len(names) >= 60 and len(set(names)) == len(names)
    assert not set(names) & {p.name for p in (*EARLIER, *(p for p, _ in HUB_PROBES))}


def test_publish_never_follows_a_link_out_of_the_run(finished: Path, local_hub, tmp_path: Path, capsys) -> None:
    """A link in the run folder to a file outside it (a token, a key) is refused before anything is uploaded."""
    secret = tmp_path / "token"
    secret.write_text("hf_secret_token_value")
    run = Path(shutil.copytree(finished, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
    (run / "notes.txt").symlink_to(secret)
    before = tree_hash(run)
    assert main(["publish", str(run), "--repo", "fintrl-test/linked", "--base-model", "fintrl-test/tiny-mistral"]) == 5
    err = capsys.readouterr().err
    assert "notes.txt is a symbolic link" in err and "hf_secret" not in err
    assert tree_hash(run) == before
    repo = local_hub.repos.get(("model", "fintrl-test/linked"))
    assert repo is None or not repo.tags
