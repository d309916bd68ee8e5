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
from typing import Any, TypeVar

import torch
import torch.fx

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


def private_copy(graph_module: GM) -> GM:
    """A copy of ``graph_module`` that stages may rewrite without touching the original.

    Modules, graphs, nodes, ``node.meta`` dicts and the dicts and lists inside
    them are new; tensors, code generators, input/output specs, the shape
    environment and the range constraints are the original objects.
    """
    memo = shared_objects(graph_module)
    for module in graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            memo[id(module.graph)] = _copy_graph(module.graph)
    return copy.deepcopy(graph_module, memo)


def _copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    duplicate = torch.fx.Graph(tracer_cls=graph._tracer_cls, tracer_extras=graph._tracer_extras)
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    result: Any = duplicate.graph_copy(graph, copies, return_output_node=True)
    if result is not None:
        value, old_output = result
        output = duplicate.output(value, type_expr=old_output.type)
        output.meta = copy.copy(old_output.meta)
    duplicate._codegen = graph._codegen
    for node in duplicate.nodes:
        meta = node.meta
        for key, item in meta.items():
            if type(item) in (dict, list):
                meta[key] = copy.copy(item)
    return duplicate
