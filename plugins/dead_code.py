"""Dead code elimination that erases exactly what ``Graph.eliminate_dead_code()`` erases, faster.

torchao's passes end with FX's ``eliminate_dead_code()``, which lints the whole
graph and then asks every node, used or not, whether it is impure: on a graph
of a few hundred nodes that is most of what a small stage costs. A node is
erased when it has no users and is not impure, so asking only the nodes that
have no users erases the same nodes, in the same (reverse) order. The lint is
left to the pipeline's own checks after each stage. Nested graph modules read
by a ``get_attr`` are cleaned, as FX does, and recompiled when that changed them.
"""

from __future__ import annotations

import torch.fx
from torch._guards import TracingContext


def eliminate_dead_code(graph: torch.fx.Graph) -> bool:
    """Erase every unused, pure node of ``graph`` and of its nested graphs; whether any was erased."""
    changed = erase_unused(graph)
    return _clean_nested_graphs(graph) or changed


def has_dead_code(graph: torch.fx.Graph) -> bool:
    """Whether :func:`eliminate_dead_code` would erase anything from ``graph`` or its nested graphs."""
    impure_random = _random_ops_are_impure()
    if any(_is_dead(node, impure_random) for node in graph.nodes):
        return True
    return any(has_dead_code(child.graph) for child in _nested_graph_modules(graph))


def erase_unused(graph: torch.fx.Graph) -> bool:
    """Erase the unused, pure nodes of ``graph`` alone (last first); whether any was erased."""
    impure_random = _random_ops_are_impure()
    changed = False
    for node in reversed(graph.nodes):
        if _is_dead(node, impure_random):
            graph.erase_node(node)
            changed = True
    return changed


def _is_dead(node: torch.fx.Node, impure_random: bool) -> bool:
    return not node.users and not node.is_impure(impure_random)


def _random_ops_are_impure() -> bool:
    """FX's rule: random ops are impure, unless a compile in progress says otherwise."""
    if TracingContext.try_get() is None:
        return True
    from torch._inductor import config

    return bool(config.fallback_random)


def _clean_nested_graphs(graph: torch.fx.Graph) -> bool:
    changed = False
    for child in _nested_graph_modules(graph):
        if eliminate_dead_code(child.graph):
            child.recompile()
            changed = True
    return changed


def _nested_graph_modules(graph: torch.fx.Graph) -> list[torch.fx.GraphModule]:
    """The graph modules ``graph`` reads with a ``get_attr``: the ones FX cleans with it."""
    owner = graph.owning_module
    if owner is None:
        return []
    read = {node.target for node in graph.find_nodes(op="get_attr")}
    return [
        child
        for name, child in owner.named_children()
        if name in read and isinstance(child, torch.fx.GraphModule)
    ]
