"""Run options: how strictly to check, and which stages to leave out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

from pipeline import validators
from pipeline.errors import OptionsError

if TYPE_CHECKING:
    from pipeline.plan import Plan

CheckMode = Literal["strict", "warn", "off"]
CHECK_MODES: tuple[str, ...] = ("strict", "warn", "off")


def _optional_count(instance: RunOptions, field: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"RunOptions.bisect must be a count of optional stages (>= 0), got {value!r}")


@attrs.frozen(kw_only=True)
class RunOptions:
    """How a run checks and which stages it runs.

    ``check``: ``"strict"`` raises on a broken condition, ``"warn"`` warns
    (:class:`~pipeline.errors.CheckWarning`) and goes on, ``"off"`` checks
    nothing. ``skip`` names optional stages not to run; ``stop_after`` ends the
    run after the named stage; ``bisect=N`` runs only the first N optional
    stages of the plan (required stages always run), to find the stage that
    breaks a model by halving N.
    """

    check: CheckMode = attrs.field(default="strict", validator=attrs.validators.in_(CHECK_MODES))
    skip: tuple[str, ...] = attrs.field(default=(), converter=validators.names)  # type: ignore[misc]
    stop_after: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(validators.identifier),
    )
    bisect: int | None = attrs.field(default=None, validator=_optional_count)

    def validate_against(self, plan: Plan) -> None:
        """Raise :class:`OptionsError` if the options name stages the plan lacks or cannot skip."""
        for name in (*self.skip, *([self.stop_after] if self.stop_after else [])):
            if name not in plan:
                raise OptionsError(f"no stage named {name!r} in the plan; stages: {', '.join(plan.names)}")
        for name in self.skip:
            planned = plan[name]
            if planned.stage.required:
                raise OptionsError(
                    f"stage {name!r} (plugin {planned.plugin}) is required and cannot be skipped"
                )

    def skip_reason(self, planned_number: int | None, name: str, required: bool) -> str | None:
        """Why the options leave this stage out, or ``None`` if it runs."""
        if required:
            return None
        if name in self.skip:
            return "skip"
        if self.bisect is not None and planned_number is not None and planned_number > self.bisect:
            return f"bisect limit {self.bisect}"
        return None
