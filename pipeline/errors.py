"""The errors the pipeline raises.

Every error is a :class:`PipelineError`, so an embedding toolchain can catch the
whole family in one clause; each subclass names a moment of failure (loading a
plugin, building the plan, running a stage, checking a condition), and its
message names the stage, the plugin and the node involved, with the node's
source line where the graph knows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.fx

    from pipeline.condition import Violation


class PipelineError(Exception):
    """Base of every error raised by the pipeline."""


class PluginError(PipelineError):
    """A plugin could not be loaded, or declares something the registry refuses."""


class PlanError(PipelineError):
    """The stages cannot be put in an order that honours every declared constraint.

    Raised when the plan is built, before any graph is touched.
    """


class OptionsError(PipelineError, ValueError):
    """A run option names something that does not exist or cannot be honoured."""


class StageError(PipelineError):
    """Raised by a stage to report a failure at a particular node.

    Stage authors raise it with the node they could not handle; the engine adds
    the stage, the plugin and the node's source line before it reaches the user.
    """

    def __init__(self, message: str, *, node: torch.fx.Node | None = None) -> None:
        super().__init__(message)
        self.node = node


class StageFailedError(PipelineError):
    """A stage raised, or left the graph in a state the engine refuses.

    ``stage`` and ``plugin`` name the culprit; ``__cause__`` holds the original
    exception. The caller's model is untouched and the audit trail is flushed
    by the time this propagates.
    """

    def __init__(self, message: str, *, stage: str, plugin: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.plugin = plugin


class ConditionViolationError(StageFailedError):
    """A condition did not hold where a stage required or ensured it."""

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        plugin: str,
        condition: str,
        violations: Sequence[Violation],
    ) -> None:
        super().__init__(message, stage=stage, plugin=plugin)
        self.condition = condition
        self.violations = tuple(violations)


class CheckWarning(UserWarning):
    """A condition failed while the pipeline runs with ``check="warn"``."""
