"""Reading and replacing the tensors a graph holds as module attributes.

Folding passes compute new weights from the ones a ``get_attr`` node reads.
They never write into a tensor (the caller's model may share it): they point
the attribute at a new tensor of the same kind, or add a new attribute under a
name nothing uses yet.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx


class NotAnAttribute(ValueError):
    """A node that was expected to read a module attribute does not; the message says what it is."""


def read_attribute(graph_module: torch.fx.GraphModule, node: object, what: str) -> torch.Tensor | None:
    """The tensor ``node`` reads (``None`` for a missing optional argument).

    Raises :class:`NotAnAttribute` saying what ``node`` is instead, with
    ``what`` ("the conv weight") as the subject of the message.
    """
    if node is None:
        return None
    if not isinstance(node, torch.fx.Node):
        raise NotAnAttribute(f"{what} is the constant {node!r}, not a module attribute")
    if node.op == "placeholder":
        raise NotAnAttribute(
            f"{what} is the graph input {node.name!r}, not a module attribute, so it is only "
            "known at run time (in a loop body, weights arrive as inputs; for an ExportedProgram, "
            "pass exported.module())"
        )
    if node.op != "get_attr":
        raise NotAnAttribute(
            f"{what} is computed by node {node.name!r} ({node.op} {node.target}), "
            "not read from a module attribute"
        )
    value: Any = graph_module
    for atom in str(node.target).split("."):
        if not hasattr(value, atom):
            raise NotAnAttribute(f"{what} reads attribute {node.target!r}, which the module does not have")
        value = getattr(value, atom)
    if not isinstance(value, torch.Tensor):
        raise NotAnAttribute(f"{what} attribute {node.target!r} is a {type(value).__name__}, not a tensor")
    return value


def owner(graph_module: torch.fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    """The module holding the dotted attribute ``target``, and the attribute's own name."""
    prefix, _, field = target.rpartition(".")
    return (graph_module.get_submodule(prefix) if prefix else graph_module), field


def replace_attribute(graph_module: torch.fx.GraphModule, target: str, value: torch.nn.Parameter) -> None:
    """Point ``target`` at a new tensor of the same kind (parameter, buffer or plain attribute)."""
    module, field = owner(graph_module, target)
    if field in module._parameters:
        module.register_parameter(field, value)
    elif field in module._buffers:
        persistent = field not in module._non_persistent_buffers_set
        module.register_buffer(field, value.detach(), persistent=persistent)
    else:
        setattr(module, field, value.detach())


def new_parameter(graph_module: torch.fx.GraphModule, target: str, value: torch.nn.Parameter) -> None:
    """Register ``value`` as the parameter ``target`` (a name from :func:`free_attribute`)."""
    module, field = owner(graph_module, target)
    module.register_parameter(field, value)


def free_attribute(graph_module: torch.fx.GraphModule, target: str) -> str:
    """``target``, or ``target_<n>`` with the smallest ``n`` that names nothing yet."""
    module, field = owner(graph_module, target)
    candidate, number = field, 0
    while hasattr(module, candidate):
        number += 1
        candidate = f"{field}_{number}"
    return target[: len(target) - len(field)] + candidate


def attribute_reads(graph: torch.fx.Graph) -> Counter[str]:
    """How many reads each attribute has, over all its ``get_attr`` nodes."""
    reads: Counter[str] = Counter()
    for node in graph.find_nodes(op="get_attr", sort=False):
        reads[str(node.target)] += len(node.users)
    return reads
