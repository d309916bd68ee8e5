"""The audit trail of one run: a structlog chain from ``emit`` to the chosen sink."""

from __future__ import annotations

import itertools
import time
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from pipeline.audit.events import SCHEMA_VERSION, VOCABULARY
from pipeline.audit.serialize import plain
from pipeline.audit.sinks import AuditSink, DisabledSink

_LEADING = ("schema", "run", "seq", "event", "time")


class _Sequence:
    """Numbers the events of a run from 1, in the order they are emitted."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["seq"] = next(self._counter)
        return event_dict


def _timestamp(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["time"] = round(time.time(), 6)
    return event_dict


def _leading_keys_first(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    ordered = {key: event_dict.pop(key) for key in _LEADING if key in event_dict}
    ordered.update(event_dict)
    return ordered


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
        self._log = structlog.wrap_logger(
            sink,
            processors=[_Sequence(), _timestamp, _leading_keys_first, _plain_json, sink.renderer()],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
            schema=SCHEMA_VERSION,
            run=run_id,
        )

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; ``event`` must belong to the vocabulary."""
        if not self.enabled:
            return
        if event not in VOCABULARY:
            raise ValueError(f"{event!r} is not an audit event; see pipeline.audit.events")
        self._log.info(event, **fields)

    def flush(self) -> None:
        """Make what has been emitted durable (called at every stage boundary)."""
        self.sink.flush()
