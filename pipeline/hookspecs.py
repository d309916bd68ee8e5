"""The hooks through which every plugin, built-in or third-party, declares what it adds.

Each hook is collect-all: the registry calls every implementation and keeps
every item, so no plugin can hijack a hook by answering first. Implement one
with ``@pipeline.hookimpl`` in a module or object registered under the
``pt2e_pipeline`` entry-point group (or passed to ``Pipeline(plugins=[...])``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pipeline.audit.fields import MetaField, NodeDescriber
    from pipeline.condition import Condition
    from pipeline.instrumentation import Instrumentation
    from pipeline.stage import Stage

PROJECT = "pt2e_pipeline"
"""The pluggy project name, which is also the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pt2e_pipeline_stages() -> Sequence[Stage]:
    """The stages this plugin adds. Stage names are unique across all plugins."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_conditions() -> Sequence[Condition]:
    """The conditions this plugin can check. Condition names are unique across all plugins."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_quantizers() -> Sequence[object]:
    """Named quantizer factories this plugin offers (the quantization plugins define their shape)."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_instrumentations() -> Sequence[Instrumentation]:
    """Instrumentations to run around every stage, such as a profiler or a graph printer."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_meta_fields() -> Sequence[MetaField]:
    """Node metadata keys whose changes the audit trail records, beyond the engine's own."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_node_describers() -> Sequence[NodeDescriber]:
    """Describers adding target-specific details (such as qparams) to node events."""
    raise NotImplementedError
