"""YAML read safely and within bounds: recipes, overrides and run folders' recipe.yaml.

Safe loading only (no ``!!python/`` tags), and a document is measured before
PyYAML builds it: a YAML bomb (aliases that expand exponentially) or nesting
deep enough to exhaust the parser's recursion is refused in one line.
"""

from __future__ import annotations

from typing import Any

import yaml

from nlpkit.errors import NlpkitError

__all__ = ["load_yaml", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES"]

# Recipes are small: a few levels of sections, a few hundred values.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000


def _line(event: yaml.Event) -> str:
    """``line N: `` of where an event starts (the parser always marks it)."""
    mark = event.start_mark
    return f"line {mark.line + 1}: " if mark is not None else ""


def _check_yaml_size(text: str, source: str) -> None:
    """Walk the YAML events once: nesting depth, and nodes counted as their aliases expand them."""
    if len(text) > MAX_YAML_BYTES:
        raise NlpkitError(f"{source}: {len(text)} characters; a recipe is at most {MAX_YAML_BYTES} (1 MiB)")
    sizes: dict[str | None, int] = {}  # anchor -> nodes it expands to (an alias's anchor is typed optional)
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, node count when it opened)
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            total += 1
            open_nodes.append((event.anchor, total))
            if len(open_nodes) > MAX_YAML_DEPTH:
                raise NlpkitError(f"{source}: {_line(event)}nested more than {MAX_YAML_DEPTH} "
                                  f"levels deep; a recipe is a few levels of sections")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, opened = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = total - opened + 1
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            total += sizes.get(event.anchor, 1)
        if total > MAX_YAML_NODES:
            raise NlpkitError(f"{source}: {_line(event)}more than {MAX_YAML_NODES} values once "
                              f"its aliases are expanded; a recipe this large is refused")


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text with safe loading only, within the bounds above.

    Args:
        text: the YAML document.
        source: names it in messages (a file, an override).

    Raises:
        NlpkitError: invalid YAML, a Python tag, a document too large or deep (one line, with the line number).
    """
    try:
        _check_yaml_size(text, source)
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise NlpkitError(
            f"{source}: {line}{error.problem}; recipes name things by registry name and cannot hold Python tags"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise NlpkitError(f"{source}: {line}invalid YAML: {problem}") from None
