"""torchao's ``find_sequential_partitions``, joined along graph edges instead of enumerated.

Quantizers such as torchao's ``X86InductorQuantizer`` find chains like
``conv -> batch_norm -> relu`` by taking the cartesian product of every
partition of each type and keeping the candidates whose consecutive members
are connected. That is cubic in the number of blocks for a three-op chain:
about 2 million connectivity checks per pattern on a 128-block CNN, seconds
of every annotate. The chains are the same whether enumerated or followed:
starting from each partition of the first type in order, the next member can
only be a partition holding a user of the current one, taken in index order,
so the joined list is the filtered product, element for element and in the
same order.

:func:`faster_partition_search` swaps this search in for torchao's while a
quantizer annotates, in every module that imported torchao's function by
name, and swaps it back afterwards.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch.fx
from torchao.quantization.pt2e import graph_utils

NAME = "find_sequential_partitions"
_TORCHAO_SEARCH = graph_utils.find_sequential_partitions
_lock = threading.Lock()
_depth = 0
_swapped: list[Any] = []


def find_sequential_partitions(
    gm: torch.fx.GraphModule,
    partition_types: list[Any],
    include_functional_equivalent: bool = True,
    filter_fn: Callable[[torch.fx.Node], bool] | None = None,
) -> list[tuple[Any, ...]]:
    """The connected chains of partitions of `partition_types`, as torchao's function returns them.

    `include_functional_equivalent` is accepted and, as in torchao, has no
    effect: equivalent types (``nn.Conv2d`` and ``F.conv2d``) always match.
    """
    if not graph_utils._valid_type_sequence(partition_types):
        raise ValueError(
            f"Invalid partition types: {partition_types}. Each type in the sequence must be unique"
        )
    levels = [
        list(
            itertools.chain.from_iterable(
                graph_utils.get_source_partitions(
                    gm.graph, graph_utils._get_matching_types(partition_type), filter_fn
                ).values()
            )
        )
        for partition_type in partition_types
    ]
    return [tuple(levels[level][index] for level, index in enumerate(chain)) for chain in _chains(levels)]


def _chains(levels: Sequence[Sequence[Any]]) -> Iterator[tuple[int, ...]]:
    """Index tuples of the connected chains, in the lexicographic order of ``itertools.product``."""
    if not levels:
        yield ()
        return
    holders = [_holders(partitions) for partitions in levels]
    successors: dict[tuple[int, int], list[int]] = {}

    def following(level: int, index: int) -> list[int]:
        key = (level, index)
        if key not in successors:
            found: set[int] = set()
            owners = holders[level + 1]
            for node in levels[level][index].nodes:
                for user in node.users:
                    found.update(owners.get(user, ()))
            successors[key] = sorted(found)
        return successors[key]

    def extend(chain: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        level = len(chain) - 1
        if level == len(levels) - 1:
            yield chain
            return
        for index in following(level, chain[-1]):
            yield from extend((*chain, index))

    for first in range(len(levels[0])):
        yield from extend((first,))


def _holders(partitions: Sequence[Any]) -> dict[torch.fx.Node, list[int]]:
    """Each node, with the indices of the partitions that hold it."""
    holders: dict[torch.fx.Node, list[int]] = {}
    for index, partition in enumerate(partitions):
        for node in dict.fromkeys(partition.nodes):
            holders.setdefault(node, []).append(index)
    return holders


@contextmanager
def faster_partition_search() -> Iterator[None]:
    """Inside the block, every module's name for torchao's search means :func:`find_sequential_partitions`.

    Re-entrant and thread-safe: the swap happens on the first entry and is
    undone on the last exit. Both searches return the same list, so code
    running in other threads meanwhile sees no difference but speed.
    """
    global _depth
    with _lock:
        if _depth == 0:
            _swapped[:] = [
                module
                for module in list(sys.modules.values())
                if module is not None and getattr(module, "__dict__", {}).get(NAME) is _TORCHAO_SEARCH
            ]
            for module in _swapped:
                setattr(module, NAME, find_sequential_partitions)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for module in _swapped:
                    setattr(module, NAME, _TORCHAO_SEARCH)
                _swapped.clear()
