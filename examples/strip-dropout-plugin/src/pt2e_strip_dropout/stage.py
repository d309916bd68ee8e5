"""The strip-dropout stage and its condition."""

from __future__ import annotations

import attrs
import torch

from pipeline import Context, Stage, Violation, condition

DROPOUTS = (torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default)


def dropout_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [node for node in graph.nodes if node.op == "call_function" and node.target in DROPOUTS]


@condition("no-dropout", "no aten.dropout node remains in the graph")
def no_dropout(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph yet")]
    return [Violation("dropout remains", node=node) for node in dropout_nodes(graph_module.graph)]


@attrs.frozen
class StripDropout(Stage):
    """Removes dropout so that later stages see an inference graph."""

    name: str = "strip-dropout"
    requires: tuple[str, ...] = ("captured", "unannotated")
    ensures: tuple[str, ...] = ("no-dropout",)

    def run(self, ctx: Context) -> bool:
        found = dropout_nodes(ctx.graph)
        for node in found:
            node.replace_all_uses_with(node.args[0])
            ctx.graph.erase_node(node)
        return bool(found)
