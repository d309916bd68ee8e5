"""Snapshots of a graph module: what every node looked like at one moment.

Two snapshots answer the questions the engine asks around every stage: did
the graph change (the fingerprint), and which nodes were added, removed,
re-wired or re-targeted (the audit trail's structural diff). One walk over the
nodes serves both, and can take the graph's identity signature on the way
(:mod:`pipeline.signature`: did a condition check touch anything).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import torch.fx

from pipeline.audit.fields import MetaField
from pipeline.module_tree import graph_modules
from pipeline.naming import target_name
from pipeline.signature import IdentitySignature


class NodeRecord(NamedTuple):
    """A node's structure and watched metadata at snapshot time.

    ``args`` and ``kwargs`` are the node's own immutable containers, so they
    keep referring to the input nodes themselves: a renamed input is not a
    re-wiring.
    """

    name: str
    op: str
    target: str
    args: tuple[Any, ...]
    kwargs: Any
    meta: tuple[Hashable, ...]
    users: int


_TARGET_NAMES: dict[Any, str] = {}
_MAX_CACHED_NAMES = 4096


def readable_target(target: Any) -> str:
    """:func:`~pipeline.naming.target_name`, remembered for hashable targets (strings are their own)."""
    if type(target) is str:
        return target
    try:
        name = _TARGET_NAMES.get(target)
    except TypeError:
        return target_name(target)
    if name is None:
        name = target_name(target)
        if len(_TARGET_NAMES) < _MAX_CACHED_NAMES:
            _TARGET_NAMES[target] = name
    return name


class GraphSnapshot:
    """Every node of a graph module and its nested graph modules, as :class:`NodeRecord`.

    ``graphs`` maps a submodule path (``""`` for the top graph) to its nodes in
    graph order; nodes are the keys, so the diff matches nodes by identity.
    """

    def __init__(
        self,
        graphs: dict[str, dict[torch.fx.Node, NodeRecord]],
        meta_keys: tuple[str, ...],
        graph_objects: dict[str, torch.fx.Graph] | None = None,
        signature: IdentitySignature | None = None,
    ) -> None:
        self.graphs = graphs
        self.meta_keys = meta_keys
        self.graph_objects = graph_objects or {}
        self.signature = signature
        self._structure_of: GraphSnapshot | None = None
        self._earlier: GraphSnapshot | None = None
        self._lines: dict[str, dict[torch.fx.Node, str]] | None = None

    @classmethod
    def take(
        cls,
        graph_module: torch.fx.GraphModule | None,
        meta_fields: Sequence[MetaField],
        *,
        signed: bool = False,
    ) -> GraphSnapshot:
        """Snapshot ``graph_module`` (an empty snapshot for ``None``).

        ``signed`` also takes the graph's :class:`~pipeline.signature.IdentitySignature`
        (``snapshot.signature``) in the same walk.
        """
        graphs: dict[str, dict[torch.fx.Node, NodeRecord]] = {}
        objects: dict[str, torch.fx.Graph] = {}
        keys = tuple(field.key for field in meta_fields)
        if graph_module is None:
            return cls(graphs, keys, signature=IdentitySignature([]) if signed else None)
        fields = [(field.key, field.snapshot) for field in meta_fields]
        record = tuple.__new__
        every_meta: list[dict[str, Any]] = []
        for path, module in graph_modules(graph_module):
            nodes = list(module.graph.nodes)
            metas = [node.meta for node in nodes]
            if signed:
                every_meta.extend(map(dict.copy, metas))
            watched = (
                zip(*(_column(metas, key, snap) for key, snap in fields), strict=True)
                if fields
                else [()] * len(nodes)
            )
            records = {
                node: record(
                    NodeRecord,
                    (
                        node.name,
                        node.op,
                        target if type(target := node.target) is str else readable_target(target),
                        node._args,
                        node._kwargs,
                        values,
                        len(node.users),
                    ),
                )
                for node, values in zip(nodes, watched, strict=True)
            }
            graphs[path] = records
            objects[path] = module.graph
        if not signed:
            return cls(graphs, keys, objects)
        nodes = [node for records in graphs.values() for node in records]
        return cls(graphs, keys, objects, IdentitySignature(nodes, every_meta))

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the graphs' structure (names, ops, targets, wiring), stable across processes."""
        if self._structure_of is not None:
            return self._structure_of.fingerprint
        earlier, self._earlier = self._earlier, None
        reusable = earlier._structural_lines() if earlier is not None else None
        digest = hashlib.blake2b(digest_size=16)
        lines: dict[str, dict[torch.fx.Node, str]] = {}
        for path, records in self.graphs.items():
            lines[path] = _lines(records, reusable.get(path) if reusable is not None else None)
            digest.update(f"graph {path}\n".encode())
            digest.update("".join(lines[path].values()).encode())
        self._lines = lines
        return digest.hexdigest()

    def follows(self, earlier: GraphSnapshot) -> None:
        """Take ``earlier`` as this graph's previous state: its fingerprint lines serve unchanged nodes.

        A stage rewrites a few nodes of a graph; the fingerprint of the result
        formats only those. An earlier snapshot gives its lines up once used,
        and its own link to the one before it now, so no chain of snapshots
        outlives the stages that made them.
        """
        earlier._earlier = None
        self._earlier = earlier

    def _structural_lines(
        self,
    ) -> dict[str, tuple[dict[torch.fx.Node, NodeRecord], dict[torch.fx.Node, str]]]:
        """Each graph's records and fingerprint lines, if the fingerprint was taken; given up once read."""
        owner: GraphSnapshot = self
        while owner._structure_of is not None:
            owner = owner._structure_of
        lines, owner._lines = owner._lines, None
        if lines is None:
            return {}
        return {path: (owner.graphs[path], lines[path]) for path in lines}

    def has_structure_of(self, earlier: GraphSnapshot) -> None:
        """Record that :meth:`changed_graphs` found no change since ``earlier``: same fingerprint."""
        self._structure_of = earlier

    @property
    def node_count(self) -> int:
        """Nodes across all graphs."""
        return sum(len(records) for records in self.graphs.values())

    def record(self, path: str, node: torch.fx.Node) -> NodeRecord | None:
        """``node``'s record in the graph at ``path``, if it was there."""
        records = self.graphs.get(path)
        return None if records is None else records.get(node)

    @property
    def exists(self) -> bool:
        """Whether there was a graph at all."""
        return bool(self.graphs)

    def changed_graphs(self, later: GraphSnapshot) -> set[str]:
        """Paths of the graphs whose nodes, order, targets or wiring differ in ``later``."""
        changed = {path for path in self.graphs if path not in later.graphs}
        for path, records in later.graphs.items():
            mine = self.graphs.get(path)
            if mine is None or list(mine) != list(records):
                changed.add(path)
                continue
            for node, record in records.items():
                old = mine[node]
                if (
                    old[:3] != record[:3]
                    or not same_arguments(old.args, record.args)
                    or not same_arguments(old.kwargs, record.kwargs)
                ):
                    changed.add(path)
                    break
        return changed

    def same_as(self, later: GraphSnapshot) -> bool:
        """Whether nothing the snapshots record (structure, order or watched metadata) differs."""
        return not self.changed_graphs(later) and self.same_metadata(later)

    def same_metadata(self, later: GraphSnapshot) -> bool:
        """Whether every node's watched metadata is the same in ``later`` (whose nodes must be these)."""
        return all(
            record.meta == later.graphs[path][node].meta
            for path, records in self.graphs.items()
            for node, record in records.items()
        )


def _column(metas: list[dict[str, Any]], key: str, snap: Callable[[Any], Hashable]) -> list[Hashable]:
    """One watched key's snapshot for every node, ``None`` where it is absent.

    A column at a time: the common case (absent, or a string, its own snapshot)
    costs one comprehension step per node rather than a loop turn per node and key.
    """
    return [
        value if (value := meta.get(key)) is None or type(value) is str else snap(value) for meta in metas
    ]


def _line(record: NodeRecord) -> str:
    return f"{record.name}\t{record.op}\t{record.target}\t{record.args!r}\t{record.kwargs!r}\n"


def _lines(
    records: dict[torch.fx.Node, NodeRecord],
    earlier: tuple[dict[torch.fx.Node, NodeRecord], dict[torch.fx.Node, str]] | None,
) -> dict[torch.fx.Node, str]:
    """Each node's fingerprint line, taken from ``earlier`` where the node's own fields are the same objects.

    A line spells its inputs by name, so a renamed node anywhere in the graph
    makes every line be written afresh.
    """
    if earlier is None:
        return {node: _line(record) for node, record in records.items()}
    old_records, old_lines = earlier
    lines: dict[torch.fx.Node, str] = {}
    for node, record in records.items():
        old = old_records.get(node)
        if old is None:
            lines[node] = _line(record)
        elif old.name != record.name:
            return {node: _line(record) for node, record in records.items()}
        elif old.args is record.args and old.kwargs is record.kwargs and old[1:3] == record[1:3]:
            lines[node] = old_lines[node]
        else:
            lines[node] = _line(record)
    return lines


def same_arguments(old: Any, new: Any) -> bool:
    """Whether two argument structures hold the same values and the same node objects."""
    if old is new:
        return True
    try:
        return bool(old == new)
    except RuntimeError:
        return False
