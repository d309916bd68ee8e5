"""The stages' dead code elimination erases exactly the nodes FX's own ``eliminate_dead_code`` erases."""

from __future__ import annotations

import copy

import torch
import torch.fx

from plugins import dead_code


class _WithDeadCode(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("counter", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unused = torch.relu(x) + 1
        del unused
        self.counter.add_(1)
        torch.rand(3)
        chain = self.linear(x).sin().cos()
        del chain
        _ = x * 2
        return self.linear(x) - 1


def _graphs() -> list[torch.fx.GraphModule]:
    traced = torch.fx.symbolic_trace(_WithDeadCode())
    exported = torch.export.export(_WithDeadCode(), (torch.randn(2, 4),)).module()
    return [traced, exported]


def _signature(module: torch.fx.GraphModule) -> list[tuple[str, str, str]]:
    return [(node.name, node.op, str(node.target)) for node in module.graph.nodes]


def test_erases_the_same_nodes_as_fx():
    for module in _graphs():
        theirs = copy.deepcopy(module)
        mine = copy.deepcopy(module)
        assert theirs.graph.eliminate_dead_code() is dead_code.eliminate_dead_code(mine.graph) is True
        assert _signature(mine) == _signature(theirs)
        assert len(mine.graph.nodes) < len(module.graph.nodes)


def test_keeps_impure_nodes_and_reports_no_change_on_a_clean_graph():
    module = _graphs()[1]
    dead_code.eliminate_dead_code(module.graph)
    assert any(node.target is torch.ops.aten.rand.default for node in module.graph.nodes)
    assert dead_code.eliminate_dead_code(module.graph) is False


def test_cleans_nested_graphs_read_by_get_attr():
    class Branches(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def true_fn(y: torch.Tensor) -> torch.Tensor:
                return y + 1

            def false_fn(y: torch.Tensor) -> torch.Tensor:
                return y - 1

            return torch.cond(x.sum() > 0, true_fn, false_fn, (x,))

    exported = torch.export.export(Branches(), (torch.randn(3),)).module()
    branch = exported.true_graph_0.graph
    with branch.inserting_before(branch.output_node()):
        branch.call_function(torch.ops.aten.exp.default, (next(iter(branch.nodes)),))
    theirs = copy.deepcopy(exported)
    mine = copy.deepcopy(exported)
    theirs.graph.eliminate_dead_code()
    assert dead_code.eliminate_dead_code(mine.graph) is True
    for (name, child), (_, expected) in zip(mine.named_children(), theirs.named_children(), strict=True):
        if isinstance(child, torch.fx.GraphModule):
            assert _signature(child) == _signature(expected), name
    assert not any(
        node.target is torch.ops.aten.exp.default
        for child in mine.children()
        if isinstance(child, torch.fx.GraphModule)
        for node in child.graph.nodes
    )
    x = torch.randn(3)
    assert torch.equal(mine(x), theirs(x))
