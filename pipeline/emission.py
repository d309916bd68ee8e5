"""Nodes whose Python code FX always generates, so that touching only them cannot break a graph's code.

After every stage that changed a graph, the engine must know that the graph
still generates Python code. Generating it costs time in proportion to the
whole graph, while a stage usually rewrites a few nodes. FX writes each node
as a statement of its own, from the node's op, target, name, type annotation
and arguments; a graph that generated code before the stage therefore still
does if every node the stage created or changed is one whose statement cannot
fail. This module says which are: a node named by an identifier (not a
keyword), without a type annotation, whose target is a torch operator, a
function of Python's ``operator`` module, or (for ``get_attr``,
``call_module``, ``placeholder``) a dotted path of such identifiers, and
whose arguments are nodes, numbers, strings, ``None``, dtypes, devices,
layouts and memory formats, nested in lists, tuples or dicts with string
keys. Any other node is checked by generating the code.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx
from torch.fx.immutable_collections import immutable_dict, immutable_list

_LEAVES = frozenset(
    {bool, int, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format}
)
_SEQUENCES = frozenset({list, tuple, immutable_list})
_MAPPINGS = frozenset({dict, immutable_dict})
_OPERATORS = (torch._ops.OpOverload, torch._ops.OpOverloadPacket)
_PATH_OPS = frozenset({"get_attr", "call_module", "placeholder"})


def always_emits(node: torch.fx.Node) -> bool:
    """Whether FX's code generation writes ``node`` without fail, whatever the rest of the graph."""
    if not _is_name(node.name) or node.type is not None:
        return False
    if node.op == "call_function":
        target_ok = isinstance(node.target, _OPERATORS) or _is_operator_function(node.target)
    elif node.op in _PATH_OPS:
        target_ok = isinstance(node.target, str) and all(map(_is_name, node.target.split(".")))
    elif node.op == "output":
        target_ok = True
    else:
        return False
    return target_ok and _plain(node.args) and _plain(node.kwargs)


def all_emit(nodes: Iterable[torch.fx.Node]) -> bool:
    """Whether every node of ``nodes`` :func:`always emits <always_emits>`."""
    return all(always_emits(node) for node in nodes)


def _is_name(part: str) -> bool:
    return part.isidentifier() and not keyword.iskeyword(part)


def _is_operator_function(target: Any) -> bool:
    return getattr(target, "__module__", None) == "_operator" and callable(target)


def _plain(value: Any) -> bool:
    """Exact types only: a subclass (an ``IntEnum``, a named tuple) may print as something else."""
    kind = type(value)
    if kind in _LEAVES or kind is torch.fx.Node:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind in _SEQUENCES:
        return all(_plain(item) for item in value)
    if kind in _MAPPINGS:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    return False
