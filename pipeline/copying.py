"""The pipeline's private copy of a caller's graph module.

Stages rewrite graphs freely, so they must never see the caller's own: the
engine hands them a copy whose modules, graphs, nodes and metadata containers
are its own while every tensor stays shared, so a model's memory is never
doubled. A stage that changes a weight therefore builds a new tensor (the
engine detects in-place writes to the caller's tensors through their version
counters, see :mod:`pipeline.protection`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.fx

from pipeline.relink import relink

_SHARED_ATTRIBUTES = ("shape_env", "range_constraints", "_in_spec", "_out_spec")

GM = TypeVar("GM", bound=torch.fx.GraphModule)


def shared_objects(graph_module: torch.nn.Module) -> dict[int, Any]:
    """The objects a private copy shares with ``graph_module``, keyed by ``id`` as deepcopy's memo."""
    memo: dict[int, Any] = {}
    for module in graph_module.modules():
        for value in (*module._parameters.values(), *module._buffers.values()):
            if value is not None:
                memo[id(value)] = value
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) or name in _SHARED_ATTRIBUTES:
                memo[id(value)] = value
    return memo


def private_copy(graph_module: GM, node_keys: Iterable[str] = ()) -> GM:
    """A copy of ``graph_module`` that stages may rewrite without touching the original.

    Modules, graphs, nodes, ``node.meta`` dicts and the dicts and lists inside
    them are new, and every node's users keep their order (passes that walk
    users, such as implicit sharing, see what they would see in the original);
    tensors, code generators, input/output specs, the shape environment and
    the range constraints are the original objects. Metadata
    under ``node_keys`` refers to nodes and is re-pointed at the copy's nodes
    (see :mod:`pipeline.relink`).
    """
    memo = shared_objects(graph_module)
    keys = tuple(node_keys)
    for module in graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            memo[id(module.graph)] = _copy_graph(module.graph, keys)
    return copy.deepcopy(graph_module, memo)


def _copy_graph(graph: torch.fx.Graph, node_keys: tuple[str, ...]) -> torch.fx.Graph:
    duplicate = torch.fx.Graph(tracer_cls=graph._tracer_cls, tracer_extras=graph._tracer_extras)
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    result: Any = duplicate.graph_copy(graph, copies, return_output_node=True)
    if result is not None:
        value, old_output = result
        output = duplicate.output(value, type_expr=old_output.type)
        output.meta = copy.copy(old_output.meta)
        copies[old_output] = output
    for old, new in copies.items():
        if len(old.users) > 1:
            new.users = dict.fromkeys(copies[user] for user in old.users)
    duplicate._codegen = graph._codegen
    by_name = {node.name: node for node in duplicate.nodes}
    for node in duplicate.nodes:
        meta = node.meta
        for key, item in meta.items():
            if key in node_keys:
                meta[key] = relink(item, copies, by_name)
            elif type(item) in (dict, list):
                meta[key] = copy.copy(item)
    return duplicate
