"""The broken twin: promises ``no-dropout`` but only pretends to strip it."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from pipeline import Condition, Context, Stage, hookimpl
from pt2e_strip_dropout.stage import StripDropout, no_dropout


@attrs.frozen
class BrokenStripDropout(StripDropout):
    """Claims to remove dropout but leaves it in place."""

    name: str = "strip-dropout-broken"

    def run(self, ctx: Context) -> bool:
        return False


@hookimpl
def pt2e_pipeline_stages() -> Sequence[Stage]:
    return [BrokenStripDropout()]


@hookimpl
def pt2e_pipeline_conditions() -> Sequence[Condition]:
    return [no_dropout]
