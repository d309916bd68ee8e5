"""The plan: the order stages run in, computed from what they declare.

Order is never taken from registration or entry-point order. A stage runs after
every stage that ensures what it requires, before every stage that invalidates
what it requires, and as its ``after``/``before`` say; phases run in their
declared order. Among stages free to go, the earlier phase goes first, then
built-in before third-party, then by name, so the plan is the same on every
machine. Every constraint carries its reason, which is how the plan explains
itself and how its errors name the chain that cannot be satisfied.
"""

from __future__ import annotations

import functools
import heapq
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from pipeline.condition import Condition
from pipeline.errors import PlanError
from pipeline.plugin_info import PluginInfo, Provided
from pipeline.stage import Stage


@attrs.frozen
class Constraint:
    """``first`` must run before ``then``, because ``why``."""

    first: str
    then: str
    why: str

    @property
    def reason(self) -> str:
        """The constraint as ``then`` explains its place: ``after 'first': why``."""
        return f"after {self.first!r}: {self.why}"


@attrs.frozen
class PlannedStage:
    """A stage at its place in the plan.

    ``bisect_number`` counts optional stages in plan order from 1 (``None`` for
    required stages); ``reasons`` are the constraints that place it after
    other stages.
    """

    stage: Stage
    plugin: PluginInfo
    position: int
    bisect_number: int | None
    reasons: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.stage.name

    def describe(self) -> dict[str, Any]:
        """The plan row as plain data, for the audit header and ``stages --json``."""
        return {
            "position": self.position,
            "stage": self.stage.name,
            "version": self.stage.version,
            "phase": self.stage.phase,
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "plugin_version": self.plugin.version,
            "builtin": self.plugin.builtin,
            "required": self.stage.required,
            "bisect": self.bisect_number,
            "requires": list(self.stage.requires),
            "ensures": list(self.stage.ensures),
            "invalidates": list(self.stage.invalidates),
            "why": list(self.reasons) or [_UNCONSTRAINED],
            "summary": self.stage.summary,
        }


_UNCONSTRAINED = "no stage constrains it; placed by phase, then built-in first, then name"


@attrs.frozen
class Plan:
    """The resolved order of stages, with the phases and assumed conditions it was built for."""

    stages: tuple[PlannedStage, ...]
    phases: tuple[str, ...]
    assumes: tuple[str, ...]
    conditions: Mapping[str, Provided[Condition]] = attrs.field(repr=False)

    def __iter__(self) -> Iterator[PlannedStage]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, name: str) -> PlannedStage:
        for planned in self.stages:
            if planned.name == name:
                return planned
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(planned.name == name for planned in self.stages)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(planned.name for planned in self.stages)

    def in_phases(self, phases: Sequence[str]) -> tuple[PlannedStage, ...]:
        """The planned stages of the given phases, in plan order."""
        return tuple(planned for planned in self.stages if planned.stage.phase in phases)

    def ensurers(self, condition: str) -> tuple[PlannedStage, ...]:
        """The stages that ensure ``condition``, in plan order."""
        return tuple(planned for planned in self.stages if condition in planned.stage.ensures)

    def describe(self) -> list[dict[str, Any]]:
        """Every row as plain data (a fresh list each call; the rows are computed once)."""
        return [dict(row) for row in self._rows]

    @functools.cached_property
    def _rows(self) -> tuple[dict[str, Any], ...]:
        return tuple(planned.describe() for planned in self.stages)

    def table(self) -> str:
        """The plan as a fixed-width text table: one row per stage, then why it sits there."""
        header = ("#", "stage", "phase", "plugin", "distribution", "version", "requires", "ensures")
        rows = [
            (
                str(planned.position + 1),
                planned.name + ("" if planned.stage.required else f" [bisect {planned.bisect_number}]"),
                planned.stage.phase,
                planned.plugin.name,
                planned.plugin.distribution or "-",
                planned.plugin.version or "-",
                ", ".join(planned.stage.requires) or "-",
                ", ".join(planned.stage.ensures) or "-",
            )
            for planned in self.stages
        ]
        widths = [max(len(row[index]) for row in (header, *rows)) for index in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
        lines.append("  ".join("-" * width for width in widths))
        for planned, row in zip(self.stages, rows, strict=True):
            lines.append(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            )
            for reason in planned.reasons or (_UNCONSTRAINED,):
                lines.append(f"{'':{widths[0]}}  why: {reason}")
        return "\n".join(lines)


def build_plan(
    stages: Sequence[Provided[Stage]],
    conditions: Mapping[str, Provided[Condition]],
    *,
    phases: Sequence[str],
    assumes: Sequence[str] = (),
) -> Plan:
    """Order ``stages``; raise :class:`PlanError` naming stages, plugins and reasons when impossible."""
    by_name = _unique(stages)
    _check_phases(by_name, phases)
    _check_conditions(by_name, conditions, assumes)
    constraints = _constraints(by_name, assumes)
    _check_phase_order(by_name, constraints, phases)
    order = _topological(by_name, constraints, phases)
    incoming: dict[str, list[str]] = defaultdict(list)
    for constraint in constraints:
        incoming[constraint.then].append(constraint.reason)
    planned: list[PlannedStage] = []
    optional = 0
    for position, name in enumerate(order):
        provided = by_name[name]
        number = None
        if not provided.item.required:
            optional += 1
            number = optional
        planned.append(PlannedStage(provided.item, provided.plugin, position, number, tuple(incoming[name])))
    return Plan(tuple(planned), tuple(phases), tuple(assumes), dict(conditions))


def _label(provided: Provided[Stage]) -> str:
    return f"stage {provided.item.name!r} (plugin {provided.plugin})"


def _unique(stages: Sequence[Provided[Stage]]) -> dict[str, Provided[Stage]]:
    grouped: dict[str, list[Provided[Stage]]] = defaultdict(list)
    for provided in stages:
        grouped[provided.item.name].append(provided)
    clashes = {name: group for name, group in grouped.items() if len(group) > 1}
    if clashes:
        lines = [
            f"stage name {name!r} is declared by more than one plugin: "
            + "; ".join(str(provided.plugin) for provided in group)
            for name, group in sorted(clashes.items())
        ]
        raise PlanError("\n".join(lines) + "\nDeny one of them, or rename one stage.")
    return {name: group[0] for name, group in grouped.items()}


def _check_phases(by_name: Mapping[str, Provided[Stage]], phases: Sequence[str]) -> None:
    wrong = [p for p in by_name.values() if p.item.phase not in phases]
    if wrong:
        raise PlanError(
            "\n".join(
                f"{_label(p)} declares phase {p.item.phase!r}, which is not one of the pipeline's "
                f"phases ({', '.join(phases)})"
                for p in wrong
            )
        )


def _check_conditions(
    by_name: Mapping[str, Provided[Stage]],
    conditions: Mapping[str, Provided[Condition]],
    assumes: Sequence[str],
) -> None:
    problems: list[str] = []
    for name in assumes:
        if name not in conditions:
            problems.append(f"the pipeline assumes {name!r}, which no plugin declares as a condition")
    for provided in by_name.values():
        stage = provided.item
        for field in ("requires", "ensures", "invalidates"):
            for name in getattr(stage, field):
                if name not in conditions:
                    problems.append(
                        f"{_label(provided)} {field} {name!r}, which no plugin declares as a condition"
                    )
        for name in stage.requires:
            if name in assumes:
                continue
            if not any(name in other.item.ensures for other in by_name.values() if other is not provided):
                problems.append(
                    f"{_label(provided)} requires {name!r}, which no other stage ensures and the "
                    f"pipeline does not assume"
                )
    if problems:
        raise PlanError("\n".join(problems))


def _constraints(by_name: Mapping[str, Provided[Stage]], assumes: Sequence[str]) -> list[Constraint]:
    ensurers: dict[str, list[str]] = defaultdict(list)
    requirers: dict[str, list[str]] = defaultdict(list)
    for name, provided in sorted(by_name.items()):
        for condition in provided.item.ensures:
            ensurers[condition].append(name)
        for condition in provided.item.requires:
            requirers[condition].append(name)
    constraints: list[Constraint] = []
    for name, provided in sorted(by_name.items()):
        stage = provided.item
        for condition in stage.requires:
            for ensurer in ensurers[condition]:
                if ensurer != name:
                    constraints.append(
                        Constraint(
                            ensurer,
                            name,
                            f"{name!r} requires {condition!r}, which {ensurer!r} ensures",
                        )
                    )
        for condition in stage.invalidates:
            for requirer in requirers[condition]:
                if requirer != name:
                    constraints.append(
                        Constraint(
                            requirer,
                            name,
                            f"{name!r} invalidates {condition!r}, which {requirer!r} requires",
                        )
                    )
        for other in stage.after:
            if other in by_name:
                constraints.append(Constraint(other, name, f"{name!r} declares after={other!r}"))
        for other in stage.before:
            if other in by_name:
                constraints.append(Constraint(name, other, f"{name!r} declares before={other!r}"))
    return constraints


def _check_phase_order(
    by_name: Mapping[str, Provided[Stage]], constraints: Sequence[Constraint], phases: Sequence[str]
) -> None:
    rank = {phase: index for index, phase in enumerate(phases)}
    problems = []
    for constraint in constraints:
        first, then = by_name[constraint.first], by_name[constraint.then]
        if rank[first.item.phase] > rank[then.item.phase]:
            problems.append(
                f"{_label(then)} in phase {then.item.phase!r} must run {constraint.reason}, "
                f"but {_label(first)} is in the later phase {first.item.phase!r}"
            )
    if problems:
        raise PlanError("\n".join(problems))


def _topological(
    by_name: Mapping[str, Provided[Stage]], constraints: Sequence[Constraint], phases: Sequence[str]
) -> list[str]:
    rank = {phase: index for index, phase in enumerate(phases)}
    successors: dict[str, list[Constraint]] = defaultdict(list)
    waiting = {name: 0 for name in by_name}
    for constraint in constraints:
        successors[constraint.first].append(constraint)
        waiting[constraint.then] += 1

    def key(name: str) -> tuple[int, int, str]:
        provided = by_name[name]
        return (rank[provided.item.phase], 0 if provided.plugin.builtin else 1, name)

    ready = [key(name) for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)[2]
        order.append(name)
        for constraint in successors[name]:
            waiting[constraint.then] -= 1
            if waiting[constraint.then] == 0:
                heapq.heappush(ready, key(constraint.then))
    if len(order) < len(by_name):
        stuck = {name for name, count in waiting.items() if count > 0}
        raise PlanError(_describe_cycle(stuck, constraints, by_name))
    return order


def _describe_cycle(
    stuck: set[str], constraints: Sequence[Constraint], by_name: Mapping[str, Provided[Stage]]
) -> str:
    """Walk back from a stuck stage through stuck predecessors until a stage repeats."""
    into: dict[str, list[Constraint]] = defaultdict(list)
    for constraint in constraints:
        if constraint.first in stuck and constraint.then in stuck:
            into[constraint.then].append(constraint)
    current = min(stuck)
    walked: list[Constraint] = []
    seen: dict[str, int] = {}
    while current not in seen:
        seen[current] = len(walked)
        step = min(into[current], key=lambda constraint: constraint.first)
        walked.append(step)
        current = step.first
    cycle = list(reversed(walked[seen[current] :]))
    lines = ["the stages' ordering constraints form a cycle:"]
    for constraint in cycle:
        lines.append(
            f"  {_label(by_name[constraint.first])} must run before "
            f"{_label(by_name[constraint.then])}: {constraint.why}"
        )
    return "\n".join(lines)
