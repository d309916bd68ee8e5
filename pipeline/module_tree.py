"""The graph modules of a model: the top graph and the graphs nested in it (loop bodies, branches)."""

from __future__ import annotations

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
