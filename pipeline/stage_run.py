"""One stage's run, as the engine and its instrumentations see it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from pipeline.errors import StageFailedError

if TYPE_CHECKING:
    from pipeline.audit.diff import StageChanges
    from pipeline.context import Context
    from pipeline.plan import PlannedStage
    from pipeline.plugin_info import PluginInfo
    from pipeline.snapshot import GraphSnapshot
    from pipeline.stage import Stage


@attrs.define
class StageRun:
    """The record of one stage's run, filled in as it goes.

    ``before`` is the graph as the stage received it (after its requirements
    were checked) and ``after`` as it left it; ``declared_change`` is what the
    stage's ``run`` returned; ``changes`` are the node events the audit found.
    ``changed_graphs`` are the paths of the graphs
    whose nodes or wiring the stage changed (metadata aside), once known.
    """

    planned: PlannedStage
    ctx: Context
    before: GraphSnapshot | None = None
    after: GraphSnapshot | None = None
    seconds: float = 0.0
    declared_change: bool | None = None
    changes: StageChanges | None = None
    changed_graphs: frozenset[str] | None = None

    @property
    def stage(self) -> Stage:
        return self.planned.stage

    @property
    def plugin(self) -> PluginInfo:
        return self.planned.plugin

    @property
    def changed(self) -> bool:
        """Whether the graph's structure or watched metadata differ after the stage."""
        if self.before is None or self.after is None:
            return True
        if self.before is self.after:
            return False
        if self.changed_graphs:
            return True
        return not self.before.same_as(self.after)

    def failure(self, message: str) -> StageFailedError:
        """The error that fails this stage, naming it and its plugin."""
        return StageFailedError(message, stage=self.stage.name, plugin=self.plugin.name)
