"""A small flow of non-quantizing stages for testing the engine on real exported graphs.

``toy-capture`` exports the caller's model, ``toy-tag`` marks every call with a
``quantization_tag`` (standing in for annotation: it invalidates
``unannotated``), ``toy-clamp`` turns ``relu`` into ``hardtanh(0, 6)``. Their
conditions check real properties of the graph, so the tests can break them.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from pipeline import Condition, Context, MetaField, Stage, Violation, condition, hookimpl


@condition("captured", "the model is an exported ATen graph")
def captured(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("no graph has been captured")]
    return [
        Violation("not an ATen operator", node=node)
        for node in graph_module.graph.nodes
        if node.op == "call_function"
        and not isinstance(node.target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
        and node.target.__module__ != "_operator"
    ]


def _calls(graph_module: torch.fx.GraphModule | None) -> list[torch.fx.Node]:
    if graph_module is None:
        return []
    return [node for node in graph_module.graph.nodes if node.op == "call_function"]


@condition("unannotated", "no node carries a tag")
def unannotated(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    return [
        Violation("already tagged", node=node)
        for node in _calls(graph_module)
        if "quantization_tag" in node.meta
    ]


@condition("tagged", "every call is tagged")
def tagged(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    return [
        Violation("has no tag", node=node)
        for node in _calls(graph_module)
        if "quantization_tag" not in node.meta
    ]


@condition("no-relu", "relu has been clamped to hardtanh")
def no_relu(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    return [
        Violation("relu remains", node=node)
        for node in _calls(graph_module)
        if node.target == torch.ops.aten.relu.default
    ]


@attrs.frozen
class ToyCapture(Stage):
    """Exports the caller's model with torch.export."""

    name: str = "toy-capture"
    ensures: tuple[str, ...] = ("captured", "unannotated")
    required: bool = True

    def run(self, ctx: Context) -> None:
        if ctx.graph_module is not None:
            return
        model = ctx.inputs["model"]
        ctx.graph_module = torch.export.export(model, ctx.inputs["example_inputs"]).module()


@attrs.frozen
class ToyTag(Stage):
    """Tags every call."""

    name: str = "toy-tag"
    requires: tuple[str, ...] = ("captured",)
    ensures: tuple[str, ...] = ("tagged",)
    invalidates: tuple[str, ...] = ("unannotated",)
    tag: str = attrs.field(default="toy", validator=attrs.validators.instance_of(str))

    def run(self, ctx: Context) -> None:
        for node in _calls(ctx.graph_module):
            node.meta["quantization_tag"] = self.tag


@attrs.frozen
class ToyClamp(Stage):
    """Replaces relu by hardtanh(0, 6)."""

    name: str = "toy-clamp"
    phase: str = "convert"
    requires: tuple[str, ...] = ("tagged",)
    ensures: tuple[str, ...] = ("no-relu",)

    def run(self, ctx: Context) -> None:
        graph = ctx.graph
        for node in list(graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)):
            with graph.inserting_after(node), ctx.origin(node, reason="clamp"):
                clamp = graph.call_function(torch.ops.aten.hardtanh.default, (node.args[0], 0.0, 6.0))
            clamp.meta.update(node.meta)
            node.replace_all_uses_with(clamp)
            graph.erase_node(node)


TOY_CONDITIONS: tuple[Condition, ...] = (captured, unannotated, tagged, no_relu)
TAG_FIELD = MetaField("quantization_tag")


@attrs.frozen
class ToyPlugin:
    """A plugin object declaring the given stages (the toy flow by default) and conditions."""

    stages: Sequence[Stage] = (ToyCapture(), ToyTag(), ToyClamp())
    conditions: Sequence[Condition] = TOY_CONDITIONS

    @hookimpl
    def pt2e_pipeline_stages(self) -> Sequence[Stage]:
        return list(self.stages)

    @hookimpl
    def pt2e_pipeline_conditions(self) -> Sequence[Condition]:
        return list(self.conditions)

    @hookimpl
    def pt2e_pipeline_meta_fields(self) -> Sequence[MetaField]:
        return [TAG_FIELD]


class SmallNet(torch.nn.Module):
    """linear -> relu -> dropout -> linear, with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.drop = torch.nn.Dropout(0.25)
        self.second = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(x))
        return self.second(self.drop(hidden)) + x


def small_net() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return SmallNet().eval(), (torch.randn(2, 8),)


def exported(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    return torch.export.export(model, example_inputs).module()
