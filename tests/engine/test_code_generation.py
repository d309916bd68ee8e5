"""After every stage that changed a graph, the graph still compiles: proved from the touched nodes, or generated."""

from __future__ import annotations

import enum
import operator

import attrs
import pytest
import torch
from support.toyflow import ToyCapture, ToyPlugin, exported, small_net

from pipeline import Pipeline, Stage, StageFailedError, compilation
from pipeline.emission import always_emits
from pipeline.errors import PipelineError


class Mode(enum.IntEnum):
    FAST = 1


class Opaque:
    """An argument FX has no notation for: it writes its repr, which is not Python."""


def graph_with(*args: object, target: object = torch.ops.aten.add.Tensor) -> torch.fx.Node:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    node = graph.call_function(target, (x, *args))
    graph.output(node)
    return node


def test_an_exported_graph_is_all_nodes_that_always_emit():
    graph_module = exported(*small_net())
    assert all(always_emits(node) for node in graph_module.graph.nodes)


@pytest.mark.parametrize(
    "args",
    [(1,), (2.5,), ([1, 2], (3, 4)), (torch.float16, torch.device("cpu"), None, "mean", True)],
    ids=["int", "float", "sequences", "leaves"],
)
def test_plain_arguments_always_emit(args):
    assert always_emits(graph_with(*args))


@pytest.mark.parametrize(
    "args",
    [(Opaque(),), (Mode.FAST,), (float("inf"),), ({1: 2},), (torch.ones(1),)],
    ids=["opaque", "int-enum", "infinity", "int-key", "tensor"],
)
def test_other_arguments_are_left_to_code_generation(args):
    assert not always_emits(graph_with(*args))


def test_targets_and_annotations_outside_the_known_kinds_are_left_to_code_generation():
    assert always_emits(graph_with(0, target=operator.getitem))
    assert not always_emits(graph_with(target=torch.relu))
    annotated = graph_with(1)
    annotated.type = torch.Tensor
    assert not always_emits(annotated)
    graph = torch.fx.Graph()
    assert not always_emits(graph.get_attr("layer.class"))
    assert always_emits(graph.get_attr("layer.weight"))


@attrs.frozen
class AddsToEveryRelu(Stage):
    """Adds ``argument`` to the output of every relu."""

    name: str = "adds"
    requires: tuple[str, ...] = ("captured",)
    argument: object = 1.0

    def run(self, ctx):
        graph = ctx.graph
        for relu in list(graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)):
            users = list(relu.users)
            with graph.inserting_after(relu):
                added = graph.call_function(torch.ops.aten.add.Tensor, (relu, self.argument))
            for user in users:
                user.replace_input_with(relu, added)


def pipeline(*stages: Stage) -> Pipeline:
    return Pipeline(plugins=[ToyPlugin(stages=(ToyCapture(), *stages))])


def test_a_stage_touching_plain_nodes_needs_no_code_generation_and_the_result_runs(monkeypatch):
    model, inputs = small_net()
    generated = []
    original = compilation.generate
    monkeypatch.setattr(compilation, "generate", lambda module: generated.append(module) or original(module))
    result = pipeline(AddsToEveryRelu()).run(exported(model, inputs))
    assert generated == []
    assert "torch.ops.aten.add.Tensor(relu" in result.graph_module.code
    first = torch.relu(model.first(inputs[0])) + 1.0
    torch.testing.assert_close(result.graph_module(*inputs), model.second(first) + inputs[0])


def test_a_stage_that_writes_an_argument_python_cannot_read_fails_naming_it(monkeypatch):
    model, inputs = small_net()
    with pytest.raises(StageFailedError, match=r"stage 'adds' .* does not compile: code generation failed: "):
        pipeline(AddsToEveryRelu(argument=Opaque())).run(exported(model, inputs))


def test_a_graph_edited_without_recompile_is_named_at_the_end_of_the_run():
    model, inputs = small_net()
    graph_module = exported(model, inputs)
    relu = next(iter(graph_module.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)))
    relu.args = (*relu.args, Opaque())
    with pytest.raises(PipelineError, match="does not compile at the end of the run.*without recompile"):
        pipeline(AddsToEveryRelu()).run(graph_module)
