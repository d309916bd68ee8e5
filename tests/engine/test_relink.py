"""Node references in metadata follow a private copy to its own nodes, keeping the original's aliasing."""

from __future__ import annotations

import dataclasses

import torch
from support.toyflow import exported, small_net

from pipeline.copying import private_copy


@dataclasses.dataclass(frozen=True)
class Shared:
    edge: tuple[torch.fx.Node, torch.fx.Node]
    dtype: torch.dtype = torch.int8


@dataclasses.dataclass(frozen=True)
class Plain:
    dtype: torch.dtype = torch.uint8
    scheme: torch.qscheme = torch.per_tensor_affine


def calls(graph_module):
    return [node for node in graph_module.graph.nodes if node.op == "call_function"]


def test_an_object_two_nodes_share_is_relinked_once_and_stays_shared():
    graph_module = exported(*small_net())
    first, second = calls(graph_module)[:2]
    shared = {first: Shared((first, second)), "plain": Plain()}
    first.meta["linked"] = second.meta["linked"] = shared
    duplicate = private_copy(graph_module, node_keys=("linked",))
    copied_first, copied_second = calls(duplicate)[:2]
    relinked = copied_first.meta["linked"]
    assert copied_second.meta["linked"] is relinked
    assert relinked is not shared
    assert list(relinked) == [copied_first, "plain"]
    assert relinked[copied_first].edge == (copied_first, copied_second)
    assert relinked["plain"] is shared["plain"]
    assert shared[first].edge == (first, second)


def test_metadata_without_node_references_is_shared_not_copied():
    graph_module = exported(*small_net())
    first = calls(graph_module)[0]
    plain = {"spec": Plain(), "ranks": (1, 2.5, "x", None, torch.device("cpu"))}
    first.meta["linked"] = plain
    duplicate = private_copy(graph_module, node_keys=("linked",))
    assert calls(duplicate)[0].meta["linked"] is plain
