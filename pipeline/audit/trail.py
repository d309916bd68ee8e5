"""The audit trail of one run: a structlog chain from ``emit`` to the chosen sink."""

from __future__ import annotations

import itertools
import time
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from pipeline.audit.events import SCHEMA_VERSION, VOCABULARY
from pipeline.audit.serialize import plain
from pipeline.audit.sinks import AuditSink, DisabledSink


class _Stamp:
    """Numbers the events of a run from 1, stamps the time, and puts the common fields first."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        stamped: EventDict = {
            "schema": event_dict.pop("schema"),
            "run": event_dict.pop("run"),
            "seq": next(self._counter),
            "event": event_dict.pop("event"),
            "time": round(time.time(), 6),
        }
        stamped.update(event_dict)
        return stamped


def _plain_json(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Every sink receives plain JSON data: files and memory hold the same thing."""
    plain_event: EventDict = plain(event_dict)
    return plain_event


class AuditTrail:
    """Emits the events of one run, numbered, stamped and tagged with the run id."""

    def __init__(self, sink: AuditSink, run_id: str) -> None:
        self.sink = sink
        self.run_id = run_id
        self.enabled = not isinstance(sink, DisabledSink)
        stamp = _Stamp()
        self._log = self._chain(sink, stamp, _plain_json)
        self._plain_log = self._chain(sink, stamp)

    def _chain(self, sink: AuditSink, *processors: Processor) -> Any:
        """A bound logger over ``sink`` (bound now, so that no event goes through the lazy proxy)."""
        return structlog.wrap_logger(
            sink,
            processors=[*processors, sink.renderer()],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            schema=SCHEMA_VERSION,
            run=self.run_id,
        ).bind()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; ``event`` must belong to the vocabulary."""
        if not self.enabled:
            return
        if event not in VOCABULARY:
            raise ValueError(f"{event!r} is not an audit event; see pipeline.audit.events")
        self._log.info(event, **fields)

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
        self._plain_log.info(event, **fields)

    def flush(self) -> None:
        """Make what has been emitted durable (called at every stage boundary)."""
        self.sink.flush()
