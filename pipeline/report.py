"""What a run reports back: per-stage timings and node deltas, and where the audit trail went."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:
    import torch.fx

    from pipeline.audit.reader import AuditLog

StageStatus = Literal["ran", "skipped", "failed"]


@attrs.define
class StageReport:
    """One stage of a run: whether it ran, how long it took, what it did to the graph."""

    name: str
    plugin: str
    phase: str
    status: StageStatus
    reason: str | None = None
    seconds: float = 0.0
    nodes_before: int | None = None
    nodes_after: int | None = None
    added: int = 0
    removed: int = 0
    rewired: int = 0
    changed: bool = False

    def cells(self) -> tuple[str, ...]:
        """The row of this stage under :data:`COLUMNS`, as text."""
        return (
            self.name,
            self.plugin,
            self.status if self.reason is None else f"{self.status} ({self.reason})",
            f"{self.seconds * 1000:.1f}",
            "-" if self.nodes_after is None else str(self.nodes_after),
            str(self.added),
            str(self.removed),
            str(self.rewired),
        )


COLUMNS = ("stage", "plugin", "status", "ms", "nodes", "added", "removed", "re-wired")
"""The columns of a stage report row, as :meth:`StageReport.cells` fills them."""


@attrs.define
class RunReport:
    """The stages of one run in order, the run's wall time and where the audit trail went.

    ``audit`` is the file path, ``"memory"`` (see :attr:`RunResult.audit`),
    ``"logger <name>"``, or ``None`` when the trail was off.
    """

    run_id: str
    stages: list[StageReport] = attrs.Factory(list)
    seconds: float = 0.0
    audit: str | None = None
    warnings: list[str] = attrs.Factory(list)

    def ran_names(self) -> list[str]:
        """The stages that ran, in order."""
        return [stage.name for stage in self.stages if stage.status == "ran"]

    def __getitem__(self, name: str) -> StageReport:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def rows(self) -> list[dict[str, Any]]:
        """The stage reports as plain data."""
        return [attrs.asdict(stage) for stage in self.stages]

    def table(self) -> str:
        """A fixed-width table: stage, plugin, status, time, nodes added/removed/re-wired."""
        header = COLUMNS
        rows = [stage.cells() for stage in self.stages]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
        lines += [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        ]
        lines.append(f"total {self.seconds * 1000:.1f} ms; audit: {self.audit or 'off'}")
        return "\n".join(line.rstrip() for line in lines)


@attrs.frozen
class RunResult:
    """The output of a run: the rewritten graph module, the report, and the in-memory audit log.

    ``audit`` is ``None`` unless the trail went to memory (the default); a file
    trail is read back with :meth:`AuditLog.load(report.audit) <pipeline.AuditLog.load>`.
    """

    graph_module: torch.fx.GraphModule | None
    report: RunReport
    audit: AuditLog | None = None
