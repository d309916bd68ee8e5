"""Reading an audit log back: a node's history, where it came from, and what each stage did.

The log alone answers the questions, with no model at hand. Nodes are followed
through renames; a name that is erased and later reused starts a new
incarnation, and a source named by a ``node.created`` event is the incarnation
alive at that moment. Runs continue each other when the later one names the
earlier as a parent (a convert after its prepare); an unrelated run starts
afresh.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from pipeline.audit import events as vocabulary
from pipeline.errors import PipelineError


class AuditLogError(PipelineError):
    """An audit log that cannot be read: missing, not JSON lines, or of an unknown schema."""


@attrs.define
class _Incarnation:
    graph: str
    names: list[str]
    events: list[dict[str, Any]]
    start: int
    end: int | None = None


@attrs.frozen
class NodeOrigin:
    """Where one node came from: the stage that created it and its sources, or the baseline graph."""

    node: str
    graph: str
    run: str | None
    stage: str | None
    plugin: str | None
    sources: tuple[str, ...]
    baseline: bool
    event: dict[str, Any] = attrs.field(eq=False, repr=False)

    def __str__(self) -> str:
        if self.baseline:
            made = (
                f"in the graph given to run {self.run}"
                if self.stage is None
                else (f"captured by stage {self.stage!r}")
            )
            return f"{self.node}: {made}"
        sources = ", ".join(self.sources) or "no recorded source"
        return f"{self.node}: created by stage {self.stage!r} ({self.plugin}) from {sources}"


class AuditLog:
    """The events of one or more runs, indexed by node.

    The index is built when a question first needs it: every run returns its
    in-memory trail as an ``AuditLog``, and most are never queried.
    """

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        self.events: list[dict[str, Any]] = list(events)
        self._indexed: dict[tuple[str, str], list[_Incarnation]] | None = None

    def index(self) -> None:
        """Index the events now (queries do it on first use); raises if they are malformed."""
        self._incarnations  # noqa: B018

    @property
    def _incarnations(self) -> dict[tuple[str, str], list[_Incarnation]]:
        if self._indexed is None:
            self._indexed = defaultdict(list)
            try:
                self._index()
            except BaseException:
                self._indexed = None
                raise
        return self._indexed

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Iterable[dict[str, Any]]) -> AuditLog:
        """Read a JSON-lines file (or take events already in memory)."""
        if not isinstance(source, (str, os.PathLike)):
            return cls(source)
        path = os.fspath(source)
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.readlines()
        except OSError as error:
            raise AuditLogError(f"cannot read audit log {path}: {error}") from error
        parsed: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as error:
                raise AuditLogError(f"{path}:{number}: not a JSON object: {error}") from error
            if not isinstance(event, dict) or "event" not in event:
                raise AuditLogError(f"{path}:{number}: not an audit event: {line.strip()[:80]}")
            if event.get("schema") != vocabulary.SCHEMA_VERSION:
                raise AuditLogError(
                    f"{path}:{number}: schema {event.get('schema')!r}; this reader understands "
                    f"schema {vocabulary.SCHEMA_VERSION}"
                )
            parsed.append(event)
        log = cls(parsed)
        try:
            log.index()
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise AuditLogError(
                f"{path}: malformed audit events ({type(error).__name__}: {error})"
            ) from error
        return log

    def runs(self) -> list[str]:
        """The run ids in the log, in order."""
        return [event["run"] for event in self.events if event["event"] == vocabulary.RUN_STARTED]

    def header(self, run: str | None = None) -> dict[str, Any]:
        """The ``run.started`` event of ``run`` (the last run by default)."""
        headers = [e for e in self.events if e["event"] == vocabulary.RUN_STARTED]
        for event in reversed(headers):
            if run is None or event["run"] == run:
                found: dict[str, Any] = event
                return found
        raise KeyError(f"no run {run!r} in the log" if run else "the log holds no run")

    def select(
        self,
        *,
        stage: str | None = None,
        action: str | None = None,
        node: str | None = None,
        run: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events matching every given filter; ``action`` may omit the ``node.`` prefix."""
        wanted = None
        if action is not None:
            wanted = action if "." in action else f"node.{action}"
        return [
            event
            for event in self.events
            if (stage is None or event.get("stage") == stage)
            and (wanted is None or event["event"] == wanted)
            and (node is None or node in (event.get("node"), event.get("by")))
            and (run is None or event.get("run") == run)
        ]

    def history(self, node: str, *, graph: str = "") -> list[dict[str, Any]]:
        """Every event of ``node``'s latest incarnation, from its creation (or baseline) on."""
        return list(self._latest(node, graph).events)

    def origin(self, node: str, *, graph: str = "") -> NodeOrigin:
        """Which stage created ``node`` and from which nodes (or that it was in the baseline)."""
        return self._origin_of(self._latest(node, graph))

    def lineage(self, node: str, *, graph: str = "") -> list[NodeOrigin]:
        """``node``'s origin, then its sources' origins, and so on back to the baseline graph."""
        seen: set[int] = set()
        queue = [self._latest(node, graph)]
        found: list[NodeOrigin] = []
        while queue:
            incarnation = queue.pop(0)
            if id(incarnation) in seen:
                continue
            seen.add(id(incarnation))
            origin = self._origin_of(incarnation)
            found.append(origin)
            when = incarnation.start
            for source in origin.sources:
                earlier = self._alive_at(source, incarnation.graph, when)
                if earlier is not None:
                    queue.append(earlier)
        return found

    def summary(self) -> list[dict[str, Any]]:
        """One row per stage per run: status, time, node counts and events by action."""
        actions: Counter[tuple[str, str, str]] = Counter()
        for event in self.events:
            if event["event"] in vocabulary.NODE_EVENTS:
                actions[(event["run"], event.get("stage") or "", event["event"])] += 1
        rows = []
        for event in self.events:
            name = event["event"]
            if name not in (
                vocabulary.STAGE_FINISHED,
                vocabulary.STAGE_FAILED,
                vocabulary.STAGE_SKIPPED,
            ):
                continue
            status = {
                vocabulary.STAGE_FINISHED: "ran",
                vocabulary.STAGE_FAILED: "failed",
                vocabulary.STAGE_SKIPPED: "skipped",
            }[name]
            key = (event["run"], event["stage"])
            rows.append(
                {
                    "run": event["run"],
                    "stage": event["stage"],
                    "plugin": event.get("plugin"),
                    "status": status,
                    "reason": event.get("reason"),
                    "seconds": event.get("seconds", 0.0),
                    "nodes_before": event.get("nodes_before"),
                    "nodes_after": event.get("nodes_after"),
                    "added": event.get("added", 0),
                    "removed": event.get("removed", 0),
                    "rewired": event.get("rewired", 0),
                    "events": {
                        action.removeprefix("node."): count
                        for (run, stage, action), count in sorted(actions.items())
                        if (run, stage) == key
                    },
                }
            )
        return rows

    def _latest(self, node: str, graph: str) -> _Incarnation:
        incarnations = self._incarnations.get((graph, node))
        if not incarnations:
            raise KeyError(f"no node {node!r} in the log" + (f" (graph {graph!r})" if graph else ""))
        return incarnations[-1]

    def _alive_at(self, name: str, graph: str, index: int) -> _Incarnation | None:
        for incarnation in reversed(self._incarnations.get((graph, name), [])):
            if incarnation.start <= index and (incarnation.end is None or incarnation.end >= index):
                return incarnation
        return None

    def _origin_of(self, incarnation: _Incarnation) -> NodeOrigin:
        first = incarnation.events[0]
        if first["event"] == vocabulary.NODE_CREATED:
            return NodeOrigin(
                node=incarnation.names[-1],
                graph=incarnation.graph,
                run=first.get("run"),
                stage=first.get("stage"),
                plugin=first.get("plugin"),
                sources=tuple(first.get("sources", ())),
                baseline=False,
                event=first,
            )
        return NodeOrigin(
            node=incarnation.names[-1],
            graph=incarnation.graph,
            run=first.get("run"),
            stage=first.get("stage"),
            plugin=None,
            sources=(),
            baseline=True,
            event=first,
        )

    def _index(self) -> None:
        alive: dict[tuple[str, str], _Incarnation] = {}
        for index, event in enumerate(self.events):
            name = event["event"]
            if name == vocabulary.RUN_STARTED and not event.get("parent_runs"):
                for incarnation in alive.values():
                    incarnation.end = index
                alive = {}
            elif name == vocabulary.GRAPH_BASELINE:
                for graph, nodes in event.get("graphs", {}).items():
                    for node_name, *_ in nodes:
                        if (graph, node_name) not in alive:
                            self._begin(alive, graph, node_name, event, index)
            elif name == vocabulary.NODE_CREATED:
                previous = alive.get((event["graph"], event["node"]))
                if previous is not None:
                    previous.end = index
                incarnation = self._begin(alive, event["graph"], event["node"], event, index)
                if event.get("transient"):
                    incarnation.end = index
                    del alive[(event["graph"], event["node"])]
            elif name in vocabulary.NODE_EVENTS or (
                name in (vocabulary.CHECK_VIOLATED, vocabulary.STAGE_NOTE) and event.get("node")
            ):
                self._continue(alive, event, index)

    def _begin(
        self,
        alive: dict[tuple[str, str], _Incarnation],
        graph: str,
        node: str,
        event: dict[str, Any],
        index: int,
    ) -> _Incarnation:
        incarnation = _Incarnation(graph, [node], [event], index)
        alive[(graph, node)] = incarnation
        self._incarnations[(graph, node)].append(incarnation)
        return incarnation

    def _continue(
        self, alive: dict[tuple[str, str], _Incarnation], event: dict[str, Any], index: int
    ) -> None:
        graph = event.get("graph", "")
        name = event["event"]
        key = (graph, event["before"] if name == vocabulary.NODE_RENAMED else event["node"])
        incarnation = alive.get(key)
        if incarnation is None:
            incarnation = self._begin(alive, key[0], key[1], event, index)
        else:
            incarnation.events.append(event)
        if name == vocabulary.NODE_RENAMED:
            del alive[key]
            incarnation.names.append(event["node"])
            alive[(graph, event["node"])] = incarnation
            self._incarnations[(graph, event["node"])].append(incarnation)
        elif name == vocabulary.NODE_ERASED:
            incarnation.end = index
            del alive[key]
        elif name == vocabulary.NODE_REPLACED:
            replacement = alive.get((graph, event["by"]))
            if replacement is not None and replacement is not incarnation:
                replacement.events.append(event)


def format_events(events: Sequence[dict[str, Any]]) -> list[str]:
    """One readable line per event: ``seq stage event node details``."""
    lines = []
    for event in events:
        fields = {
            key: value
            for key, value in event.items()
            if key not in ("schema", "run", "seq", "event", "time", "stage", "plugin", "graph", "node")
        }
        where = event.get("node") or ""
        lines.append(
            f"{event.get('seq', ''):>5} {event.get('stage') or '-':<16} {event['event']:<18} "
            f"{where:<24} {json.dumps(fields, sort_keys=True)}"
        )
    return lines
