"""Which annotated edges and outputs share one observer.

An annotation gives specs to input edges ``(producer, consumer)`` and to
outputs (the node itself). Edges and outputs that must share quantization
parameters form a group with one observer. Sharing is explicit
(``SharedQuantizationSpec``) or implicit: an input edge shares with the other
edges of the same producer, and with the producer's output, when their specs
agree on dtype, range, scheme and axis, because they quantize the same tensor.

The grouping follows torchao 0.18's rules step for step, since they decide the
observers and so the qparams: the same union order, the same reversal that
avoids a two-node loop, the spec of a group's first member (in annotation order)
choosing its observer. Where torchao fails obscurely this module says what is
wrong: a shared spec pointing at something nobody quantizes, a sharing cycle
with no concrete spec, a derived spec built from itself. Where torchao fails
only because of iteration order (a shared spec pointing at a later node), the
group takes the first concrete spec instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import torch.fx
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

from pipeline import StageError
from plugins.annotation import annotation_of

Edge = tuple[torch.fx.Node, torch.fx.Node]
EdgeOrNode = Edge | torch.fx.Node

_IMPLICIT_SHARING_ATTRIBUTES = (
    "dtype",
    "is_dynamic",
    "quant_min",
    "quant_max",
    "qscheme",
    "ch_axis",
    "scale",
    "zero_point",
)


def describe(edge_or_node: object) -> str:
    """``'relu'`` for an output, ``'relu -> linear'`` for an edge."""
    if isinstance(edge_or_node, tuple) and len(edge_or_node) == 2:
        producer, consumer = edge_or_node
        return f"{getattr(producer, 'name', producer)} -> {getattr(consumer, 'name', consumer)}"
    return str(getattr(edge_or_node, "name", edge_or_node))


def owner(edge_or_node: EdgeOrNode) -> torch.fx.Node:
    """The annotated node a key belongs to: the consumer of an edge, or the node itself."""
    return edge_or_node[1] if isinstance(edge_or_node, tuple) else edge_or_node


def specs_of(graph: torch.fx.Graph) -> dict[EdgeOrNode, QuantizationSpecBase | None]:
    """Every annotated edge and output with its spec, in annotation order.

    Annotation order is graph order, then each annotation's inputs in the
    order of its ``input_qspec_map``, then its output. ``None`` specs are kept:
    they take part in grouping and mean "no observer".
    """
    specs: dict[EdgeOrNode, QuantizationSpecBase | None] = {}
    for node in graph.nodes:
        annotation = annotation_of(node)
        if annotation is None:
            continue
        for producer, spec in annotation.input_qspec_map.items():
            specs[(producer, node)] = spec
        if annotation.output_qspec is not None:
            specs[node] = annotation.output_qspec
    return specs


@attrs.frozen
class Groups:
    """The sharing groups: each key's group number, and each group's members in annotation order."""

    group_of: Mapping[EdgeOrNode, int]
    members: Mapping[int, tuple[EdgeOrNode, ...]]

    def deciding_spec(
        self, group: int, specs: Mapping[EdgeOrNode, QuantizationSpecBase | None]
    ) -> tuple[EdgeOrNode, QuantizationSpecBase | None]:
        """The member whose spec builds the group's observer, and that spec.

        torchao builds it from the group's first member; when that member is a
        shared spec (possible only if it points forward, where torchao fails) the
        first member with a concrete spec is used.
        """
        members = self.members[group]
        first = specs[members[0]]
        if not isinstance(first, SharedQuantizationSpec):
            return members[0], first
        for member in members:
            if not isinstance(specs[member], SharedQuantizationSpec):
                return member, specs[member]
        cycle = " -> ".join(describe(member) for member in members)
        raise StageError(
            f"the shared quantization specs of {cycle} only point at each other: no member of "
            f"the group gives a concrete spec to share",
            node=owner(members[0]),
        )


class _UnionFind:
    """torchao's union-find over edges and outputs, with the same union direction rules."""

    def __init__(self, specs: Mapping[EdgeOrNode, QuantizationSpecBase | None]) -> None:
        self.specs = specs
        self.parent: dict[EdgeOrNode, EdgeOrNode] = {key: key for key in specs}

    def find(self, key: EdgeOrNode) -> EdgeOrNode:
        path = []
        root = key
        while self.parent[root] != root:
            path.append(root)
            root = self.parent[root]
        for visited in path:
            self.parent[visited] = root
        return root

    def union(self, parent: EdgeOrNode, child: EdgeOrNode) -> None:
        root_parent, root_child = self.find(parent), self.find(child)
        parent_spec = self.specs[root_parent]
        if isinstance(parent_spec, SharedQuantizationSpec) and parent_spec.edge_or_node == root_child:
            self.parent[root_parent] = root_child
        else:
            self.parent[root_child] = root_parent

    def root_spec(
        self, spec: QuantizationSpecBase | None, referrer: EdgeOrNode
    ) -> QuantizationSpecBase | None:
        """Follow shared specs to the spec they finally stand for."""
        seen: list[EdgeOrNode] = []
        while isinstance(spec, SharedQuantizationSpec):
            root = self.find(_checked_target(spec, self.specs, referrer))
            if root in seen:
                chain = " -> ".join(describe(key) for key in (*seen, root))
                raise StageError(
                    f"the shared quantization specs around {describe(referrer)} form a cycle "
                    f"({chain}) with no concrete spec in it",
                    node=owner(referrer),
                )
            seen.append(root)
            spec = self.specs[root]
        return spec


def _checked_target(
    spec: SharedQuantizationSpec,
    specs: Mapping[EdgeOrNode, QuantizationSpecBase | None],
    referrer: EdgeOrNode,
) -> EdgeOrNode:
    target = spec.edge_or_node
    if target not in specs:
        raise StageError(
            f"the SharedQuantizationSpec of {describe(referrer)} points at {describe(target)}, "
            f"which no annotation quantizes",
            node=owner(referrer),
        )
    return target


def _same_for_sharing(a: Any, b: Any) -> bool:
    def same(name: str) -> bool:
        if hasattr(a, name) and hasattr(b, name):
            return bool(getattr(a, name) == getattr(b, name))
        return not hasattr(a, name) and not hasattr(b, name)

    return all(same(name) for name in _IMPLICIT_SHARING_ATTRIBUTES)


def group(specs: Mapping[EdgeOrNode, QuantizationSpecBase | None]) -> Groups:
    """Union explicit and implicit sharing, in torchao's order, and number the groups."""
    union_find = _UnionFind(specs)
    for key, spec in specs.items():
        if isinstance(key, torch.fx.Node):
            if isinstance(spec, SharedQuantizationSpec):
                union_find.union(_checked_target(spec, specs, key), key)
            continue
        producer, consumer = key
        edge_root_spec = union_find.root_spec(spec, key)
        annotation = annotation_of(consumer)
        if annotation is not None and annotation.allow_implicit_sharing:
            for user in producer.users:
                if user is not consumer:
                    _share_if_alike(union_find, key, edge_root_spec, (producer, user))
            _share_if_alike(union_find, key, edge_root_spec, producer)
        if isinstance(spec, SharedQuantizationSpec):
            union_find.union(_checked_target(spec, specs, key), key)
    group_of: dict[EdgeOrNode, int] = {}
    numbers: dict[EdgeOrNode, int] = {}
    members: dict[int, list[EdgeOrNode]] = {}
    for key in specs:
        root = union_find.find(key)
        number = numbers.setdefault(root, len(numbers))
        group_of[key] = number
        members.setdefault(number, []).append(key)
    return Groups(group_of, {number: tuple(keys) for number, keys in members.items()})


def _share_if_alike(
    union_find: _UnionFind,
    edge: Edge,
    edge_root_spec: QuantizationSpecBase | None,
    other: EdgeOrNode,
) -> None:
    if other not in union_find.specs:
        return
    other_root_spec = union_find.root_spec(union_find.specs[other], other)
    if other_root_spec is not None and _same_for_sharing(other_root_spec, edge_root_spec):
        union_find.union(other, edge)


def derived_sources(spec: object) -> Iterator[EdgeOrNode]:
    """The edges and outputs a derived spec computes its qparams from."""
    if isinstance(spec, DerivedQuantizationSpec):
        yield from spec.derived_from
