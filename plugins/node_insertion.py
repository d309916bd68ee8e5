"""Inserting the nodes the stages make, as ``Graph.create_node`` does, without its argument scan.

``create_node`` walks every argument with pytree looking for raw symbolic
scalars, to warn about them; for a quantize node's six plain arguments that
walk is half of what creating the node costs, and prepare and convert create
one to three nodes per observer. The stages' arguments are nodes, Python
numbers and dtypes, never symbolic scalars, so they insert through here. The
node is named, announced to the module's create-node hooks (the audit trail's
among them) and placed exactly as ``create_node`` would.
"""

from __future__ import annotations

from typing import Any

import torch.fx
from torch.fx.immutable_collections import immutable_dict


def insert_node(
    graph: torch.fx.Graph,
    op: str,
    target: Any,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> torch.fx.Node:
    """``graph.create_node(op, target, args, kwargs)`` for arguments free of symbolic scalars."""
    namespace = graph._graph_namespace
    name = namespace.create_name(graph._target_to_str(target), None)
    node = torch.fx.Node(graph, name, op, target, args, kwargs or immutable_dict())
    owner = graph.owning_module
    hooks = getattr(owner, "_create_node_hooks", None) if owner is not None else None
    if hooks is not None:
        for hook in hooks:
            hook(node)
    namespace.associate_name_with_obj(name, node)
    graph._insert(node)
    graph._find_nodes_lookup_table.insert(node)
    graph._len += 1
    return node
