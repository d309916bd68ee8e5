"""Giving every annotated consumer of a shared dequantize node a copy of its own.

A backend lowers each quantized pattern (``dq -> op -> q``) on its own; a
dequantize node feeding two annotated ops would tie the two patterns together.
So, as torchao's duplicate-dequantize pass does, every annotated user of a dequantize node
with several users is rewired to a fresh copy inserted right after the
original (so the copy for the last user comes first), unannotated users (the
graph output, an op the quantizer skipped) keep the original, and a final
dead-code elimination drops originals nobody uses any more. Users are taken in
users-dict order and size reads (``sym_size``/``sym_numel``) do not count.

The dynamic-quantization chain ``choose_qparams -> getitem -> quantize ->
dequantize`` is left shared, with torchao's exact rule (see
:func:`plugins.qdq_graph.is_dynamic_dequantize`).

Unlike torchao, ``torchao.dequantize_affine`` nodes (affine observers) are
duplicated too; torchao forgets them.
"""

from __future__ import annotations

import attrs
import torch
import torch.fx

from pipeline import Context, Stage, Violation, condition
from plugins import dead_code, ops
from plugins.annotation import is_annotated
from plugins.qdq_graph import is_dynamic_dequantize, value_users
from plugins.subgraphs import quantizable_graph_modules

DUPLICATED_OPS: frozenset[object] = frozenset(
    {
        ops.DEQUANTIZE_PER_TENSOR,
        ops.DEQUANTIZE_PER_TENSOR_TENSOR,
        ops.DEQUANTIZE_PER_CHANNEL,
        ops.DEQUANTIZE_AFFINE,
        ops.DEQUANTIZE_AFFINE.default,
    }
)
"""The dequantize ops this stage duplicates: torchao's three, plus the affine one."""


@attrs.frozen
class DuplicateDequantize(Stage):
    """Gives every annotated consumer of a shared dequantize node its own copy."""

    name: str = "duplicate-dq"
    phase: str = "convert"
    requires: tuple[str, ...] = ("quantized",)
    ensures: tuple[str, ...] = ("dq-duplicated",)

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.graph_module is None:
            return None
        for _, module in quantizable_graph_modules(ctx.graph_module):
            shared = any(len(node.users) > 1 for node in _dequantize_nodes(module.graph))
            if shared or dead_code.has_dead_code(module.graph):
                return None
        return "no dequantize node has more than one user, and no node is unused"

    def run(self, ctx: Context) -> bool:
        changed = False
        for _, module in quantizable_graph_modules(ctx.graph_module):
            changed |= duplicate_dequantize_nodes(module.graph, ctx)
        return changed


def duplicate_dequantize_nodes(graph: torch.fx.Graph, ctx: Context) -> bool:
    """Duplicate the shared dequantize nodes of one graph; whether the graph changed."""
    copies = 0
    for node in graph.nodes:
        if not ops.is_call(node, DUPLICATED_OPS):
            continue
        users = value_users(node)
        if len(users) <= 1 or is_dynamic_dequantize(node):
            continue
        for user in users:
            if is_annotated(user):
                _give_copy(graph, node, user, ctx)
                copies += 1
    removed = dead_code.eliminate_dead_code(graph)
    return bool(copies) or removed


def _dequantize_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """The graph's dequantize nodes of the ops this stage duplicates, in no particular order."""
    return [
        node
        for target in DUPLICATED_OPS
        for node in graph.find_nodes(op="call_function", target=target, sort=False)
    ]


def _give_copy(graph: torch.fx.Graph, dequantize: torch.fx.Node, user: torch.fx.Node, ctx: Context) -> None:
    with graph.inserting_after(dequantize), ctx.origin(dequantize, user=user.name):
        copy = graph.node_copy(dequantize)

    def swap(argument: torch.fx.Node) -> torch.fx.Node:
        return copy if argument is dequantize else argument

    user.args = torch.fx.node.map_arg(user.args, swap)
    user.kwargs = torch.fx.node.map_arg(user.kwargs, swap)


@condition("dq-duplicated", "every dequantize node feeding an annotated node has that one user only")
def dq_duplicated(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found = []
    for path, module in quantizable_graph_modules(graph_module):
        for node in module.graph.nodes:
            if not ops.is_call(node, DUPLICATED_OPS) or is_dynamic_dequantize(node):
                continue
            users = value_users(node)
            annotated = [user.name for user in users if is_annotated(user)]
            if annotated and len(users) > 1:
                found.append(
                    Violation(
                        f"feeds annotated {', '.join(annotated)} but has {len(users)} users "
                        f"({', '.join(user.name for user in users)}); each annotated consumer "
                        "needs a dequantize node of its own",
                        node=node,
                        graph=path,
                    )
                )
    return found
