"""Stages: the units of work a pipeline runs, one plugin declaration each.

A stage says what it needs (``requires``), what it promises (``ensures``) and
what it breaks (``invalidates``) in terms of condition names; the plan derives
the order from these, and the engine checks them around every run of the stage.
Options are further frozen attrs fields with validators, so a bad option fails
when the stage is built, naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from pipeline import validators

if TYPE_CHECKING:
    from pipeline.context import Context

_NAME_LISTS = ("requires", "ensures", "invalidates", "after", "before")


@attrs.frozen(kw_only=True)
class Stage:
    """Base class of every stage; subclass it with ``@attrs.frozen``.

    ``name`` is stable across versions (plans, skip lists and audit logs refer
    to it); ``version`` changes when the stage's behaviour does. ``after`` and
    ``before`` order this stage against others by name, and only when those are
    present. ``required`` stages are never skipped by bisection.

    Subclasses redefine these fields with their own defaults; the declaration
    is checked after ``__init__`` whatever the subclass did to the fields (a
    subclass defining ``__attrs_post_init__`` calls ``super().__attrs_post_init__()``).

    :meth:`run` receives the :class:`~pipeline.Context`. It returns ``False`` to
    declare that it left the graph as it found it (the engine verifies the
    claim), or ``None``/``True`` otherwise. :meth:`skip_reason` lets a stage
    that has nothing to do in a run say so before it runs.
    """

    name: str
    version: str = "1"
    phase: str = "prepare"
    requires: tuple[str, ...] = ()
    ensures: tuple[str, ...] = ()
    invalidates: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    required: bool = False

    def __attrs_post_init__(self) -> None:
        check_declaration(self)

    def run(self, ctx: Context) -> bool | None:
        """Do the stage's work on ``ctx.graph_module``."""
        raise NotImplementedError(f"stage {self.name!r} does not implement run()")

    def skip_reason(self, ctx: Context) -> str | None:
        """Why running the stage in this run would change nothing, or ``None`` to run it.

        A stage that does not apply (a QAT-only stage in a post-training run,
        a fold with nothing to fold) is then recorded as skipped with this
        reason, and the run spares the snapshots, diffs and checks around it.
        Like a condition's check it must only read; the engine verifies that
        the graph is as it was. The default runs the stage.
        """
        return None

    @property
    def summary(self) -> str:
        """The first line of the stage class's docstring."""
        doc = type(self).__doc__ or ""
        return doc.strip().split("\n")[0]

    def options(self) -> dict[str, Any]:
        """The stage's own fields beyond those every stage has, for plans and reproducers."""
        common = {field.name for field in attrs.fields(Stage)}
        return {
            field.name: getattr(self, field.name)
            for field in attrs.fields(type(self))
            if field.name not in common
        }


def check_declaration(stage: Stage) -> None:
    """Normalize and validate the fields every stage has; raise naming the class and field."""
    fields = {field.name: field for field in attrs.fields(type(stage))}
    owner = type(stage).__name__
    validators.identifier(stage, fields["name"], stage.name)
    validators.identifier(stage, fields["phase"], stage.phase)
    if not isinstance(stage.version, str):
        raise TypeError(f"{owner}.version must be a string, got {stage.version!r}")
    if not isinstance(stage.required, bool):
        raise TypeError(f"{owner}.required must be True or False, got {stage.required!r}")
    for name in _NAME_LISTS:
        object.__setattr__(stage, name, validators.to_names(getattr(stage, name), stage, fields[name]))
    both = sorted(set(stage.invalidates) & set(stage.ensures))
    if both:
        raise ValueError(
            f"{owner}.invalidates and .ensures both name {', '.join(both)}: "
            f"a stage cannot break what it promises"
        )
    for name in ("after", "before"):
        if stage.name in getattr(stage, name):
            raise ValueError(f"{owner}.{name} names the stage itself ({stage.name!r})")
