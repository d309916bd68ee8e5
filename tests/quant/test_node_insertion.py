"""insert_node makes the node Graph.create_node makes: name, place, wiring, hooks, tables."""

from __future__ import annotations

import torch
import torch.fx

from plugins import ops
from plugins.node_insertion import insert_node


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def _exported() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    return torch.export.export(_Small(), (torch.randn(2, 4),)).module()


def _build(make: object) -> tuple[torch.fx.GraphModule, list[str]]:
    """Insert a quantize/dequantize pair and a get_attr before the relu, the way ``make`` creates nodes."""
    graph_module = _exported()
    graph = graph_module.graph
    seen: list[str] = []
    graph_module._register_create_node_hook(lambda node: seen.append(f"{node.name}{node.args}"))
    relu = next(node for node in graph.nodes if node.target == torch.ops.aten.relu.default)
    source = relu.args[0]
    with graph.inserting_before(relu):
        quantized = make(
            graph, "call_function", ops.QUANTIZE_PER_TENSOR, (source, 0.5, 3, -128, 127, torch.int8)
        )  # type: ignore[operator]
        dequantized = make(  # type: ignore[operator]
            graph,
            "call_function",
            ops.DEQUANTIZE_PER_TENSOR,
            (quantized, 0.5, 3, -128, 127, torch.int8),
            {"out_dtype": torch.float32},
        )
        make(graph, "get_attr", "linear.weight")  # type: ignore[operator]
    relu.replace_input_with(source, dequantized)
    return graph_module, seen


def _create_node(
    graph: torch.fx.Graph, op: str, target: object, args: tuple = (), kwargs: dict | None = None
):  # type: ignore[no-untyped-def,type-arg]
    return graph.create_node(op, target, args, kwargs)


def test_the_graph_is_the_one_create_node_builds() -> None:
    ours, our_hooks = _build(insert_node)
    theirs, their_hooks = _build(_create_node)
    assert ours.graph.python_code("self").src == theirs.graph.python_code("self").src
    assert our_hooks == their_hooks
    assert len(ours.graph.nodes) == len(theirs.graph.nodes) == len(list(ours.graph.nodes))
    ours.graph.lint()
    quantize = ours.graph.find_nodes(op="call_function", target=ops.QUANTIZE_PER_TENSOR)
    assert [node.name for node in quantize] == ["quantize_per_tensor_default"]
    assert list(quantize[0].users) == ours.graph.find_nodes(
        op="call_function", target=ops.DEQUANTIZE_PER_TENSOR
    )
    ours.recompile()
    theirs.recompile()
    example = torch.randn(2, 4)
    assert torch.equal(ours(example), theirs(example))


def test_a_later_node_is_named_after_the_inserted_ones() -> None:
    graph_module, _ = _build(insert_node)
    graph = graph_module.graph
    with graph.inserting_before(graph.output_node()):
        again = graph.call_function(
            ops.QUANTIZE_PER_TENSOR, (graph.output_node().args[0][0], 0.5, 3, -128, 127, torch.int8)
        )
    assert again.name == "quantize_per_tensor_default_1"
