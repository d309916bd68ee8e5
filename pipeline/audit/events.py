"""The audit trail's closed vocabulary of events, and the schema version that names it.

Readers rely on this list: an event name outside it is never written, and a
change to any event's fields raises :data:`SCHEMA_VERSION`. ``docs/audit.md``
shows one example of each.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

RUN_STARTED = "run.started"
RUN_FINISHED = "run.finished"
GRAPH_BASELINE = "graph.baseline"
STAGE_STARTED = "stage.started"
STAGE_FINISHED = "stage.finished"
STAGE_SKIPPED = "stage.skipped"
STAGE_FAILED = "stage.failed"
STAGE_NOTE = "stage.note"
CHECK_VIOLATED = "check.violated"
NODE_CREATED = "node.created"
NODE_ERASED = "node.erased"
NODE_REPLACED = "node.replaced"
NODE_REWIRED = "node.rewired"
NODE_RENAMED = "node.renamed"
NODE_RETARGETED = "node.retargeted"
NODE_MOVED = "node.moved"
NODE_META_CHANGED = "node.meta_changed"

VOCABULARY: frozenset[str] = frozenset(
    {
        RUN_STARTED,
        RUN_FINISHED,
        GRAPH_BASELINE,
        STAGE_STARTED,
        STAGE_FINISHED,
        STAGE_SKIPPED,
        STAGE_FAILED,
        STAGE_NOTE,
        CHECK_VIOLATED,
        NODE_CREATED,
        NODE_ERASED,
        NODE_REPLACED,
        NODE_REWIRED,
        NODE_RENAMED,
        NODE_RETARGETED,
        NODE_MOVED,
        NODE_META_CHANGED,
    }
)

NODE_EVENTS: frozenset[str] = frozenset(name for name in VOCABULARY if name.startswith("node."))
"""The events that describe one node; each has ``graph`` and ``node`` fields."""
