"""The graph lint names every problem at its node, and agrees with FX's ``Graph.lint`` on what is wrong."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest
import torch
import torch.fx
from support.toyflow import ToyCapture, ToyPlugin, exported, small_net

from pipeline import Pipeline, Stage, StageFailedError
from pipeline.lint import lint_graph


def relu_of(graph_module: torch.fx.GraphModule) -> torch.fx.Node:
    return next(iter(graph_module.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)))


def move_relu_first(graph_module: torch.fx.GraphModule) -> None:
    next(iter(graph_module.graph.find_nodes(op="placeholder"))).prepend(relu_of(graph_module))


def use_a_foreign_node(graph_module: torch.fx.GraphModule) -> None:
    other = exported(*small_net())
    relu = relu_of(graph_module)
    relu.args = (relu_of(other), *relu.args[1:])


def point_get_attr_nowhere(graph_module: torch.fx.GraphModule) -> None:
    node = next(iter(graph_module.graph.find_nodes(op="get_attr")))
    node.target = f"{node.target}.nowhere"


def call_a_tensor_as_a_module(graph_module: torch.fx.GraphModule) -> None:
    node = next(iter(graph_module.graph.find_nodes(op="get_attr")))
    with graph_module.graph.inserting_after(node):
        called = graph_module.graph.create_node("call_module", node.target, (node,))
    called.name = "called"


def give_a_function_a_string(graph_module: torch.fx.GraphModule) -> None:
    relu_of(graph_module).target = "relu"


def reuse_a_name(graph_module: torch.fx.GraphModule) -> None:
    placeholder = next(iter(graph_module.graph.find_nodes(op="placeholder")))
    object.__setattr__(
        relu_of(graph_module), "name", placeholder.name
    )  # past the namespace, as a careless pass might


def insert_behind_the_table(graph_module: torch.fx.GraphModule) -> None:
    relu = relu_of(graph_module)
    stray = torch.fx.Node(
        graph_module.graph, "stray", "call_function", torch.ops.aten.relu.default, (relu,), {}
    )
    relu.append(stray)


def give_an_unknown_opcode(graph_module: torch.fx.GraphModule) -> None:
    object.__setattr__(relu_of(graph_module), "op", "call_everything")


BREAKAGES: dict[str, tuple[Callable[[torch.fx.GraphModule], None], str, str]] = {
    "out of order": (move_relu_first, "relu", "uses 'linear' before it is defined"),
    "foreign node": (use_a_foreign_node, "relu", "a node of another graph"),
    "missing attribute": (point_get_attr_nowhere, "", "there is no attribute 'nowhere'"),
    "module that is a tensor": (call_a_tensor_as_a_module, "called", "is not a module"),
    "uncallable target": (give_a_function_a_string, "relu", "which is not callable"),
    "reused name": (reuse_a_name, "x", "reuses the name 'x'"),
    "node behind the table": (insert_behind_the_table, "stray", "missing from its graph's node table"),
    "unknown opcode": (give_an_unknown_opcode, "relu", "unknown opcode 'call_everything'"),
}


def graph_with_a_weight() -> torch.fx.GraphModule:
    class WithWeight(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(torch.nn.functional.linear(x, self.weight))

    graph_module = exported(WithWeight(), (torch.randn(2, 8),))
    with graph_module.graph.inserting_before(relu_of(graph_module)):
        graph_module.graph.get_attr("weight")
    return graph_module


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_breakage_is_named_at_its_node_where_fx_lint_also_fails(breakage):
    breaks, node_name, message = BREAKAGES[breakage]
    graph_module = graph_with_a_weight()
    assert list(lint_graph(graph_module)) == []
    graph_module.graph.lint()
    breaks(graph_module)
    with pytest.raises((RuntimeError, ValueError)):
        graph_module.graph.lint()
    found = list(lint_graph(graph_module, "sub"))
    assert found, "the lint missed what FX's lint caught"
    assert any(message in violation.message for violation in found), [v.message for v in found]
    named = next(violation for violation in found if message in violation.message)
    assert named.graph == "sub"
    if node_name:
        assert named.node is not None and named.node.name == node_name


def test_every_problem_is_reported_not_only_the_first():
    graph_module = graph_with_a_weight()
    move_relu_first(graph_module)
    point_get_attr_nowhere(graph_module)
    messages = [violation.message for violation in lint_graph(graph_module)]
    assert any("before it is defined" in message for message in messages)
    assert any("no attribute 'nowhere'" in message for message in messages)


def test_a_stage_that_breaks_the_graph_fails_with_the_node_and_the_users_source_line():
    @attrs.frozen
    class PointsNowhere(Stage):
        """Re-targets a weight read at an attribute that does not exist."""

        name: str = "points-nowhere"
        requires: tuple[str, ...] = ("captured",)

        def run(self, ctx):
            next(iter(ctx.graph.find_nodes(op="get_attr"))).target = "nowhere.at.all"

    model, inputs = small_net()
    with pytest.raises(StageFailedError, match="broke the invariant 'graph-lint'") as caught:
        Pipeline(plugins=[ToyPlugin(stages=(ToyCapture(), PointsNowhere()))]).run(model, inputs, audit=[])
    assert "there is no attribute 'nowhere' of the graph module" in str(caught.value)
