"""The Pipeline: plugins in, plan computed, stages run over a private copy of the caller's graph."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.fx

from pipeline import collector, compilation
from pipeline.audit.fields import ENGINE_META_FIELDS, MetaField
from pipeline.audit.reader import AuditLog
from pipeline.audit.recorder import AuditRecorder
from pipeline.audit.sinks import MemorySink, resolve_sink
from pipeline.audit.trail import AuditTrail
from pipeline.checks import Checker
from pipeline.condition import Condition
from pipeline.context import Context
from pipeline.copying import private_copy
from pipeline.errors import OptionsError, PlanError
from pipeline.instrumentation import Instrumentation
from pipeline.options import CheckMode, RunOptions
from pipeline.plan import Plan, build_plan
from pipeline.plugin_info import Provided
from pipeline.protection import CallerGuard
from pipeline.registry import Registry
from pipeline.report import RunReport, RunResult
from pipeline.run_state import RunState
from pipeline.runner import Runner
from pipeline.stage import Stage

_COMMON_FIELDS = tuple(field.name for field in attrs.fields(Stage))

DEFAULT_PHASES: tuple[str, ...] = ("prepare", "calibrate", "convert")
"""The phases a pipeline runs in order: the caller may calibrate or train between them."""

RUNS_META_KEY = "pt2e_pipeline_runs"
"""``graph_module.meta`` key listing the ids of the runs that produced a module, oldest first."""


class Pipeline:
    """A plan of stages from plugins, and the means to run it on models.

    ``Pipeline(plugins=[...])`` uses exactly the given plugin objects (modules
    or objects carrying ``@hookimpl`` functions) and discovers nothing: an
    embedding toolchain pins what runs. ``Pipeline.default()`` loads every
    plugin of the ``pt2e_pipeline`` entry-point group (the built-ins come that
    way too), filtered by ``allow``/``deny`` lists of plugin or distribution
    names, plus the ``extra`` plugin objects given. The plan is computed here,
    so a plan error surfaces before any graph is touched.

    Run options (``check``, ``skip``, ``stop_after``, ``bisect``) and the
    ``audit`` destination are defaults for every run; each run may override them.
    ``stage_options`` sets stage options by stage name, e.g.
    ``{"convert": {"uncalibrated": "error"}}``; each is validated by the stage.
    """

    def __init__(
        self,
        plugins: Iterable[object] | None = None,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
        extra: Iterable[object] = (),
        check: CheckMode = "strict",
        skip: Iterable[str] = (),
        stop_after: str | None = None,
        bisect: int | None = None,
        audit: Any = None,
        phases: Sequence[str] = DEFAULT_PHASES,
        assumes: Sequence[str] = (),
        instrumentations: Sequence[Instrumentation] = (),
        stage_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        extra = tuple(extra)
        if plugins is not None:
            if allow is not None or tuple(deny) or extra:
                raise OptionsError(
                    "allow/deny/extra apply to discovered plugins; Pipeline(plugins=[...]) "
                    "discovers none (list every plugin in plugins=)"
                )
            self.registry = Registry.hermetic(plugins)
        else:
            self.registry = Registry.discover(allow=allow, deny=deny, extra=extra)
        self.plan: Plan = build_plan(
            _with_options(self.registry.stages, stage_options or {}),
            _unique_conditions(self.registry.conditions),
            phases=tuple(phases),
            assumes=tuple(assumes),
        )
        self.options = RunOptions(check=check, skip=tuple(skip), stop_after=stop_after, bisect=bisect)
        self.options.validate_against(self.plan)
        self.audit = audit
        self.instrumentations = tuple(instrumentations)
        self.meta_fields: tuple[MetaField, ...] = (
            *ENGINE_META_FIELDS,
            *(provided.item for provided in self.registry.meta_fields),
        )

    @classmethod
    def default(cls, **options: Any) -> Pipeline:
        """Every installed plugin (built-ins included), filtered by ``allow``/``deny``, plus ``extra``."""
        return cls(None, **options)

    def prepare(self, model: torch.nn.Module, example_inputs: Any = None, **inputs: Any) -> RunResult:
        """Run the ``prepare`` phase."""
        return self.run(model, example_inputs, phases=("prepare",), **inputs)

    def convert(self, model: torch.nn.Module, **inputs: Any) -> RunResult:
        """Run the ``convert`` phase on a model an earlier run prepared."""
        return self.run(model, None, phases=("convert",), **inputs)

    def run(
        self,
        model: torch.nn.Module,
        example_inputs: Any = None,
        *,
        phases: Sequence[str] | None = None,
        check: CheckMode | None = None,
        skip: Iterable[str] | None = None,
        stop_after: str | None = None,
        bisect: int | None = None,
        audit: Any = ...,
        instrumentations: Sequence[Instrumentation] = (),
        **inputs: Any,
    ) -> RunResult:
        """Run the stages of ``phases`` (all phases by default) on ``model``.

        ``model`` is never changed: a graph module is copied (sharing its
        tensors) before any stage sees it, and any other module is only read
        by the stage that captures it. Everything else the stages need
        (a quantizer, calibration data, ...) is passed by keyword and reaches
        them as ``ctx.inputs``.
        """
        with collector.spared():
            return self._run(
                model,
                example_inputs,
                phases=phases,
                check=check,
                skip=skip,
                stop_after=stop_after,
                bisect=bisect,
                audit=audit,
                instrumentations=instrumentations,
                inputs=inputs,
            )

    def _run(
        self,
        model: torch.nn.Module,
        example_inputs: Any,
        *,
        phases: Sequence[str] | None,
        check: CheckMode | None,
        skip: Iterable[str] | None,
        stop_after: str | None,
        bisect: int | None,
        audit: Any,
        instrumentations: Sequence[Instrumentation],
        inputs: dict[str, Any],
    ) -> RunResult:
        selected = tuple(self.plan.phases if phases is None else phases)
        unknown = [phase for phase in selected if phase not in self.plan.phases]
        if unknown:
            raise OptionsError(
                f"unknown phase(s) {', '.join(unknown)}; the pipeline's phases are "
                f"{', '.join(self.plan.phases)}"
            )
        options = RunOptions(
            check=check or self.options.check,
            skip=tuple(self.options.skip if skip is None else skip),
            stop_after=stop_after if stop_after is not None else self.options.stop_after,
            bisect=bisect if bisect is not None else self.options.bisect,
        )
        options.validate_against(self.plan)
        destination = self.audit if audit is ... else audit
        sink = resolve_sink(destination)
        run_id = uuid.uuid4().hex[:12]
        trail = AuditTrail(sink, run_id)
        graph_module = (
            private_copy(model, [field.key for field in self.meta_fields if field.holds_nodes])
            if isinstance(model, torch.fx.GraphModule)
            else None
        )
        parents = tuple(graph_module.meta.get(RUNS_META_KEY, ())) if graph_module is not None else ()
        ctx = Context(
            graph_module=graph_module,
            inputs={"model": model, "example_inputs": example_inputs, **inputs},
            run_id=run_id,
            trail=trail,
        )
        report = RunReport(run_id, audit=sink.destination)
        run = RunState(
            run_id=run_id,
            plan=self.plan,
            phases=selected,
            options=options,
            ctx=ctx,
            trail=trail,
            report=report,
            plugins=self.registry.plugins,
            meta_fields=self.meta_fields,
            parent_runs=parents,
        )
        chain: list[Instrumentation] = []
        if trail.enabled:
            chain.append(
                AuditRecorder(
                    trail,
                    self.meta_fields,
                    [provided.item for provided in self.registry.describers],
                )
            )
        chain.append(CallerGuard(model))
        chain.extend(provided.item for provided in self.registry.instrumentations)
        chain.extend(self.instrumentations)
        chain.extend(instrumentations)
        chain.append(Checker(options.check, self.plan.conditions))
        try:
            Runner(run, chain).execute(self.plan.in_phases(selected))
        finally:
            if sink is destination:
                sink.flush()
            else:
                sink.close()
        result_module = ctx.graph_module
        if result_module is not None:
            compilation.compile_stale(result_module)
            result_module.meta[RUNS_META_KEY] = [*parents, run_id]
        return RunResult(
            graph_module=result_module,
            report=report,
            audit=AuditLog(sink.events) if isinstance(sink, MemorySink) else None,
        )


def _with_options(
    stages: Sequence[Provided[Stage]], options: Mapping[str, Mapping[str, Any]]
) -> list[Provided[Stage]]:
    known = {provided.item.name for provided in stages}
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionsError(
            f"stage_options names no stage of the pipeline: {', '.join(unknown)}; "
            f"stages: {', '.join(sorted(known))}"
        )
    configured = []
    for provided in stages:
        changes = options.get(provided.item.name)
        if changes:
            fields = {field.name for field in attrs.fields(type(provided.item))}
            wrong = sorted(set(changes) - (fields - set(_COMMON_FIELDS)))
            if wrong:
                raise OptionsError(
                    f"stage {provided.item.name!r} (plugin {provided.plugin}) has no option "
                    f"{', '.join(map(repr, wrong))}; its options: "
                    f"{', '.join(sorted(provided.item.options())) or 'none'}"
                )
            try:
                provided = Provided(attrs.evolve(provided.item, **changes), provided.plugin)
            except (TypeError, ValueError) as error:
                reason = error.args[0] if error.args else error
                raise OptionsError(f"stage {provided.item.name!r}: {reason}") from error
        configured.append(provided)
    return configured


def _unique_conditions(
    conditions: Sequence[Provided[Condition]],
) -> Mapping[str, Provided[Condition]]:
    by_name: dict[str, list[Provided[Condition]]] = {}
    for provided in conditions:
        by_name.setdefault(provided.item.name, []).append(provided)
    clashes = {name: group for name, group in by_name.items() if len(group) > 1}
    if clashes:
        raise PlanError(
            "\n".join(
                f"condition name {name!r} is declared by more than one plugin: "
                + "; ".join(str(provided.plugin) for provided in group)
                for name, group in sorted(clashes.items())
            )
        )
    return {name: group[0] for name, group in by_name.items()}
