"""What one stage did to the graph, node by node, as audit events.

Two sources are merged. FX's graph-module hooks report node creation, erasure
and use-replacement as they happen, in order, with the origin in force; a
structural diff of the snapshots before and after the stage finds everything
the hooks cannot see: ``node.args = ...``, renames, re-targeting, metadata
writes, nodes unlinked by hand, and whole graphs swapped for new ones. Every
node event therefore states the true difference, whatever API the stage used.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import attrs
import torch.fx

from pipeline.audit import events, serialize
from pipeline.audit.fields import NodeDescriber
from pipeline.context import Origin
from pipeline.snapshot import GraphSnapshot, NodeRecord, readable_target

Event = tuple[str, dict[str, Any]]


@attrs.define
class Created:
    """The create-node hook fired for ``node`` while ``origin`` was in force."""

    node: torch.fx.Node
    graph: str
    origin: Origin | None


@attrs.define
class Erased:
    """The erase-node hook fired for ``node``; ``record`` is how it looked then."""

    node: torch.fx.Node
    graph: str
    record: NodeRecord


@attrs.define
class Replaced:
    """``old``'s uses in ``users`` were handed to the node named ``new_name``."""

    old: torch.fx.Node
    new_name: str
    graph: str
    users: list[torch.fx.Node]


HookEntry = Created | Erased | Replaced


@attrs.frozen
class StageChanges:
    """The node events of one stage, in order, and the net counts the stage summary reports."""

    events: tuple[Event, ...]
    added: int
    removed: int
    rewired: int


@attrs.define
class _HookEvents:
    """What the hook log yields: events so far, the nodes they covered, and the replacement tables."""

    events: list[Event]
    hooked: set[torch.fx.Node]
    added: int
    removed: int
    replaced_by: dict[torch.fx.Node, str]
    sources: dict[str, list[str]]


class _Survivor(NamedTuple):
    """A node present before and after the stage (``old`` and ``new`` differ only in a swapped graph)."""

    graph: str
    old: torch.fx.Node
    new: torch.fx.Node


class Differ:
    """Turns a stage's hook log and its before/after snapshots into ordered node events."""

    def __init__(self, meta_keys: Sequence[str], describers: Mapping[Any, Sequence[NodeDescriber]]) -> None:
        self._meta_keys = tuple(meta_keys)
        self._describers = describers

    def changes(self, before: GraphSnapshot, after: GraphSnapshot, log: Sequence[HookEntry]) -> StageChanges:
        if _same_graphs(before, after):
            return self._changes_in_place(before, after, log)
        survivors = _survivors(before, after)
        translate = {survivor.old: survivor.new for survivor in survivors}
        kept_new = set(translate.values())
        hooks = self._hook_events(before, after, log, kept_new, translate)
        out, hooked = hooks.events, hooks.hooked
        added, removed = hooks.added, hooks.removed
        for graph, node, record in _unmatched(after, before, kept_new):
            if node not in hooked:
                out.append(self._created(node, graph, record, None, hooks.sources))
                added += 1
        for graph, node, record in _unmatched(before, after, translate):
            if node not in hooked:
                out.append(self._erased(graph, record, hooks.replaced_by.get(node)))
                removed += 1
        rewired = 0
        for survivor in survivors:
            old = before.graphs[survivor.graph][survivor.old]
            new = after.graphs[survivor.graph][survivor.new]
            if survivor.old is survivor.new and (old == new or old[:6] == new[:6]):
                continue
            for event in self._survivor_events(survivor, old, new, translate):
                out.append(event)
                rewired += event[0] == events.NODE_REWIRED
        out.extend(_moves(before, after, survivors))
        return StageChanges(tuple(out), added, removed, rewired)

    def _changes_in_place(
        self, before: GraphSnapshot, after: GraphSnapshot, log: Sequence[HookEntry]
    ) -> StageChanges:
        """:meth:`changes` when the stage kept every graph object: survivors are the same nodes.

        The same events as the general way, found with set operations on the
        snapshots' node tables instead of a translation table per node.
        """
        kept: set[torch.fx.Node] = set()
        born: dict[str, list[torch.fx.Node]] = {}
        gone: dict[str, list[torch.fx.Node]] = {}
        for path, new_records in after.graphs.items():
            old_records = before.graphs[path]
            common = old_records.keys() & new_records.keys()
            kept |= common
            if len(common) != len(new_records):
                born[path] = [node for node in new_records if node not in common]
            if len(common) != len(old_records):
                gone[path] = [node for node in old_records if node not in common]
        hooks = self._hook_events(before, after, log, kept, kept)
        out, hooked = hooks.events, hooks.hooked
        added, removed = hooks.added, hooks.removed
        for path, nodes in born.items():
            for node in nodes:
                if node not in hooked:
                    out.append(self._created(node, path, after.graphs[path][node], None, hooks.sources))
                    added += 1
        for path, nodes in gone.items():
            for node in nodes:
                if node not in hooked:
                    out.append(self._erased(path, before.graphs[path][node], hooks.replaced_by.get(node)))
                    removed += 1
        rewired = 0
        identity: dict[torch.fx.Node, torch.fx.Node] = {}
        moved: list[_Survivor] = []
        for path, old_records in before.graphs.items():
            new_records = after.graphs[path]
            for node, old in old_records.items():
                new = new_records.get(node)
                if new is None or old == new or old[:6] == new[:6]:
                    continue
                for event in self._survivor_events(_Survivor(path, node, node), old, new, identity):
                    out.append(event)
                    rewired += event[0] == events.NODE_REWIRED
            old_order = [node for node in old_records if node in new_records]
            if old_order != [node for node in new_records if node in old_records]:
                moved.extend(_Survivor(path, node, node) for node in old_order)
        out.extend(_moves(before, after, moved))
        return StageChanges(tuple(out), added, removed, rewired)

    def _hook_events(
        self,
        before: GraphSnapshot,
        after: GraphSnapshot,
        log: Sequence[HookEntry],
        kept_new: Container[torch.fx.Node],
        kept_old: Container[torch.fx.Node],
    ) -> _HookEvents:
        """The events of what the hooks saw happen to nodes that did not survive, in the order it happened."""
        replacements = _replacements(log)
        replaced_by = {merged.old: merged.new_name for merged in replacements.values()}
        sources: dict[str, list[str]] = {}
        for merged in replacements.values():
            sources.setdefault(merged.new_name, []).append(merged.old.name)
        found = _HookEvents([], set(), 0, 0, replaced_by, sources)
        origins: dict[int, tuple[list[str], dict[str, Any]]] = {}
        for entry in log:
            if isinstance(entry, Created) and entry.node not in kept_new:
                found.hooked.add(entry.node)
                record = after.record(entry.graph, entry.node)
                found.events.append(
                    self._created(entry.node, entry.graph, record, entry.origin, sources, origins)
                )
                found.added += record is not None
            elif isinstance(entry, Erased) and entry.node not in kept_old:
                found.hooked.add(entry.node)
                prior = before.record(entry.graph, entry.node)
                found.events.append(
                    self._erased(entry.graph, prior or entry.record, replaced_by.get(entry.node))
                )
                found.removed += prior is not None
            elif isinstance(entry, Replaced):
                key = (entry.old, entry.new_name)
                if key in replacements:
                    found.events.append(_replaced(replacements.pop(key)))
        return found

    def _created(
        self,
        node: torch.fx.Node,
        graph: str,
        record: NodeRecord | None,
        origin: Origin | None,
        replaced: Mapping[str, list[str]],
        origins: dict[int, tuple[list[str], dict[str, Any]]] | None = None,
    ) -> Event:
        """``origins`` keeps each origin's serialized sources and details for the other nodes it made."""
        fields: dict[str, Any] = {
            "graph": graph,
            "node": node.name,
            "op": node.op,
            "target": readable_target(node.target),
            "args": serialize.argument(node.args),
            "kwargs": serialize.argument(node.kwargs),
        }
        details: dict[str, Any] = {}
        if origin is not None:
            fields["sources"], origin_details = _origin_fields(origin, origins)
            details.update(origin_details)
        else:
            fields["sources"] = sorted(set(replaced.get(node.name, ())))
        details.update(self._describe(node))
        if details:
            fields["details"] = details
        if record is None:
            fields["transient"] = True
        else:
            meta = {
                key: serialize.snapshot(value)
                for key, value in zip(self._meta_keys, record.meta, strict=True)
                if value is not None
            }
            if meta:
                fields["meta"] = meta
        return events.NODE_CREATED, fields

    @staticmethod
    def _erased(graph: str, record: NodeRecord, replaced_by: str | None) -> Event:
        fields: dict[str, Any] = {
            "graph": graph,
            "node": record.name,
            "op": record.op,
            "target": record.target,
            "args": serialize.argument(record.args),
            "kwargs": serialize.argument(record.kwargs),
        }
        if replaced_by is not None:
            fields["replaced_by"] = replaced_by
        return events.NODE_ERASED, fields

    def _survivor_events(
        self,
        survivor: _Survivor,
        old: NodeRecord,
        new: NodeRecord,
        translate: Mapping[torch.fx.Node, torch.fx.Node],
    ) -> Iterator[Event]:
        where = {"graph": survivor.graph, "node": new.name}
        if old.name != new.name:
            yield events.NODE_RENAMED, {**where, "before": old.name}
        if old.op != new.op or old.target != new.target:
            fields = {**where, "op": new.op, "target": new.target, "target_before": old.target}
            if old.op != new.op:
                fields["op_before"] = old.op
            yield events.NODE_RETARGETED, self._with_details(fields, survivor.new)
        args_changed = not _same_wiring(old.args, new.args, translate)
        kwargs_changed = not _same_wiring(old.kwargs, new.kwargs, translate)
        if args_changed or kwargs_changed:
            fields = {**where, "op": new.op, "target": new.target}
            if args_changed:
                fields["args_before"] = serialize.argument(old.args)
                fields["args_after"] = serialize.argument(new.args)
            if kwargs_changed:
                fields["kwargs_before"] = serialize.argument(old.kwargs)
                fields["kwargs_after"] = serialize.argument(new.kwargs)
            yield events.NODE_REWIRED, self._with_details(fields, survivor.new)
        for key, was, now in zip(self._meta_keys, old.meta, new.meta, strict=True):
            if was != now:
                yield (
                    events.NODE_META_CHANGED,
                    {
                        **where,
                        "key": key,
                        "before": serialize.snapshot(was),
                        "after": serialize.snapshot(now),
                    },
                )

    def _with_details(self, fields: dict[str, Any], node: torch.fx.Node) -> dict[str, Any]:
        details = self._describe(node)
        if details:
            fields["details"] = details
        return fields

    def _describe(self, node: torch.fx.Node) -> dict[str, Any]:
        try:
            describers = self._describers.get(node.target, ())
        except TypeError:
            return {}
        details: dict[str, Any] = {}
        for describer in describers:
            described = describer.describe(node)
            details.update(serialize.detail(described if type(described) is dict else dict(described)))
        return details


def _origin_fields(
    origin: Origin, serialized: dict[int, tuple[list[str], dict[str, Any]]] | None
) -> tuple[list[str], dict[str, Any]]:
    """The origin's source names and serialized details, serialized once per origin.

    A stage makes several nodes under one origin (a quantize and its
    dequantize). The first node's event takes the serialized values; the
    others get copies made before any event is emitted, so no two events share
    a container. The origins are alive in the hook log, so their ids are theirs.
    """
    known = serialized.get(id(origin)) if serialized is not None else None
    if known is not None:
        return list(known[0]), serialize.fresh(known[1])
    found = ([source.name for source in origin.sources], serialize.detail(dict(origin.details)))
    if serialized is not None:
        serialized[id(origin)] = found
    return found


def _same_graphs(before: GraphSnapshot, after: GraphSnapshot) -> bool:
    """Whether the stage kept the graphs: the same paths, each the same graph object."""
    return before.graphs.keys() == after.graphs.keys() and all(
        before.graph_objects.get(path) is after.graph_objects.get(path) is not None for path in before.graphs
    )


def _replacements(log: Sequence[HookEntry]) -> dict[tuple[torch.fx.Node, str], Replaced]:
    """One entry per (old node, new name), users merged; renames (which FX reports alike) dropped."""
    merged: dict[tuple[torch.fx.Node, str], Replaced] = {}
    for entry in log:
        if not isinstance(entry, Replaced):
            continue
        if not entry.old._erased and entry.old.name == entry.new_name:
            continue
        key = (entry.old, entry.new_name)
        if key in merged:
            merged[key].users.extend(entry.users)
        else:
            merged[key] = Replaced(entry.old, entry.new_name, entry.graph, list(entry.users))
    return merged


def _replaced(entry: Replaced) -> Event:
    return events.NODE_REPLACED, {
        "graph": entry.graph,
        "node": entry.old.name,
        "by": entry.new_name,
        "users": sorted({user.name for user in entry.users}),
    }


def _survivors(before: GraphSnapshot, after: GraphSnapshot) -> list[_Survivor]:
    """Nodes present before and after: the same object, or the same name in a graph swapped for a new one."""
    survivors: list[_Survivor] = []
    for path, old_records in before.graphs.items():
        new_records = after.graphs.get(path)
        if new_records is None:
            continue
        if before.graph_objects.get(path) is after.graph_objects.get(path):
            survivors.extend(_Survivor(path, node, node) for node in old_records if node in new_records)
            continue
        by_name = {record.name: node for node, record in new_records.items()}
        for node, record in old_records.items():
            if node in new_records:
                survivors.append(_Survivor(path, node, node))
            elif record.name in by_name:
                survivors.append(_Survivor(path, node, by_name.pop(record.name)))
    return survivors


def _moves(before: GraphSnapshot, after: GraphSnapshot, survivors: Sequence[_Survivor]) -> Iterator[Event]:
    """Survivors whose place among the other survivors changed, fewest first.

    The survivors that keep their relative order form the longest increasing
    run of old positions; every other survivor was moved.
    """
    by_graph: dict[str, dict[torch.fx.Node, torch.fx.Node]] = {}
    for survivor in survivors:
        by_graph.setdefault(survivor.graph, {})[survivor.new] = survivor.old
    for path, old_of in by_graph.items():
        order = [node for node in after.graphs[path] if node in old_of]
        kept = set(old_of.values())
        if [old_of[node] for node in order] == [node for node in before.graphs[path] if node in kept]:
            continue
        old_position = {node: index for index, node in enumerate(before.graphs[path])}
        staying = _longest_increasing(order, [old_position[old_of[node]] for node in order])
        previous: dict[torch.fx.Node, torch.fx.Node | None] = {}
        last = None
        for node in after.graphs[path]:
            previous[node] = last
            last = node
        for node in order:
            if node not in staying:
                before_it = previous[node]
                yield (
                    events.NODE_MOVED,
                    {
                        "graph": path,
                        "node": node.name,
                        "after": before_it.name if before_it is not None else None,
                    },
                )


def _longest_increasing(items: Sequence[torch.fx.Node], keys: Sequence[int]) -> set[torch.fx.Node]:
    """The items of a longest run whose keys increase (patience sorting, O(n log n))."""
    tails: list[int] = []
    tail_items: list[int] = []
    parent: list[int] = [-1] * len(items)
    for index, value in enumerate(keys):
        position = bisect.bisect_left(tails, value)
        if position == len(tails):
            tails.append(value)
            tail_items.append(index)
        else:
            tails[position] = value
            tail_items[position] = index
        parent[index] = tail_items[position - 1] if position else -1
    kept: set[torch.fx.Node] = set()
    index = tail_items[-1] if tail_items else -1
    while index != -1:
        kept.add(items[index])
        index = parent[index]
    return kept


def _unmatched(
    first: GraphSnapshot, second: GraphSnapshot, matched: Any
) -> Iterator[tuple[str, torch.fx.Node, NodeRecord]]:
    for path, records in first.graphs.items():
        others = second.graphs.get(path, {})
        for node, record in records.items():
            if node not in others and node not in matched:
                yield path, node, record


def _same_wiring(old: Any, new: Any, translate: Mapping[torch.fx.Node, torch.fx.Node]) -> bool:
    if old is new:
        return True
    moved = torch.fx.node.map_arg(old, lambda node: translate.get(node, node))
    try:
        return bool(moved == new)
    except RuntimeError:
        return False
