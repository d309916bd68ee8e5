"""Re-pointing node references held in metadata at the nodes of a copied graph.

Some metadata refers to other nodes: a quantization annotation is keyed by the
producer nodes it quantizes, and its specs name edges and nodes to share with.
A copy of a graph must re-point those references at its own nodes, or they go
on naming nodes of the original (the "stale keys" of a deep-copied prepared
model). References to nodes the copy does not know (a graph copied by
``copy.deepcopy`` before reaching the pipeline) are matched by name.

Containers and dataclass or attrs objects are rebuilt only where something
inside them changed, so metadata without node references is shared, not copied.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import attrs
import torch.fx


def relink(
    value: Any,
    copies: Mapping[torch.fx.Node, torch.fx.Node],
    by_name: Mapping[str, torch.fx.Node],
    relinked: dict[int, tuple[Any, Any]] | None = None,
) -> Any:
    """``value`` with every node it references replaced by its copy (or its namesake in the copy).

    ``relinked`` remembers, across the calls of one copy, what each container
    or object became: annotations share their specs, and an object reached
    twice becomes one object in the copy, as it was one in the original.
    """
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is torch.fx.Node or isinstance(value, torch.fx.Node):
        if value in copies:
            return copies[value]
        return by_name.get(value.name, value)
    if relinked is None:
        relinked = {}
    known = relinked.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    result = _relinked(value, copies, by_name, relinked)
    relinked[id(value)] = (value, result)
    return result


def _relinked(
    value: Any,
    copies: Mapping[torch.fx.Node, torch.fx.Node],
    by_name: Mapping[str, torch.fx.Node],
    relinked: dict[int, tuple[Any, Any]],
) -> Any:
    if isinstance(value, dict):
        items = [
            (relink(k, copies, by_name, relinked), relink(v, copies, by_name, relinked))
            for k, v in value.items()
        ]
        unchanged = all(
            new_key is old_key and new is old
            for (new_key, new), (old_key, old) in zip(items, value.items(), strict=True)
        )
        if unchanged:
            return value
        rebuilt = copy.copy(value)
        rebuilt.clear()
        rebuilt.update(items)
        return rebuilt
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [relink(item, copies, by_name, relinked) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    fields = _field_names(type(value))
    if not fields:
        return value
    changed = {}
    for name in fields:
        old = getattr(value, name)
        new = relink(old, copies, by_name, relinked)
        if new is not old:
            changed[name] = new
    if not changed:
        return value
    rebuilt = copy.copy(value)
    for name, new in changed.items():
        object.__setattr__(rebuilt, name, new)
    return rebuilt


_LEAVES = frozenset({str, int, float, bool, type(None), torch.dtype, torch.qscheme, torch.device})


_FIELDS_OF: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    """The fields of a dataclass or attrs class (none for anything else), worked out once per class."""
    names = _FIELDS_OF.get(kind)
    if names is None:
        if dataclasses.is_dataclass(kind):
            names = tuple(field.name for field in dataclasses.fields(kind))
        elif attrs.has(kind):
            names = tuple(field.name for field in attrs.fields(kind))
        else:
            names = ()
        _FIELDS_OF[kind] = names
    return names
