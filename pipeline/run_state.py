"""The state of one run, shared by the runner and the instrumentations."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from typing import TYPE_CHECKING, Any

import attrs

from pipeline.reading import ReadOnlyProof

if TYPE_CHECKING:
    from pipeline.audit.fields import MetaField
    from pipeline.audit.trail import AuditTrail
    from pipeline.context import Context
    from pipeline.options import RunOptions
    from pipeline.plan import Plan
    from pipeline.plugin_info import PluginInfo
    from pipeline.report import RunReport

_REPORTED_PACKAGES = ("torch", "torchao", "pt2e-pipeline", "pluggy", "attrs", "structlog")


@attrs.define
class RunState:
    """One run: its id, plan, options, context and report, and the stages skipped so far and why."""

    run_id: str
    plan: Plan
    phases: tuple[str, ...]
    options: RunOptions
    ctx: Context
    trail: AuditTrail
    report: RunReport
    plugins: tuple[PluginInfo, ...]
    meta_fields: tuple[MetaField, ...] = ()
    parent_runs: tuple[str, ...] = ()
    skipped: dict[str, str] = attrs.Factory(dict)
    proof: ReadOnlyProof = attrs.Factory(ReadOnlyProof)

    def header(self) -> dict[str, Any]:
        """The ``run.started`` event's fields: everything needed to know what ran and where."""
        return {
            "phases": list(self.phases),
            "parent_runs": list(self.parent_runs),
            "options": {
                "check": self.options.check,
                "skip": list(self.options.skip),
                "stop_after": self.options.stop_after,
                "bisect": self.options.bisect,
            },
            "plan": self.plan.describe(),
            "plugins": [
                {"name": info.name, "distribution": info.distribution, "version": info.version}
                for info in self.plugins
            ],
            "packages": package_versions(),
            "python": platform.python_version(),
        }


@functools.cache
def _installed_versions() -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = []
    for name in _REPORTED_PACKAGES:
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a run's results depend on (``None`` when not installed).

    Read once per process: installing packages under a running process is not supported anyway.
    """
    return dict(_installed_versions())
