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

Each level of a chain asks FX's ``get_source_partitions`` for the partitions
of one op type, and that walks the whole graph; a quantizer asks a few dozen
times per annotate. :class:`SourceIndex` files every node under its source
once, and each question then looks up only the nodes it wants.

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
from torch.fx.passes.utils.source_matcher_utils import SourcePartition
from torchao.quantization.pt2e import graph_utils

NAME = "find_sequential_partitions"
_TORCHAO_SEARCH = graph_utils.find_sequential_partitions
_lock = threading.Lock()
_depth = 0
_swapped: list[Any] = []
_scan: tuple[int, list[Any]] = (-1, [])
_indexes: dict[int, SourceIndex] = {}


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
                source_partitions(
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
            _swapped[:] = _modules_naming_torchaos_search()
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
                _indexes.clear()


def _modules_naming_torchaos_search() -> list[Any]:
    """The loaded modules whose global ``find_sequential_partitions`` is torchao's.

    Walking every loaded module costs more than a small annotate, so the walk
    is redone only when the number of loaded modules changed. A module it
    misses (one replaced by another under the same count) keeps torchao's
    search, which gives the same chains, only slower.
    """
    global _scan
    if _scan[0] != len(sys.modules):
        modules = list(sys.modules.values())
        found = [module for module in modules if getattr(module, "__dict__", {}).get(NAME) is _TORCHAO_SEARCH]
        _scan = (len(modules), found)
    return [module for module in _scan[1] if module.__dict__.get(NAME) is _TORCHAO_SEARCH]


def source_partitions(
    graph: torch.fx.Graph, wanted: list[Any], filter_fn: Callable[[torch.fx.Node], bool] | None = None
) -> dict[Any, list[SourcePartition]]:
    """What ``get_source_partitions(graph, wanted, filter_fn)`` returns, from the graph's index.

    While :func:`faster_partition_search` is on, a graph's index is kept and
    reused as long as the graph holds the same nodes: quantizers write
    annotations, not the source metadata the index files nodes by.
    """
    index = _indexes.get(id(graph)) if _depth else None
    if index is None or not index.describes(graph):
        index = SourceIndex(graph)
        if _depth:
            _indexes[id(graph)] = index
    found = index.partitions(wanted, filter_fn)
    if found is None:
        return graph_utils.get_source_partitions(graph, wanted, filter_fn)  # type: ignore[no-any-return]
    return found


_Filed = tuple[int, Any, str, torch.fx.Node]
"""A node filed under a source: its position in the graph, the source, the module path, the node."""


class SourceIndex:
    """Every node of a graph filed under the source ``get_source_partitions`` would match it by.

    A node with a ``source_fn_stack`` is filed under its innermost source. One
    without is filed under the name of its ``torch_fn`` if that is wanted, and
    otherwise, if it calls a function, under the first wanted source that the
    innermost class of its ``nn_module_stack`` is (or subclasses).
    """

    def __init__(self, graph: torch.fx.Graph) -> None:
        self.nodes = tuple(graph.nodes)
        self.usable = True
        self._by_source: dict[Any, list[_Filed]] = {}
        self._by_name: dict[str, list[_Filed]] = {}
        self._by_module_class: dict[Any, list[tuple[int, str, torch.fx.Node, str | None]]] = {}
        try:
            for position, node in enumerate(self.nodes):
                self._file(position, node)
        except TypeError:
            self.usable = False

    def describes(self, graph: torch.fx.Graph) -> bool:
        return self.nodes == tuple(graph.nodes)

    def _file(self, position: int, node: torch.fx.Node) -> None:
        stack = node.meta.get("source_fn_stack", None)
        if stack is not None:
            innermost = stack[-1]
            self._by_source.setdefault(innermost[1], []).append((position, innermost[1], innermost[0], node))
            return
        name = None
        torch_fn = node.meta.get("torch_fn", None)
        if torch_fn is not None:
            path, function = torch_fn
            name = function.split(".")[1]
            self._by_name.setdefault(name, []).append((position, name, path, node))
        module_stack = node.meta.get("nn_module_stack", None) if node.op == "call_function" else None
        if module_stack:
            path, module_class = list(module_stack.values())[-1]
            self._by_module_class.setdefault(module_class, []).append((position, path, node, name))

    def partitions(
        self, wanted: list[Any], filter_fn: Callable[[torch.fx.Node], bool] | None
    ) -> dict[Any, list[SourcePartition]] | None:
        """The partitions of the wanted sources; ``None`` when a source cannot be looked up by hash."""
        if not self.usable:
            return None
        try:
            distinct = dict.fromkeys(wanted)
        except TypeError:
            return None
        filed: list[_Filed] = []
        for source in distinct:
            filed += self._by_source.get(source, ())
            filed += self._by_name.get(source, ())
        for module_class, entries in self._by_module_class.items():
            source = _module_source(module_class, wanted)
            if source is not _NO_SOURCE:
                filed += [
                    (position, source, path, node)
                    for position, path, node, name in entries
                    if name is None or name not in distinct
                ]
        filed.sort(key=lambda entry: entry[0])
        grouped: dict[Any, dict[str, list[torch.fx.Node]]] = {}
        for _, source, path, node in filed:
            grouped.setdefault(source, {}).setdefault(path, []).append(node)
        return {
            source: [
                _partition(nodes, source)
                for nodes in groups.values()
                if not filter_fn or all(map(filter_fn, nodes))
            ]
            for source, groups in grouped.items()
        }


_NO_SOURCE: Any = object()


def _module_source(module_class: Any, wanted: list[Any]) -> Any:
    """The first wanted source a module class (or its dotted name) stands for."""
    for source in wanted:
        if isinstance(source, type):
            if isinstance(module_class, type) and issubclass(module_class, source):
                return source
            if isinstance(module_class, str) and module_class == f"{source.__module__}.{source.__qualname__}":
                return source
        elif module_class == source:
            return source
    return _NO_SOURCE


def _partition(nodes: list[torch.fx.Node], source: Any) -> SourcePartition:
    """The partition of ``nodes``; its node lists come out in the order FX's own sets give them."""
    members = set(nodes)
    inputs: set[torch.fx.Node] = set()
    outputs: set[torch.fx.Node] = set()
    params: set[torch.fx.Node] = set()
    for node in nodes:
        inputs.update(
            arg
            for arg in node.args
            if isinstance(arg, torch.fx.Node) and arg not in members and arg.op != "get_attr"
        )
        if node.op == "get_attr":
            params.add(node)
        elif any(user not in members for user in node.users):
            outputs.add(node)
    return SourcePartition(nodes, source, list(inputs), list(outputs), list(params))  # type: ignore[arg-type]
