"""The layers a batch norm can be folded into, and how to read a batch norm's arguments.

Both batch-norm passes (PTQ's fold-bn, QAT's fuse-conv-bn and fold-conv-bn)
need the same vocabulary: which ATen ops are convolutions, transposed
convolutions or linears (every overload ``torch.export`` emits, so
``padding="same"`` convs are layers too), where a layer's output channels lie
in its weight, and a batch norm's arguments by name whatever way they were
passed.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.fx

_aten = torch.ops.aten

Kind = Literal["conv", "conv_transpose", "linear"]

CONV_TARGETS: frozenset[Any] = frozenset(
    {
        _aten.conv1d.default,
        _aten.conv1d.padding,
        _aten.conv2d.default,
        _aten.conv2d.padding,
        _aten.conv3d.default,
        _aten.conv3d.padding,
    }
)
CONV_TRANSPOSE_TARGETS: frozenset[Any] = frozenset(
    {
        _aten.conv_transpose1d,
        _aten.conv_transpose1d.default,
        _aten.conv_transpose2d,
        _aten.conv_transpose2d.input,
        _aten.conv_transpose3d,
        _aten.conv_transpose3d.input,
    }
)
LINEAR_TARGETS: frozenset[Any] = frozenset({_aten.linear.default})

BATCH_NORM = _aten.batch_norm.default
"""The batch norm ``torch.export`` emits, in train and eval mode alike."""

ANY_BATCH_NORM: tuple[Any, ...] = (
    BATCH_NORM,
    _aten._native_batch_norm_legit_no_training.default,
    _aten._native_batch_norm_legit.default,
    _aten.cudnn_batch_norm.default,
    _aten.miopen_batch_norm.default,
)
"""Every batch-norm op a graph may hold: the composite one and its decompositions."""

METADATA_READERS: frozenset[Any] = frozenset(
    {
        _aten.sym_size.int,
        _aten.sym_stride.int,
        _aten.sym_numel.default,
        _aten.sym_storage_offset.default,
        _aten._assert_tensor_metadata.default,
    }
)
"""Ops that read only a tensor's shape, dtype or device, which folding leaves as they were."""

_TRANSPOSE_GROUPS_INDEX = 6


def kind_of(node: object) -> Kind | None:
    """Whether ``node`` calls a conv, a transposed conv or a linear, and which."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    try:
        if node.target in CONV_TARGETS:
            return "conv"
        if node.target in CONV_TRANSPOSE_TARGETS:
            return "conv_transpose"
        if node.target in LINEAR_TARGETS:
            return "linear"
    except TypeError:
        return None
    return None


def transpose_groups(layer: torch.fx.Node) -> int:
    """The ``groups`` of a transposed conv (1 for any other layer)."""
    if kind_of(layer) != "conv_transpose":
        return 1
    groups = layer.args[_TRANSPOSE_GROUPS_INDEX] if len(layer.args) > _TRANSPOSE_GROUPS_INDEX else 1
    return int(layer.kwargs.get("groups", groups))


def find_batch_norms(graph: torch.fx.Graph, targets: tuple[Any, ...] = ANY_BATCH_NORM) -> list[torch.fx.Node]:
    """The batch-norm nodes of ``graph`` calling one of ``targets``, in graph order."""
    found = [
        node for target in targets for node in graph.find_nodes(op="call_function", target=target, sort=False)
    ]
    return sorted(found)


def batch_norm_arguments(node: torch.fx.Node) -> dict[str, Any]:
    """The batch norm's arguments by schema name, defaults filled in."""
    schema = node.target._schema.arguments  # type: ignore[union-attr]
    values: dict[str, Any] = {}
    for index, argument in enumerate(schema):
        if argument.name in node.kwargs:
            values[argument.name] = node.kwargs[argument.name]
        elif not argument.kwarg_only and index < len(node.args):
            values[argument.name] = node.args[index]
        else:
            values[argument.name] = argument.default_value
    return values


def other_readers(layer: torch.fx.Node, batch_norm: torch.fx.Node) -> list[str]:
    """Names of the nodes besides ``batch_norm`` reading ``layer``'s output (shape queries aside).

    Folding the batch norm into the layer changes that output, so each of
    them would read something else.
    """
    return [
        user.name
        for user in layer.users
        if user is not batch_norm and not (user.op == "call_function" and user.target in METADATA_READERS)
    ]
