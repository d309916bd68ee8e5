"""pipeline.codegen writes FX's own code for the graphs it takes, and leaves every other graph to FX."""

from __future__ import annotations

import math

import pytest
import torch
from support.codegen_check import same_code
from support.toyflow import exported, small_net
from torch.fx.graph import CodeGen

from pipeline import Pipeline, codegen, compilation


class Blocks(torch.nn.Module):
    """Attribute paths with digits, chunk + getitem, kwargs, a dtype, an inf, a list and a one-tuple argument."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Linear(4, 4))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b, c = self.layers[0](x).chunk(3, dim=-1)
        d = torch.clamp(self.layers[1](a), max=math.inf) + b.to(torch.float64).float()
        return torch.cat([d, c], dim=0).sum(dim=(1,), keepdim=True), y * 2


def _graphs() -> dict[str, torch.fx.GraphModule]:
    blocks = torch.export.export(Blocks(), (torch.randn(2, 8), torch.randn(3))).module()
    small = exported(*small_net())
    prepared = Pipeline.default(allow=["pt2e-pipeline"]).prepare(small, quantizer=_quantizer()).graph_module
    prepared(*small_net()[1])
    converted = Pipeline.default(allow=["pt2e-pipeline"]).convert(prepared).graph_module
    return {"blocks": blocks, "small": small, "prepared": prepared, "converted": converted}


def _quantizer():  # type: ignore[no-untyped-def]
    from plugins.quantizers import symmetric

    return symmetric()


@pytest.fixture(scope="module")
def graphs() -> dict[str, torch.fx.GraphModule]:
    return _graphs()


@pytest.mark.parametrize("name", ["blocks", "small", "prepared", "converted"])
def test_exported_prepared_and_converted_graphs_get_fxs_exact_code(graphs, name):
    graph = graphs[name].graph
    ours = codegen.python_code(graph)
    assert ours is not None
    assert same_code(ours, graph.python_code(root_module="self"))


def test_the_graphs_hold_what_the_generator_must_get_right(graphs):
    """Guards the test above: the graphs do exercise observers, getitem, dotted paths and released values."""
    source = "\n".join(graphs[name].graph.python_code(root_module="self").src for name in graphs)
    for fragment in (
        "getitem = chunk[0]",
        'getattr(self.layers, "0")',
        "self.activation_post_process_",
        "= None",
    ):
        assert fragment in source, fragment


def test_a_compiled_module_runs_fxs_code(graphs):
    module = graphs["blocks"]
    inputs = (torch.randn(2, 8), torch.randn(3))
    expected = module(*inputs)
    compilation.mark_stale(module)
    compilation.compile_now(module)
    assert module.code == module.graph.python_code(root_module="self").src
    assert all(torch.equal(a, b) for a, b in zip(module(*inputs), expected, strict=True))


def _traced(function) -> torch.fx.GraphModule:  # type: ignore[no-untyped-def]
    return torch.fx.symbolic_trace(function)


def _rename(graph_module: torch.fx.GraphModule, old: str, new: str) -> torch.fx.GraphModule:
    node = next(node for node in graph_module.graph.nodes if node.name == old)
    node.name = new
    return graph_module


class _OwnCodeGen(CodeGen):
    pass


def _with_own_codegen(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    graph_module.graph.set_codegen(_OwnCodeGen())
    return graph_module


def _with_tensor_argument() -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.add.Tensor, (x, torch.ones(2))))
    return torch.fx.GraphModule(torch.nn.Module(), graph)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: _traced(lambda x: torch.add(x, 1)), id="a torch function, not an op overload"),
        pytest.param(lambda: _traced(lambda x: x[:, 1:]), id="a slice argument"),
        pytest.param(lambda: _traced(_annotated), id="a type annotation"),
        pytest.param(lambda: _rename(exported(*small_net()), "linear", "sum"), id="a name FX would rename"),
        pytest.param(
            lambda: _with_own_codegen(_traced(lambda x: x.relu())), id="a code generator of its own"
        ),
        pytest.param(lambda: _with_tensor_argument(), id="a tensor argument"),
    ],
)
def test_anything_else_is_left_to_fx(build):
    graph_module = build()
    assert codegen.python_code(graph_module.graph) is None
    compilation.mark_stale(graph_module)
    compilation.compile_now(graph_module)
    assert graph_module.code == graph_module.graph.python_code(root_module="self").src


def _annotated(x: torch.Tensor) -> torch.Tensor:
    return x.relu()


def test_the_suite_wide_check_fails_on_any_difference(graphs):
    code = codegen.python_code(graphs["small"].graph)
    assert code is not None
    fx = graphs["small"].graph.python_code(root_module="self")
    altered = type(code)(
        code.src.replace("None", "None ", 1), code.globals, code._lineno_map, code._prologue_start
    )
    assert same_code(code, fx) and not same_code(altered, fx)
