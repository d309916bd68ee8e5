"""Walking a model: the graph modules in it (the top graph, loop bodies, branches) and its attributes."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx


def graph_modules(root: torch.fx.GraphModule) -> list[tuple[str, torch.fx.GraphModule]]:
    """The graph module and every graph module nested in it, by qualified name (``""`` for root).

    The order and the names are ``named_modules()``'s (each module once, under
    the first name a depth-first walk meets). The engine asks several times
    per stage, so the walk is a plain loop rather than nested generators, and
    it does not descend into leaves that are not graph modules (a prepared
    model's hundreds of observers).
    """
    found: list[tuple[str, torch.fx.GraphModule]] = []
    seen: set[int] = set()
    stack: list[tuple[str, torch.nn.Module]] = [("", root)]
    while stack:
        path, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, torch.fx.GraphModule):
            found.append((path, module))
        children = module._modules
        if children:
            prefix = path + "." if path else ""
            stack.extend(
                (prefix + name, child)
                for name, child in reversed(children.items())
                if child is not None and (child._modules or isinstance(child, torch.fx.GraphModule))
            )
    return found


_NO_DEFAULT: Any = object()
_ABSENT: Any = object()


def attribute(owner: Any, name: str, default: Any = _NO_DEFAULT) -> Any:
    """``getattr(owner, name[, default])``, reading a module's tables first (its ``__getattr__`` is slow).

    A module cannot register a parameter, buffer or submodule under a name its
    class already uses, so the tables answer as ``getattr`` would; a name in
    none of them, nor in the instance or its class, is missing without a trip
    through ``Module.__getattr__`` (which raises to say so) unless the class
    has a ``__getattr__`` of its own.
    """
    if isinstance(owner, torch.nn.Module):
        for table in (owner._parameters, owner._buffers, owner._modules):
            if name in table:
                return table[name]
        kind = type(owner)
        if (
            kind.__getattr__ is torch.nn.Module.__getattr__
            and name not in vars(owner)
            and not hasattr(kind, name)
        ):
            if default is _NO_DEFAULT:
                raise AttributeError(f"{kind.__name__!r} object has no attribute {name!r}")
            return default
    if default is _NO_DEFAULT:
        return getattr(owner, name)
    return getattr(owner, name, default)


def has_attribute(owner: Any, name: str) -> bool:
    """``hasattr(owner, name)``, the way :func:`attribute` reads."""
    return attribute(owner, name, _ABSENT) is not _ABSENT
