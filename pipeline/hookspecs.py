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
    from pipeline.factory import Factory
    from pipeline.instrumentation import Instrumentation
    from pipeline.stage import Stage

PROJECT = "pt2e_pipeline"
"""The pluggy project name, which is also the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pt2e_pipeline_hookspecs() -> Sequence[object]:
    """Modules or classes holding further ``@hookspec`` functions this plugin defines.

    A plugin family extends the registry with hooks of its own (the
    quantization plugins define one for op annotators); other plugins then
    implement them, and :meth:`~pipeline.registry.Registry.collect` gathers the
    results, collect-all like every hook here.
    """
    raise NotImplementedError


@hookspec
def pt2e_pipeline_stages() -> Sequence[Stage]:
    """The stages this plugin adds. Stage names are unique across all plugins."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_conditions() -> Sequence[Condition]:
    """The conditions this plugin can check. Condition names are unique across all plugins."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_quantizers() -> Sequence[Factory]:
    """Quantizers this plugin offers by name (``--quantizer NAME`` on the command line)."""
    raise NotImplementedError


@hookspec
def pt2e_pipeline_models() -> Sequence[Factory]:
    """Models this plugin offers by name, each built as ``(model, example_inputs)``."""
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
