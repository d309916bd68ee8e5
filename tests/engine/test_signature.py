"""Identity signatures tell a graph left alone from one touched in any way a stage could touch it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.fx
from support.toyflow import exported, small_net

from pipeline.signature import IdentitySignature


def relu_of(graph_module: torch.fx.GraphModule) -> torch.fx.Node:
    return next(iter(graph_module.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)))


def add_a_node(graph_module: torch.fx.GraphModule) -> None:
    relu = relu_of(graph_module)
    with graph_module.graph.inserting_after(relu):
        graph_module.graph.call_function(torch.ops.aten.neg.default, (relu,))


def rewire(graph_module: torch.fx.GraphModule) -> None:
    relu = relu_of(graph_module)
    relu.args = (next(iter(graph_module.graph.find_nodes(op="placeholder"))),)


def rename(graph_module: torch.fx.GraphModule) -> None:
    relu_of(graph_module).name = "renamed"


def set_a_meta_value(graph_module: torch.fx.GraphModule) -> None:
    relu_of(graph_module).meta["stack_trace"] = "elsewhere"


def add_a_meta_key(graph_module: torch.fx.GraphModule) -> None:
    relu_of(graph_module).meta["new_key"] = 1


def drop_a_meta_key(graph_module: torch.fx.GraphModule) -> None:
    relu_of(graph_module).meta.pop("val")


CHANGES: dict[str, Callable[[torch.fx.GraphModule], None]] = {
    "node added": add_a_node,
    "node re-wired": rewire,
    "node renamed": rename,
    "metadata value replaced": set_a_meta_value,
    "metadata key added": add_a_meta_key,
    "metadata key removed": drop_a_meta_key,
}


def test_an_untouched_graph_keeps_its_signature() -> None:
    graph_module = exported(*small_net())
    signature = IdentitySignature.of(graph_module)
    assert signature.holds_for(graph_module)
    assert IdentitySignature.of(graph_module) == signature
    assert IdentitySignature.of(None).holds_for(None)
    assert not signature.holds_for(None)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_kind_of_change_breaks_the_signature(change: str) -> None:
    graph_module = exported(*small_net())
    signature = IdentitySignature.of(graph_module)
    CHANGES[change](graph_module)
    assert not signature.holds_for(graph_module)
    assert IdentitySignature.of(graph_module) != signature
