"""MkDocs hook: docstring examples (`>>> ...` lines) rendered as Python console code blocks.

fintrl's docstrings are prose with doctest-style examples; plain Markdown reads `>>>` as three nested blockquotes.
This adds a Markdown preprocessor, shared by the pages and by mkdocstrings (which renders docstrings with the site's
Markdown extensions), that fences each run of `>>>` lines, and the output lines that follow them up to a blank line,
as ```pycon. Lines already inside a fenced block are left alone.
"""

from __future__ import annotations

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor

FENCE = re.compile(r"^\s*(```|~~~)")
PROMPT = re.compile(r"^(\s*)>>>( |$)")


class DoctestBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence: str | None = None
        i = 0
        while i < len(lines):
            line = lines[i]
            opened = FENCE.match(line)
            if fence is None and opened:
                fence = opened.group(1)
            elif fence is not None and line.strip().startswith(fence):
                fence = None
            elif fence is None and (prompt := PROMPT.match(line)):
                indent = prompt.group(1)
                block = []
                while i < len(lines) and lines[i].strip():
                    block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
                    i += 1
                out += ["", f"{indent}```pycon", *(f"{indent}{b}" for b in block), f"{indent}```", ""]
                continue
            out.append(line)
            i += 1
        return out


class DoctestBlocksExtension(Extension):
    def extendMarkdown(self, md) -> None:  # noqa: N802 (Python-Markdown's name)
        # Before the fenced-code preprocessors (priority 25), so that they render the fences made here.
        md.preprocessors.register(DoctestBlocks(md), "fintrl_doctest_blocks", 27)


def on_config(config):
    config.markdown_extensions.append(DoctestBlocksExtension())
    return config
