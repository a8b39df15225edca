"""Reading a recipe's YAML: duplicate keys refused (PyYAML keeps the last one silently), `--set` overrides applied
with key paths, and exponent floats (1e-4, which YAML 1.1 reads as a string) made numbers."""

from __future__ import annotations

from typing import Any

import yaml

from fintrl.errors import RecipeError


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (["train", "learning_rate"], 0.0001); values are parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.learning_rate=1e-4")
    return key.split("."), yaml.safe_load(value) if value else None  # 1e-4 becomes a float in load_recipe


def looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_field(raw: dict[str, Any], dotted: str) -> Any:
    """The value at a key path (`lora.r`) of a dumped recipe, None where a part is absent: `--set`'s reading side."""
    node: Any = raw
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def apply_override(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set a nested value; integer parts index lists (`data.mixture.0.path`); the index just past the end appends."""
    node: Any = raw
    parent = "<recipe>"
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) > len(node):
                raise RecipeError(
                    f"--set {'.'.join(keys)}: `{parent}` is a list of {len(node)}; "
                    f"use an index 0..{len(node)} (the last one appends)"
                )
            index = int(k)
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
                return
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[k] = value
                return
            node = node.setdefault(k, {})
        else:
            raise RecipeError(f"--set {'.'.join(keys)}: `{parent}` is not a section")
        parent = k


def fix_yaml_floats(node: Any, _done: dict[int, Any] | None = None) -> Any:
    """Exponent floats made numbers. A node the YAML shares through an alias is fixed once and stays shared."""
    done = {} if _done is None else _done
    if id(node) in done:
        return done[id(node)]
    if isinstance(node, dict):
        out: Any = {}
        done[id(node)] = out
        out.update((k, fix_yaml_floats(v, done)) for k, v in node.items())
        return out
    if isinstance(node, list):
        out = []
        done[id(node)] = out
        out.extend(fix_yaml_floats(v, done) for v in node)
        return out
    if isinstance(node, str) and looks_numeric(node) and ("e" in node.lower()) and node.strip()[0] in "0123456789.-+":
        return float(node)
    return node


MAX_EXPANDED_NODES = 100_000  # a recipe is a few hundred; billion laughs is 10^9
MAX_DEPTH = 100


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last one), and a document whose
    aliases would expand it past MAX_EXPANDED_NODES nodes or nest it past MAX_DEPTH levels (checked on the composed
    graph, before anything is built or expanded)."""

    def construct_document(self, node: yaml.Node) -> Any:
        size = _expanded_size(node, {}, 0)
        if size > MAX_EXPANDED_NODES:
            raise RecipeError(
                f"its YAML aliases expand it to more than {MAX_EXPANDED_NODES} values (a recipe has a few hundred); "
                "write the values out"
            )
        problems: list[str] = []
        _duplicate_keys(node, "", problems, set())
        if problems:
            raise RecipeError("; ".join(problems))
        return super().construct_document(node)


def load_yaml(text: str) -> Any:
    """A recipe's YAML: `UniqueKeyLoader`'s checks, and nesting too deep for a parser a RecipeError, not a crash."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise RecipeError(f"nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of sections") from None


def _expanded_size(node: yaml.Node, sizes: dict[int, int], depth: int) -> int:
    """How many nodes `node` stands for once every alias is expanded (memoised: each shared node counted once)."""
    if depth > MAX_DEPTH:
        raise RecursionError
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a cycle (an alias to an ancestor) counts once instead of forever
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes, depth + 1) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, depth + 1) + _expanded_size(v, sizes, depth + 1) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_EXPANDED_NODES + 1)
    return sizes[id(node)]


def _duplicate_keys(node: yaml.Node, path: str, problems: list[str], seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias: checked where its anchor is
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}.{i}" if path else str(i), problems, seen_nodes)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges, and keys of its own override those legitimately
            key, line = key_node.value, key_node.start_mark.line + 1
            where = f"{path}.{key}" if path else key
            if key in lines:
                problems.append(f"{where}: duplicate key (lines {lines[key]} and {line}); keep one")
            else:
                lines[key] = line
            _duplicate_keys(value_node, where, problems, seen_nodes)
