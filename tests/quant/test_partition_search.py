"""The chain search swapped in while quantizers annotate returns exactly what torchao's returns."""

from __future__ import annotations

import copy
import operator
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.fx.passes.utils.source_matcher_utils import get_source_partitions
from torchao.quantization.pt2e import graph_utils
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from pipeline import Pipeline
from plugins.annotation import ANNOTATION_KEY
from plugins.partition_search import faster_partition_search, find_sequential_partitions, source_partitions

TORCHAO_SEARCH = graph_utils.find_sequential_partitions


def chains(found: list[tuple]) -> list[list[tuple[str, list[str]]]]:
    """A search result as plain data: each chain's partitions, by source and node names."""
    return [[(str(part.source), [node.name for node in part.nodes]) for part in chain] for chain in found]


class Block(nn.Module):
    """conv -> bn -> relu, with the skip added before or after the relu, or none."""

    def __init__(self, channels: int, skip: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.skip == "before relu":
            return self.relu(y + x)
        y = self.relu(y)
        return y + x if self.skip == "after relu" else y


SKIPS = ("none", "before relu", "after relu")


def exported_blocks(skips: list[str], train: bool) -> torch.fx.GraphModule:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), *(Block(4, skip) for skip in skips), nn.ReLU())
    model.train(train)
    return torch.export.export(model, (torch.randn(2, 3, 6, 6),)).module()


PATTERNS = [
    [nn.Conv2d],
    [nn.Conv2d, nn.BatchNorm2d],
    [nn.Conv2d, nn.BatchNorm2d, nn.ReLU],
    [nn.Conv2d, nn.BatchNorm2d, operator.add],
    [nn.Conv2d, nn.BatchNorm2d, operator.add, nn.ReLU],
    [nn.Conv2d, nn.ReLU],
    [nn.Conv2d, operator.add, nn.ReLU],
    [nn.ReLU, operator.add],
    [nn.ReLU, nn.Conv2d],
    [],
]


@settings(max_examples=12, deadline=None)
@given(
    skips=st.lists(st.sampled_from(SKIPS), min_size=1, max_size=4),
    train=st.booleans(),
    pattern=st.sampled_from(PATTERNS),
)
def test_same_chains_in_the_same_order_as_torchao(skips: list[str], train: bool, pattern: list) -> None:
    graph_module = exported_blocks(skips, train)
    assert chains(find_sequential_partitions(graph_module, pattern)) == chains(
        TORCHAO_SEARCH(graph_module, pattern)
    )


def test_a_filter_and_a_branching_graph_give_torchaos_chains() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.relu1(self.bn1(y)) + self.relu2(self.bn2(y))

    graph_module = torch.export.export(Branches().eval(), (torch.randn(1, 3, 4, 4),)).module()

    def not_bn2(node: torch.fx.Node) -> bool:
        return "bn2" not in str(node.meta.get("nn_module_stack", {}))

    for pattern in ([nn.Conv2d, nn.BatchNorm2d, nn.ReLU, operator.add], [nn.BatchNorm2d, nn.ReLU]):
        for filter_fn in (None, not_bn2):
            ours = find_sequential_partitions(graph_module, pattern, filter_fn=filter_fn)
            assert chains(ours) == chains(TORCHAO_SEARCH(graph_module, pattern, filter_fn=filter_fn))
    assert len(find_sequential_partitions(graph_module, [nn.BatchNorm2d, nn.ReLU])) == 2


def test_an_invalid_type_sequence_is_torchaos_error() -> None:
    graph_module = exported_blocks(["none"], train=False)
    with pytest.raises(ValueError, match="Each type in the sequence must be unique"):
        TORCHAO_SEARCH(graph_module, [nn.Conv2d, F.conv2d])
    with pytest.raises(ValueError, match="Each type in the sequence must be unique"):
        find_sequential_partitions(graph_module, [nn.Conv2d, F.conv2d])


def test_the_swap_is_scoped_reentrant_and_reaches_modules_that_imported_the_name() -> None:
    assert x86_inductor_quantizer.find_sequential_partitions is TORCHAO_SEARCH
    with faster_partition_search():
        assert x86_inductor_quantizer.find_sequential_partitions is find_sequential_partitions
        assert graph_utils.find_sequential_partitions is find_sequential_partitions
        with faster_partition_search():
            assert x86_inductor_quantizer.find_sequential_partitions is find_sequential_partitions
        assert x86_inductor_quantizer.find_sequential_partitions is find_sequential_partitions
    assert x86_inductor_quantizer.find_sequential_partitions is TORCHAO_SEARCH
    assert graph_utils.find_sequential_partitions is TORCHAO_SEARCH


def test_the_swap_is_undone_when_the_quantizer_raises() -> None:
    with pytest.raises(RuntimeError, match="quantizer broke"), faster_partition_search():
        raise RuntimeError("quantizer broke")
    assert x86_inductor_quantizer.find_sequential_partitions is TORCHAO_SEARCH


def test_threads_annotating_at_once_leave_torchaos_function_in_place() -> None:
    graph_module = exported_blocks(["before relu", "none"], train=True)
    errors: list[BaseException] = []

    def annotate() -> None:
        try:
            for _ in range(3):
                with faster_partition_search():
                    quantizer(qat=True).annotate(copy.deepcopy(graph_module))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=annotate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert x86_inductor_quantizer.find_sequential_partitions is TORCHAO_SEARCH


def quantizer(qat: bool) -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=qat))


def annotations(graph_module: torch.fx.GraphModule) -> list[tuple[str, str]]:
    return [(node.name, repr(node.meta.get(ANNOTATION_KEY))) for node in graph_module.graph.nodes]


@pytest.mark.parametrize("qat", [False, True])
def test_the_annotate_stage_uses_it_and_annotates_as_torchaos_search_does(qat: bool) -> None:
    graph_module = exported_blocks(list(SKIPS), train=qat)
    calls = {"ours": 0}
    original = find_sequential_partitions

    def counting(*args, **kwargs):
        calls["ours"] += 1
        return original(*args, **kwargs)

    fast = Pipeline.default(allow=["pt2e-pipeline"])
    slow = Pipeline.default(
        allow=["pt2e-pipeline"], stage_options={"annotate": {"fast_partition_search": False}}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("plugins.partition_search.find_sequential_partitions", counting)
        annotated_fast = fast.prepare(
            graph_module, quantizer=quantizer(qat), is_qat=qat, stop_after="annotate"
        )
    annotated_slow = slow.prepare(graph_module, quantizer=quantizer(qat), is_qat=qat, stop_after="annotate")
    assert calls["ours"] > 0
    assert annotations(annotated_fast.graph_module) == annotations(annotated_slow.graph_module)
    assert x86_inductor_quantizer.find_sequential_partitions is TORCHAO_SEARCH


class Encoder(nn.Module):
    """Linear layers, a layer norm, matmuls and chunks: functions and modules of several kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return F.relu(self.out(attention)) + x


def source_graphs() -> list[torch.fx.Graph]:
    """Graphs filed by ``torch_fn`` and module stacks (non-strict export) and by ``source_fn_stack`` (strict)."""
    example = (torch.randn(2, 5, 8),)
    graphs = [
        torch.export.export(Encoder().eval(), example, strict=strict).module().graph
        for strict in (False, True)
    ]
    graphs.append(exported_blocks(list(SKIPS), train=False).graph)
    return graphs


WANTED = [
    [nn.Linear],
    [nn.Linear, F.linear],
    [nn.LayerNorm, nn.Linear],
    [nn.Conv2d, F.conv2d],
    [nn.ReLU, F.relu, "relu"],
    ["linear", "matmul", "chunk"],
    [operator.add, torch.add, "add"],
    ["softmax", torch.softmax, nn.Softmax],
    [Encoder],
    [f"{Encoder.__module__}.{Encoder.__qualname__}", nn.LayerNorm],
    [nn.Module],
    [nn.Linear, nn.Linear],
    [],
]


def partitions_as_data(found: dict) -> list:
    return [
        (
            source,
            [
                (
                    [node.name for node in part.nodes],
                    part.source,
                    [node.name for node in part.input_nodes],
                    [node.name for node in part.output_nodes],
                    [node.name for node in part.params],
                )
                for part in parts
            ],
        )
        for source, parts in found.items()
    ]


@pytest.mark.parametrize("wanted", WANTED, ids=str)
def test_the_source_index_gives_fxs_partitions_in_fxs_order(wanted: list) -> None:
    def not_in_second_block(node: torch.fx.Node) -> bool:
        return "blocks.1" not in str(node.meta.get("nn_module_stack", {})) and node.name != "linear_1"

    for graph in source_graphs():
        for filter_fn in (None, not_in_second_block):
            expected = get_source_partitions(graph, wanted, filter_fn)
            assert partitions_as_data(source_partitions(graph, wanted, filter_fn)) == partitions_as_data(
                expected
            )


def test_the_index_finds_something_in_every_kind_of_graph() -> None:
    for graph in source_graphs():
        found = source_partitions(graph, [nn.Linear, nn.Conv2d, nn.ReLU, F.relu, "relu"])
        assert any(found.values())


def test_an_index_kept_while_annotating_follows_a_graph_that_changed() -> None:
    graph_module = torch.export.export(Encoder().eval(), (torch.randn(2, 5, 8),)).module()
    graph = graph_module.graph
    with faster_partition_search():
        before = source_partitions(graph, [nn.Linear])
        linear = next(node for node in graph.nodes if node.target is torch.ops.aten.linear.default)
        with graph.inserting_after(linear):
            copy_ = graph.node_copy(linear)
        after = source_partitions(graph, [nn.Linear])
        assert partitions_as_data(after) == partitions_as_data(get_source_partitions(graph, [nn.Linear]))
        assert copy_ in after[nn.Linear][0].nodes and copy_ not in before[nn.Linear][0].nodes


def test_unhashable_sources_fall_back_to_fxs_own_search() -> None:
    graph = source_graphs()[0]
    wanted = [[nn.Linear], nn.Linear]
    assert partitions_as_data(source_partitions(graph, wanted)) == partitions_as_data(
        get_source_partitions(graph, wanted)
    )
