"""Instrumentations: callbacks around every stage, kept apart from the stages themselves.

The engine's own services (the audit trail, the condition checks, the guard
over the caller's tensors) are instrumentations, and so can a plugin's or a
caller's be: a profiler, a graph printer, a crash reporter. They nest like a
stack: ``before_stage`` runs in order, ``after_stage`` and ``stage_failed`` in
reverse, and only for the instrumentations whose ``before_stage`` completed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.run_state import RunState
    from pipeline.stage_run import StageRun


class Instrumentation:
    """Base class with no-op callbacks; override the ones you need.

    ``reads_only`` promises that the callbacks never change the graph. The
    engine's own instrumentations make that promise. An instrumentation that
    does not is a suspect at every stage boundary: the engine then signs the
    graph before every stage to prove it left the graph alone (see
    :mod:`pipeline.reading`), even where no condition or ``skip_reason`` ran.
    """

    reads_only: bool = False

    def run_started(self, run: RunState) -> None:
        """Before the first stage of a run."""

    def before_stage(self, step: StageRun) -> None:
        """Before a stage runs. Raising here fails the stage before it starts."""

    def after_stage(self, step: StageRun) -> None:
        """After a stage returned. Raising here fails the stage."""

    def stage_failed(self, step: StageRun, error: BaseException) -> None:
        """After a stage (or an instrumentation around it) raised ``error``."""

    def stage_skipped(self, step: StageRun, reason: str) -> None:
        """Instead of running a stage the options exclude."""

    def run_finished(self, run: RunState, error: BaseException | None) -> None:
        """After the last stage, or after the failure that ended the run."""
