"""Running planned stages: the loop every phase and every whole run goes through.

For each stage: decide whether the options and the stage itself let it run;
enter the instrumentations in order; prove that the readers since the last
stage left the graph alone; run the stage on the private graph; snapshot the
result; verify a declared "no change"; generate the code of what changed; leave the
instrumentations in reverse order. A failure anywhere becomes a
:class:`~pipeline.errors.StageFailedError` naming the stage and plugin (with the
node and its source line when known), after every entered instrumentation has
seen it, so the audit trail is complete and flushed before the caller sees it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch.fx

from pipeline import collector, invariants
from pipeline.audit.fields import MetaField
from pipeline.errors import PipelineError, StageError, StageFailedError
from pipeline.instrumentation import Instrumentation
from pipeline.naming import describe_node
from pipeline.plan import PlannedStage
from pipeline.reading import Reader, ReadOnlyProof
from pipeline.report import StageReport
from pipeline.run_state import RunState
from pipeline.snapshot import GraphSnapshot
from pipeline.stage import Stage
from pipeline.stage_run import StageRun


class Runner:
    """Runs the stages of one run through its instrumentations."""

    def __init__(self, run: RunState, instrumentations: Sequence[Instrumentation]) -> None:
        self._run = run
        self._instrumentations = tuple(instrumentations)
        self._meta_fields = run.meta_fields
        self._proof = run.proof = ReadOnlyProof(
            [type(i).__name__ for i in self._instrumentations if not i.reads_only]
        )
        self._last: tuple[torch.fx.GraphModule | None, GraphSnapshot] | None = None

    def execute(self, stages: Sequence[PlannedStage]) -> None:
        """Run ``stages`` in order, honouring skip, bisect and stop-after."""
        run = self._run
        started = time.perf_counter()
        error: BaseException | None = None
        self._opening_snapshot()
        for instrumentation in self._instrumentations:
            instrumentation.run_started(run)
        try:
            stop_after = run.options.stop_after
            stopped = False
            for planned in stages:
                step = StageRun(planned, run.ctx)
                reason = (
                    "stopped after " + repr(stop_after)
                    if stopped
                    else run.options.skip_reason(planned.bisect_number, planned.name, planned.stage.required)
                )
                if reason is None:
                    reason = self._nothing_to_do(step)
                if reason is not None:
                    self._skip(step, reason)
                    continue
                self._run_one(step)
                stopped = planned.name == stop_after
            self._proof.verify(run.ctx.graph_module, upcoming=None)
        except BaseException as failure:
            error = failure
            raise
        finally:
            run.report.seconds = time.perf_counter() - started
            self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        late: BaseException | None = None
        for instrumentation in reversed(self._instrumentations):
            try:
                instrumentation.run_finished(self._run, error)
            except PipelineError as problem:
                late = late or problem
        if late is not None and error is None:
            raise late

    def _opening_snapshot(self) -> None:
        """The graph as the run received it, signed, so that readers before the first stage are held to it."""
        graph_module = self._run.ctx.graph_module
        snapshot = GraphSnapshot.take(graph_module, self._meta_fields, signed=True)
        assert snapshot.signature is not None
        self._last = (graph_module, snapshot)
        self._proof.signed(graph_module, snapshot.signature)

    def _nothing_to_do(self, step: StageRun) -> str | None:
        """The stage's own :meth:`~pipeline.Stage.skip_reason`, held to only reading the graph."""
        if type(step.stage).skip_reason is Stage.skip_reason:
            return None
        ctx = self._run.ctx
        graph_module = ctx.graph_module
        ctx.current = step.planned
        self._proof.read_by(
            Reader(
                f"skip_reason() of stage {step.stage.name!r} (plugin {step.plugin})",
                step.stage.name,
                step.plugin.name,
            )
        )
        try:
            reason = step.stage.skip_reason(ctx)
        except Exception as raw:
            error = _as_stage_failure(raw, step)
            if error is raw:
                raise
            raise error from raw
        finally:
            ctx.current = None
        if graph_module is not ctx.graph_module:
            raise step.failure(
                f"stage {step.stage.name!r} (plugin {step.plugin}) replaced the graph module in "
                f"skip_reason(), which must only read"
            )
        if reason is not None and not isinstance(reason, str):
            raise step.failure(
                f"stage {step.stage.name!r} (plugin {step.plugin}) returned {reason!r} from "
                f"skip_reason(); it must return a string or None"
            )
        return reason

    def _skip(self, step: StageRun, reason: str) -> None:
        self._run.skipped[step.stage.name] = reason
        self._run.report.stages.append(
            StageReport(step.stage.name, step.plugin.name, step.stage.phase, "skipped", reason)
        )
        for instrumentation in self._instrumentations:
            instrumentation.stage_skipped(step, reason)

    def _run_one(self, step: StageRun) -> None:
        ctx = self._run.ctx
        ctx.current = step.planned
        pending: list[Instrumentation] = []
        try:
            for instrumentation in self._instrumentations:
                instrumentation.before_stage(step)
                pending.append(instrumentation)
            step.before = self._snapshot_before(step)
            started = time.perf_counter()
            declared = step.stage.run(ctx)
            step.seconds = time.perf_counter() - started
            step.declared_change = None if declared is None else bool(declared)
            step.after = self._snapshot_after(ctx.graph_module)
            self._verify(step)
            while pending:
                pending[-1].after_stage(step)
                pending.pop()
        except BaseException as raw:
            error = _as_stage_failure(raw, step)
            if step.after is None and step.before is not None:
                step.after = _best_effort_snapshot(ctx.graph_module, self._meta_fields)
            for instrumentation in reversed(pending):
                try:
                    instrumentation.stage_failed(step, error)
                except Exception as secondary:
                    error.add_note(
                        f"while handling it, {type(instrumentation).__name__}.stage_failed raised "
                        f"{type(secondary).__name__}: {secondary}"
                    )
            self._record(step, "failed")
            if error is raw:
                raise
            raise error from raw
        finally:
            ctx.current = None
        self._record(step, "ran")
        collector.settle()

    def _snapshot_before(self, step: StageRun) -> GraphSnapshot:
        """The previous stage's closing snapshot, once the readers since are proven to have only read."""
        graph_module = step.ctx.graph_module
        self._proof.verify(
            graph_module, upcoming=Reader(f"stage {step.stage.name!r}", step.stage.name, step.plugin.name)
        )
        last = self._last
        if last is None or last[0] is not graph_module:
            return GraphSnapshot.take(graph_module, self._meta_fields)
        return last[1]

    def _snapshot_after(self, graph_module: torch.fx.GraphModule | None) -> GraphSnapshot:
        """The stage's result, signed in the same walk: the point the next readers are held to."""
        snapshot = GraphSnapshot.take(graph_module, self._meta_fields, signed=True)
        assert snapshot.signature is not None
        if self._last is not None:
            snapshot.follows(self._last[1])
        self._last = (graph_module, snapshot)
        self._proof.signed(graph_module, snapshot.signature)
        return snapshot

    def _verify(self, step: StageRun) -> None:
        assert step.before is not None and step.after is not None
        changed = step.before.changed_graphs(step.after)
        step.changed_graphs = frozenset(changed)
        if not changed:
            step.after.has_structure_of(step.before)
        if not changed and step.before.same_metadata(step.after):
            self._keep_earlier_snapshot(step)
        elif step.declared_change is False:
            raise step.failure(
                f"stage {step.stage.name!r} (plugin {step.plugin}) returned False (no change) but "
                f"changed the graph (hash {step.before.fingerprint} -> {step.after.fingerprint})"
            )
        if changed and step.ctx.graph_module is not None:
            problems = list(
                invariants.generates_code(step.ctx.graph_module, changed, step.before, step.after)
            )
            if problems:
                raise step.failure(
                    f"stage {step.stage.name!r} (plugin {step.plugin}) left a graph that does not "
                    f"compile: " + "; ".join(problem.message for problem in problems)
                )

    def _keep_earlier_snapshot(self, step: StageRun) -> None:
        """An unchanged graph keeps the snapshot it had, so its fingerprint and diff are not redone."""
        assert step.before is not None
        step.after = step.before
        if self._last is not None:
            self._last = (self._last[0], step.before)

    def _record(self, step: StageRun, status: str) -> None:
        changes = step.changes
        self._run.report.stages.append(
            StageReport(
                step.stage.name,
                step.plugin.name,
                step.stage.phase,
                "ran" if status == "ran" else "failed",
                seconds=step.seconds,
                nodes_before=step.before.node_count if step.before is not None else None,
                nodes_after=step.after.node_count if step.after is not None else None,
                added=changes.added if changes else 0,
                removed=changes.removed if changes else 0,
                rewired=changes.rewired if changes else 0,
                changed=step.changed if step.before is not None and step.after is not None else False,
            )
        )


def _best_effort_snapshot(
    graph_module: torch.fx.GraphModule | None, meta_fields: Sequence[MetaField]
) -> GraphSnapshot | None:
    try:
        return GraphSnapshot.take(graph_module, meta_fields)
    except Exception:
        return None


def _as_stage_failure(error: BaseException, step: StageRun) -> BaseException:
    if isinstance(error, StageFailedError) or not isinstance(error, Exception):
        return error
    who = f"stage {step.stage.name!r} (plugin {step.plugin})"
    if isinstance(error, StageError) and error.node is not None:
        message = f"{who} failed at {describe_node(error.node)}\n  {error}"
    elif isinstance(error, StageError):
        message = f"{who} failed: {error}"
    else:
        message = f"{who} raised {type(error).__name__}: {error}"
    failure = step.failure(message)
    failure.__cause__ = error
    return failure
