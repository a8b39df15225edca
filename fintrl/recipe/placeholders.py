"""The placeholders a prompt's strings may hold, and why a string is not a template over them: checked for recipes
(their sections' validators, `fintrl validate`) and for every prompt read back from a run folder or a download
(`fintrl.model.prompts.PromptBuilder.from_record`). `str.format` would otherwise reach into a value's attributes
(`{text.__class__}`), index it, or pad it to any width."""

from __future__ import annotations

import string

INSTRUCTION_FIELDS = ("task", "labels")
TEMPLATE_FIELDS = ("instruction", "text")


def placeholder_problems(key: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """Why `text` is not a template over exactly `allowed` plain placeholders: an unknown name, an attribute or index
    (`{text.__class__}`), a conversion or format spec, or unbalanced braces. Checked for recipes and for every
    prompt read back from a run folder or a downloaded repo alike."""
    names = " and ".join(f"{{{a}}}" for a in allowed)
    try:
        parsed = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        return [f"{key}: {err}; placeholders are {names}, a literal brace is written {{{{ or }}}}"]
    problems = []
    for field, conversion, spec in dict.fromkeys(parsed):
        shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if field not in allowed or conversion or spec:
            problems.append(
                f"{key}: unknown placeholder {shown}; use only {names} (a literal brace is written {{{{ or }}}})"
            )
    if "text" in allowed and "text" not in [f for f, _, _ in parsed]:
        problems.append(f'{key}: must contain the {{text}} placeholder; e.g. "{{instruction}}\\n\\n{{text}}"')
    return problems
