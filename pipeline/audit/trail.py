"""The audit trail of one run: a structlog chain from ``emit`` to the chosen sink."""

from __future__ import annotations

import itertools
import time
from typing import Any

import structlog

from pipeline.audit.events import SCHEMA_VERSION, VOCABULARY
from pipeline.audit.serialize import plain
from pipeline.audit.sinks import AuditSink, DisabledSink


class _TrailLogger(structlog.BoundLoggerBase):
    """A bound logger whose events arrive whole: stamped, numbered and in field order.

    structlog's ``BoundLogger.info(event, **fields)`` appends the event name
    after the fields; the trail's events put it fourth (see the schema), so
    they are built in order and passed down the chain as they are.
    """

    def write(self, event: dict[str, Any]) -> Any:
        args, kwargs = self._process_event("info", None, event)
        return self._logger.info(*args, **kwargs)


class AuditTrail:
    """Emits the events of one run, numbered, stamped and tagged with the run id.

    Every event starts with ``schema``, ``run``, ``seq`` (from 1), ``event``
    and ``time``, then its own fields, and reaches the sink through the
    sink's renderer as plain JSON data: a file and a list in memory hold the
    same thing.
    """

    def __init__(self, sink: AuditSink, run_id: str) -> None:
        self.sink = sink
        self.run_id = run_id
        self.enabled = not isinstance(sink, DisabledSink)
        self._counter = itertools.count(1)
        self._log = structlog.wrap_logger(
            sink,
            processors=[sink.renderer()],
            wrapper_class=_TrailLogger,
            context_class=dict,
        ).bind()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; ``event`` must belong to the vocabulary."""
        if not self.enabled:
            return
        if event not in VOCABULARY:
            raise ValueError(f"{event!r} is not an audit event; see pipeline.audit.events")
        self._log.write(self._stamped(event, plain(fields)))

    def emit_plain(self, event: str, fields: dict[str, Any]) -> None:
        """Write one event whose fields are already plain JSON data.

        (See :func:`~pipeline.audit.serialize.plain`.)

        The recorder's node events are built that way; skipping the walk that
        would normalize them is most of what an event costs.
        """
        if not self.enabled:
            return
        if event not in VOCABULARY:
            raise ValueError(f"{event!r} is not an audit event; see pipeline.audit.events")
        self._log.write(self._stamped(event, fields))

    def _stamped(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "run": self.run_id,
            "seq": next(self._counter),
            "event": event,
            "time": round(time.time(), 6),
            **fields,
        }

    def flush(self) -> None:
        """Make what has been emitted durable (called at every stage boundary)."""
        self.sink.flush()
