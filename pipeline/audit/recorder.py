"""The audit instrumentation: records each stage's node-level changes, whatever API it used.

Around every stage it attaches FX's create/erase/replace hooks to the graph
module (and to any module the stage swaps in), then merges what they saw with
the structural diff of the snapshots before and after. It writes the header,
the baseline graph, every stage's start, end, skip or failure, and flushes the
sink at each boundary so that a crash loses nothing already recorded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch.fx

from pipeline.audit import events
from pipeline.audit.diff import Created, Differ, Erased, HookEntry, Replaced, StageChanges
from pipeline.audit.fields import MetaField, NodeDescriber
from pipeline.audit.trail import AuditTrail
from pipeline.instrumentation import Instrumentation
from pipeline.module_tree import graph_modules
from pipeline.snapshot import NodeRecord, readable_target

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.run_state import RunState
    from pipeline.stage_run import StageRun


class AuditRecorder(Instrumentation):
    """Writes the run's audit trail."""

    reads_only = True

    def __init__(
        self,
        trail: AuditTrail,
        meta_fields: Sequence[MetaField],
        describers: Sequence[NodeDescriber],
    ) -> None:
        self._trail = trail
        by_target: dict[Any, list[NodeDescriber]] = defaultdict(list)
        for describer in describers:
            for target in describer.targets:
                by_target[target].append(describer)
        self._differ = Differ([field.key for field in meta_fields], dict(by_target))
        self._log: list[HookEntry] = []
        self._detach: list[Callable[[], None]] = []
        self._ctx: Context | None = None

    def run_started(self, run: RunState) -> None:
        self._trail.emit(events.RUN_STARTED, **run.header())
        graph_module = run.ctx.graph_module
        if graph_module is not None:
            self._baseline(graph_module, stage=None)
        self._trail.flush()

    def run_finished(self, run: RunState, error: BaseException | None) -> None:
        self._trail.emit(
            events.RUN_FINISHED,
            status="failed" if error is not None else "ok",
            stages=run.report.ran_names(),
            seconds=round(run.report.seconds, 6),
            error=_error_fields(error) if error is not None else None,
        )
        self._trail.flush()

    def before_stage(self, step: StageRun) -> None:
        graph_module = step.ctx.graph_module
        self._trail.emit(
            events.STAGE_STARTED,
            **_stage_fields(step),
            nodes=_count(graph_module),
        )
        self._log = []
        self._ctx = step.ctx
        if graph_module is not None:
            self._attach(graph_module)
        self._detach.append(step.ctx.on_graph_module(self._attach))

    def after_stage(self, step: StageRun) -> None:
        self._finish(step, None)

    def stage_failed(self, step: StageRun, error: BaseException) -> None:
        self._finish(step, error)

    def stage_skipped(self, step: StageRun, reason: str) -> None:
        self._trail.emit(events.STAGE_SKIPPED, **_stage_fields(step), reason=reason)

    def _finish(self, step: StageRun, error: BaseException | None) -> None:
        for detach in self._detach:
            detach()
        self._detach = []
        log, self._log = self._log, []
        before, after = step.before, step.after
        if before is not None and after is not None:
            if not before.exists and after.exists and step.ctx.graph_module is not None:
                self._baseline(step.ctx.graph_module, stage=step.stage.name)
                changes = None
            elif before is after and not log:
                changes = StageChanges((), 0, 0, 0)
            else:
                changes = self._differ.changes(before, after, log)
                self._trail.emit_batch(changes.events, {"stage": step.stage.name, "plugin": step.plugin.name})
        else:
            changes = None
        common = {
            **_stage_fields(step),
            "seconds": round(step.seconds, 6),
            "nodes_before": before.node_count if before is not None else None,
            "nodes_after": after.node_count if after is not None else None,
            "hash_before": before.fingerprint if before is not None and before.exists else None,
            "hash_after": after.fingerprint if after is not None and after.exists else None,
            "added": changes.added if changes else 0,
            "removed": changes.removed if changes else 0,
            "rewired": changes.rewired if changes else 0,
        }
        if error is None:
            self._trail.emit(
                events.STAGE_FINISHED,
                **common,
                changed=step.changed,
                declared_change=step.declared_change,
            )
        else:
            last = _last_touched(log)
            self._trail.emit(
                events.STAGE_FAILED,
                **common,
                error=_error_fields(error),
                last_node=last,
            )
        step.changes = changes
        self._trail.flush()

    def _attach(self, graph_module: torch.fx.GraphModule) -> None:
        for path, module in graph_modules(graph_module):
            self._detach.append(self._hook(path, module))

    def _hook(self, path: str, module: torch.fx.GraphModule) -> Callable[[], None]:
        log = self._log
        ctx = self._ctx

        def created(node: torch.fx.Node) -> None:
            log.append(Created(node, path, ctx.current_origin if ctx is not None else None))

        def erased(node: torch.fx.Node) -> None:
            log.append(Erased(node, path, _record(node)))

        def replaced(old: torch.fx.Node, new: str, user: torch.fx.Node) -> None:
            log.append(Replaced(old, new, path, [user]))

        module._register_create_node_hook(created)
        module._register_erase_node_hook(erased)
        module._register_replace_node_hook(replaced)

        def detach() -> None:
            module._unregister_create_node_hook(created)
            module._unregister_erase_node_hook(erased)
            module._unregister_replace_node_hook(replaced)

        return detach

    def _baseline(self, graph_module: torch.fx.GraphModule, *, stage: str | None) -> None:
        graphs = {
            path: [[node.name, node.op, readable_target(node.target)] for node in module.graph.nodes]
            for path, module in graph_modules(graph_module)
        }
        self._trail.emit_batch(((events.GRAPH_BASELINE, {"stage": stage, "graphs": graphs}),), {})


def _record(node: torch.fx.Node) -> NodeRecord:
    return NodeRecord(
        node.name,
        node.op,
        readable_target(node.target),
        node.args,
        node.kwargs,
        (),
        len(node.users),
    )


def _count(graph_module: torch.fx.GraphModule | None) -> int | None:
    if graph_module is None:
        return None
    return sum(len(module.graph.nodes) for _, module in graph_modules(graph_module))


def _stage_fields(step: StageRun) -> dict[str, Any]:
    return {
        "stage": step.stage.name,
        "plugin": step.plugin.name,
        "phase": step.stage.phase,
        "position": step.planned.position,
    }


def _last_touched(log: Sequence[HookEntry]) -> str | None:
    for entry in reversed(log):
        node = entry.old if isinstance(entry, Replaced) else entry.node
        return node.name
    return None


def _error_fields(error: BaseException) -> dict[str, Any]:
    cause = error.__cause__ if error.__cause__ is not None else error
    node = getattr(cause, "node", None)
    return {
        "type": type(cause).__name__,
        "message": str(error),
        "node": node.name if isinstance(node, torch.fx.Node) else None,
    }
