"""pt2e-pipeline's engine: stages, conditions, plugins, plans, checks and the audit trail.

The engine knows graphs and stages, nothing of quantization; the quantization
flow lives in the ``plugins`` package and reaches the engine through the same
hooks a third-party plugin uses.
"""

from pipeline.audit.fields import MetaField, NodeDescriber
from pipeline.audit.reader import AuditLog, AuditLogError, NodeOrigin
from pipeline.audit.sinks import AuditSink, JsonLinesSink, LoggerSink, MemorySink
from pipeline.condition import Condition, FunctionCondition, Violation, condition
from pipeline.context import Context, Origin
from pipeline.engine import DEFAULT_PHASES, Pipeline
from pipeline.errors import (
    CheckWarning,
    ConditionViolationError,
    OptionsError,
    PipelineError,
    PlanError,
    PluginError,
    StageError,
    StageFailedError,
)
from pipeline.factory import Factory
from pipeline.hookspecs import hookimpl, hookspec
from pipeline.instrumentation import Instrumentation
from pipeline.options import RunOptions
from pipeline.plan import Plan, PlannedStage
from pipeline.plugin_info import PluginInfo, Provided
from pipeline.report import RunReport, RunResult, StageReport
from pipeline.stage import Stage
from pipeline.stage_run import StageRun

__all__ = [
    "DEFAULT_PHASES",
    "AuditLog",
    "AuditLogError",
    "AuditSink",
    "CheckWarning",
    "Condition",
    "ConditionViolationError",
    "Context",
    "Factory",
    "FunctionCondition",
    "Instrumentation",
    "JsonLinesSink",
    "LoggerSink",
    "MemorySink",
    "MetaField",
    "NodeDescriber",
    "NodeOrigin",
    "OptionsError",
    "Origin",
    "Pipeline",
    "PipelineError",
    "Plan",
    "PlanError",
    "PlannedStage",
    "PluginError",
    "PluginInfo",
    "Provided",
    "RunOptions",
    "RunReport",
    "RunResult",
    "Stage",
    "StageError",
    "StageFailedError",
    "StageReport",
    "StageRun",
    "Violation",
    "condition",
    "hookimpl",
    "hookspec",
]
