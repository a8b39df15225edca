"""What a hostile run folder or downloaded repo may hold: its calibration, stored prompt, report, recipe,
predictions and adapter weights, each checked before anything is scored.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.cli.bad_inputs import BILLION_LAUGHS, Probe, probe_test, tampered, with_fields


def first_prediction(**fields: object) -> Callable[[str], str]:
    def change(text: str) -> str:
        lines = text.splitlines()
        lines[0] = json.dumps(json.loads(lines[0]) | fields)
        return "\n".join(lines) + "\n"

    return change


P = Probe
PROBES: list[Probe] = [
    # -- a run folder's calibration.json, as downloaded or hand-edited: exit 5, nothing scored ------------------------
    *(
        P(
            f"calibration temperature {value!r}",
            lambda c, v=value: ["eval", tampered(c, "calibration.json", with_fields(temperature=v))],
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
        lambda c: ["predict", tampered(c, "calibration.json", with_fields(mode="sideways")), "--text", "x"],
        5,
        "mode 'sideways'",
    ),
    P(
        "calibration unknown field",
        lambda c: ["predict", tampered(c, "calibration.json", with_fields(shift=3)), "--text", "x"],
        5,
        "not a fintrl calibration",
    ),
    # -- the stored prompt: checked as strictly as a recipe's -------------------------------------------------------
    P(
        "prompt template reaches into the text",
        lambda c: [
            "predict",
            tampered(c, "prompt.json", with_fields(template="{text.__class__} {instruction}")),
            "--text",
            "x",
        ],
        5,
        "unknown placeholder",
    ),
    P(
        "prompt template with a conversion",
        lambda c: ["eval", tampered(c, "prompt.json", with_fields(template="{instruction} {text!r}"))],
        5,
        "unknown placeholder",
    ),
    P(
        "prompt template without the text",
        lambda c: ["eval", tampered(c, "prompt.json", with_fields(template="{instruction}"))],
        5,
        "must contain the \\{text\\}",
    ),
    P(
        "prompt answers not distinct",
        lambda c: ["eval", tampered(c, "prompt.json", with_fields(answers=["a", "a", "b"]))],
        5,
        "distinct",
    ),
    P(
        "prompt labels differ from the report",
        lambda c: ["eval", tampered(c, "prompt.json", with_fields(labels=["x", "y", "z"]))],
        5,
        "differ from its report",
    ),
    P("prompt truncated", lambda c: ["eval", tampered(c, "prompt.json", lambda t: t[: len(t) // 2])], 5, "corrupt"),
    P(
        "prompt with an extra field",
        lambda c: ["eval", tampered(c, "prompt.json", with_fields(run="rm -rf"))],
        5,
        "not a fintrl prompt record",
    ),
    P(
        "prompt system not a string",
        lambda c: ["eval", tampered(c, "prompt.json", with_fields(system=["x"]))],
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
]

test_bad_input = probe_test(PROBES)
