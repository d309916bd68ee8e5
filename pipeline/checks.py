"""The checks instrumentation: requirements before each stage, promises and invariants after.

A failed check names the stage, the condition, each offending node and the
user's source line for it. In ``strict`` mode it fails the stage, in ``warn``
mode it warns and records it; either way it is in the audit trail. A condition
a stage ensured is not checked again as the next stage's requirement, since
nothing ran in between; a condition whose check changes the graph is an error
in its own right.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch.fx

from pipeline import invariants
from pipeline.audit import events
from pipeline.condition import Condition, Violation
from pipeline.errors import CheckWarning, ConditionViolationError
from pipeline.instrumentation import Instrumentation
from pipeline.naming import describe_node, user_frame
from pipeline.options import CheckMode
from pipeline.plugin_info import Provided
from pipeline.reading import Reader

if TYPE_CHECKING:
    from pipeline.run_state import RunState
    from pipeline.stage_run import StageRun

_SHOWN = 10


class Checker(Instrumentation):
    """Checks ``requires`` before, ``ensures`` and the global invariants after, each stage."""

    reads_only = True

    def __init__(self, mode: CheckMode, conditions: Mapping[str, Provided[Condition]]) -> None:
        self._mode = mode
        self._conditions = conditions
        self._holding: set[str] = set()
        self._run: RunState | None = None

    def run_started(self, run: RunState) -> None:
        self._run = run
        self._holding = set()

    def before_stage(self, step: StageRun) -> None:
        if self._mode == "off":
            return
        pending = [name for name in step.stage.requires if name not in self._holding]
        for name, violations in self._check_all(pending, step, before=True):
            if violations:
                self._report(step, name, "requires", violations)
            else:
                self._holding.add(name)

    def after_stage(self, step: StageRun) -> None:
        if self._mode == "off":
            return
        self._holding = set()
        graph_module = step.ctx.graph_module
        rebuilt = step.changed_graphs
        if rebuilt and graph_module is not None and step.before is not None and step.after is not None:
            found = list(invariants.lint(graph_module, rebuilt))
            if found:
                self._report(step, "graph-lint", "invariant", found)
            found = (
                list(invariants.no_new_dangling_nodes(step.before, step.after, rebuilt))
                if step.before.exists
                else []
            )
            if found:
                self._report(step, "no-dangling-nodes", "invariant", found)
        for name, violations in self._check_all(step.stage.ensures, step, before=False):
            if violations:
                self._report(step, name, "ensures", violations)
            else:
                self._holding.add(name)

    def _check_all(
        self, names: Sequence[str], step: StageRun, *, before: bool
    ) -> list[tuple[str, list[Violation]]]:
        """Check the conditions, noting each as a reader of the graph.

        Whether they only read is proven once for every reader between two
        stages (see :mod:`pipeline.reading`), not around each check.
        """
        if not names:
            return []
        graph_module = step.ctx.graph_module
        where = f"{'before' if before else 'after'} stage {step.stage.name!r}"
        if self._run is not None:
            for name in names:
                plugin = self._conditions[name].plugin
                who = f"the check of condition {name!r} (plugin {plugin}) {where}"
                self._run.proof.read_by(Reader(who, step.stage.name, plugin.name))
        return [(name, self._check(name, graph_module, step)) for name in names]

    def _check(self, name: str, graph_module: torch.fx.GraphModule | None, step: StageRun) -> list[Violation]:
        provided = self._conditions[name]
        try:
            found = provided.item.check(graph_module)
            violations = list(found or ())
        except Exception as error:
            raise step.failure(
                f"condition {name!r} (plugin {provided.plugin}) raised while checking around stage "
                f"{step.stage.name!r}: {type(error).__name__}: {error}"
            ) from error
        for violation in violations:
            if not isinstance(violation, Violation):
                raise step.failure(
                    f"condition {name!r} (plugin {provided.plugin}) returned {violation!r}; "
                    f"check() must return Violation objects"
                )
        return violations

    def _report(self, step: StageRun, condition: str, kind: str, violations: Sequence[Violation]) -> None:
        message = violation_message(step, condition, kind, violations, self._ensurers(condition))
        trail = step.ctx.trail
        for violation in violations:
            trail.emit(
                events.CHECK_VIOLATED,
                stage=step.stage.name,
                plugin=step.plugin.name,
                condition=condition,
                kind=kind,
                graph=violation.graph,
                node=violation.node.name if violation.node is not None else None,
                message=violation.message,
                source=_source(violation.node),
                mode=self._mode,
            )
        trail.flush()
        if self._mode == "strict":
            raise ConditionViolationError(
                message,
                stage=step.stage.name,
                plugin=step.plugin.name,
                condition=condition,
                violations=violations,
            )
        if self._run is not None:
            self._run.report.warnings.append(message)
        warnings.warn(message, CheckWarning, stacklevel=2)

    def _ensurers(self, condition: str) -> list[str]:
        if self._run is None:
            return []
        notes = []
        for planned in self._run.plan.ensurers(condition):
            reason = self._run.skipped.get(planned.name)
            if reason is not None:
                notes.append(f"{planned.name!r} was skipped ({reason})")
            elif planned.stage.phase not in self._run.phases:
                notes.append(f"{planned.name!r} belongs to phase {planned.stage.phase!r}, not run here")
        return notes


def violation_message(
    step: StageRun,
    condition: str,
    kind: str,
    violations: Sequence[Violation],
    ensurer_notes: Iterable[str] = (),
) -> str:
    """The message of a failed check: who, what, where, down to the user's source lines."""
    who = f"stage {step.stage.name!r} (plugin {step.plugin})"
    opening: Mapping[str, Callable[[], str]] = {
        "requires": lambda: f"{who} requires {condition!r}, which does not hold before it runs",
        "ensures": lambda: f"{who} ensures {condition!r}, which does not hold after it ran",
        "invariant": lambda: f"{who} broke the invariant {condition!r}",
    }
    lines = [opening[kind]() + ":"]
    for violation in violations[:_SHOWN]:
        where = f" (in {violation.graph})" if violation.graph else ""
        if violation.node is None:
            lines.append(f"  {violation.message}{where}")
        else:
            described = describe_node(violation.node).replace("\n", "\n  ")
            lines.append(f"  {described}{where}\n    {violation.message}")
    if len(violations) > _SHOWN:
        lines.append(f"  ... and {len(violations) - _SHOWN} more")
    notes = list(ensurer_notes)
    if notes:
        lines.append(f"  note: {condition!r} is ensured by " + "; ".join(notes))
    return "\n".join(lines)


def _source(node: torch.fx.Node | None) -> Any:
    return None if node is None else user_frame(node.meta.get("stack_trace"))
