"""The audit trail of one run: a structlog chain from ``emit`` to the chosen sink."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

import structlog

from pipeline.audit.events import SCHEMA_VERSION, VOCABULARY
from pipeline.audit.serialize import plain
from pipeline.audit.sinks import AuditSink, DisabledSink


class _TrailLogger(structlog.BoundLoggerBase):
    """A bound logger whose events arrive whole: stamped, numbered and in field order.

    structlog's ``BoundLogger.info(event, **fields)`` appends the event name
    after the fields; the trail's events put it fourth (see the schema), so
    they are built in order and passed down the chain as they are. Each event
    dict is built for this one call and the trail binds no context, so the
    processors get it directly rather than a merged copy; what the last one
    returns reaches the sink as structlog hands it on (a string, bytes or
    bytearray as the one argument, a tuple as ``(args, kwargs)``, a dict as
    keywords).
    """

    def write(self, event: dict[str, Any]) -> Any:
        if self._context:
            args, kwargs = self._process_event("info", None, event)
            return self._logger.info(*args, **kwargs)
        result: Any = event
        for processor in self._processors:
            result = processor(self._logger, "info", result)
        if type(result) is tuple:
            args, kwargs = result
            return self._logger.info(*args, **kwargs)
        if isinstance(result, (str, bytes, bytearray)):
            return self._logger.info(result)
        if isinstance(result, dict):
            return self._logger.info(**result)
        raise ValueError(
            "the audit sink's last processor must return a str, bytes, bytearray, tuple or dict, "
            f"got {type(result).__name__}"
        )


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
        if self.enabled:
            self.emit_batch(((event, plain(fields)),), {})

    def emit_batch(self, batch: Iterable[tuple[str, dict[str, Any]]], shared: dict[str, Any]) -> None:
        """Write events whose fields, and the ``shared`` fields each starts with, are plain JSON data.

        The recorder's node events are built that way, a stage's worth at a
        time; skipping the walk that would normalize them is most of what an
        event costs. The events of a batch are recorded at one moment and
        carry its time.
        """
        if not self.enabled:
            return
        now = round(time.time(), 6)
        counter, run, write = self._counter, self.run_id, self._log.write
        for event, fields in batch:
            if event not in VOCABULARY:
                raise ValueError(f"{event!r} is not an audit event; see pipeline.audit.events")
            write(
                {
                    "schema": SCHEMA_VERSION,
                    "run": run,
                    "seq": next(counter),
                    "event": event,
                    "time": now,
                    **shared,
                    **fields,
                }
            )

    def flush(self) -> None:
        """Make what has been emitted durable (called at every stage boundary)."""
        self.sink.flush()
