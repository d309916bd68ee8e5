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
from torchao.quantization.pt2e import graph_utils
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from pipeline import Pipeline
from plugins.annotation import ANNOTATION_KEY
from plugins.partition_search import faster_partition_search, find_sequential_partitions

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
