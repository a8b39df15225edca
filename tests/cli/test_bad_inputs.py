"""Bad texts and data: eval and predict inputs, texts no tokenizer takes, and training data files."""

from __future__ import annotations

import json

from tests.cli.bad_inputs import GOOD_ROWS, Probe, csv, probe_test, ray_predict

P = Probe
PROBES: list[Probe] = [
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
        lambda c: ray_predict(c, c.file("t.txt", "x\n"), str(c.tmp / "o"), "--text-column", "body"),
        3,
        "no columns",
    ),
    P(
        "ray input of another kind",
        lambda c: ray_predict(c, c.file("t.md", "x\n"), str(c.tmp / "o")),
        3,
        "give a .txt",
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

test_bad_input = probe_test(PROBES)
