"""Reading the YAML files users write (bench grids, MedVQA pipeline configs): ``yaml.SafeLoader`` only, so a file
can never run code, and aliases are counted before anything is built, so a few lines of nested aliases (a
"billion laughs" file) cannot expand into gigabytes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medvtab.errors import MedvtabError

MAX_NODES = 100_000  # a grid or pipeline config has hundreds of values; aliases may not blow it past this


def read_yaml(path: Path, option: str | None = None) -> Any:
    """The document in ``path`` (None for an empty file); every problem is a one-line :class:`MedvtabError` naming
    the file (and ``option``, the command-line option that named it, for a missing or unreadable one)."""
    path = Path(path)
    named = f"option '{option}': {path}" if option else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedvtabError(f"{named}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{named}: unreadable ({err})") from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            size = expanded_size(node)
            if size > MAX_NODES:
                raise MedvtabError(f"{path}: refused: its aliases expand to more than {MAX_NODES:,} values (a YAML "
                                   f"alias bomb?)")
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise MedvtabError(f"{path}: not valid YAML{at}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def expanded_size(node: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded, computed on the composed graph (where an
    alias is the anchored node itself) in time linear in its size; a recursive alias counts as too many."""
    sizes: dict[int, int] = {}
    stack = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        if id(current) in sizes and not children_done:
            continue
        children = _children(current)
        if children_done:
            sizes[id(current)] = min(MAX_NODES + 1, 1 + sum(sizes.get(id(c), MAX_NODES + 1) for c in children))
            continue
        sizes[id(current)] = MAX_NODES + 1  # provisional: a node reached again before it is done is a cycle
        stack.append((current, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
