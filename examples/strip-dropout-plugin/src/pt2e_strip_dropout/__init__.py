"""The plugin's hook implementations: one stage and the condition it ensures."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import Condition, Stage, hookimpl
from pt2e_strip_dropout.stage import StripDropout, no_dropout


@hookimpl
def pt2e_pipeline_stages() -> Sequence[Stage]:
    return [StripDropout()]


@hookimpl
def pt2e_pipeline_conditions() -> Sequence[Condition]:
    return [no_dropout]
