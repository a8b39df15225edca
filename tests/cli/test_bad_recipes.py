"""Bad recipe files: unreadable, misspelt, out of range, or built to exhaust memory or escape the prompt."""

from __future__ import annotations

from tests.cli.bad_inputs import BILLION_LAUGHS, Probe, probe_test, tampered

P = Probe
PROBES: list[Probe] = [
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
        patch=lambda mp: mp.setattr("fintrl.model.loading.TEMPLATE_SECONDS", 3),
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
]

test_bad_input = probe_test(PROBES)
