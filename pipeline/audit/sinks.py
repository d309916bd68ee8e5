"""Where the audit stream goes: a JSON-lines file, a list in memory, or the caller's own logger.

Each sink is the wrapped logger of a ``structlog.wrap_logger`` chain plus the
processor that renders for it. The library never touches structlog's or
logging's global configuration: the chain is built per run, explicitly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableSequence
from typing import IO, Any

from structlog.processors import JSONRenderer
from structlog.typing import EventDict, Processor, WrappedLogger

from pipeline.audit.serialize import fallback


def _as_dict(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    return event_dict


def _whole(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> tuple[tuple[EventDict], dict[str, Any]]:
    """Hands the event dict itself to the sink (structlog would spread a returned dict as keywords)."""
    return (event_dict,), {}


def json_renderer() -> Processor:
    """Renders an event (already plain JSON data, see the trail's chain) as one line of JSON."""
    return JSONRenderer(default=fallback, allow_nan=False)


class AuditSink:
    """Base of the sinks: a structlog-wrappable logger with its renderer."""

    def renderer(self) -> Processor:
        """The last processor of the chain, shaping the event for :meth:`info`."""
        return json_renderer()

    def info(self, *args: Any, **kwargs: Any) -> None:
        """Receive one rendered event."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make everything received so far durable."""

    def close(self) -> None:
        """Release the sink's resources; later events are an error."""

    @property
    def destination(self) -> str | None:
        """Where the events go, for reports: a path, ``"memory"``, ``"logger <name>"``, or ``None``."""
        return None


class JsonLinesSink(AuditSink):
    """Appends one JSON object per line to a file, flushed at every stage boundary."""

    def __init__(self, path: str | os.PathLike[str], *, mode: str = "a") -> None:
        if mode not in ("a", "w"):
            raise ValueError(f"JsonLinesSink mode must be 'a' or 'w', got {mode!r}")
        self.path = os.fspath(path)
        self._file: IO[str] | None = None
        self._mode = mode

    def info(self, line: str) -> None:
        handle = self._file
        if handle is None:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            handle = self._file = open(self.path, self._mode, encoding="utf-8")  # noqa: SIM115
            self._mode = "a"
        handle.write(line)
        handle.write("\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"JsonLinesSink({self.path!r})"

    @property
    def destination(self) -> str:
        return self.path


class MemorySink(AuditSink):
    """Keeps events as dicts in a list (``events``), for tests and for callers that post-process.

    The events are plain JSON data, equal to what a JSON-lines file of the same
    run would read back as.
    """

    def __init__(self, events: MutableSequence[dict[str, Any]] | None = None) -> None:
        self.events: MutableSequence[dict[str, Any]] = [] if events is None else events

    def renderer(self) -> Processor:
        return _whole

    @property
    def destination(self) -> str:
        return "memory"

    def info(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class LoggerSink(AuditSink):
    """Forwards events to the caller's logger.

    A :class:`logging.Logger` receives each event as a JSON string at INFO; any
    other logger (a structlog bound logger, say) receives ``info(event, **fields)``
    and renders it through the caller's own configuration.
    """

    def __init__(self, logger: Any) -> None:
        if not callable(getattr(logger, "info", None)):
            raise TypeError(f"an audit logger needs an info() method, got {logger!r}")
        self.logger = logger
        self._stdlib = isinstance(logger, logging.Logger)

    def renderer(self) -> Processor:
        return json_renderer() if self._stdlib else _as_dict

    @property
    def destination(self) -> str:
        return f"logger {getattr(self.logger, 'name', type(self.logger).__name__)}"

    def info(self, *args: Any, **kwargs: Any) -> None:
        if self._stdlib:
            self.logger.info(*args)
        else:
            event = kwargs.pop("event")
            self.logger.info(event, **kwargs)


class DisabledSink(AuditSink):
    """No audit trail: events are neither built nor written."""

    def info(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a disabled audit trail received an event")


AuditDestination = (
    AuditSink | str | os.PathLike[str] | MutableSequence[dict[str, Any]] | logging.Logger | bool | None
)


def resolve_sink(destination: Any) -> AuditSink:
    """The sink for an ``audit=`` argument.

    ``None``/``True``: in memory; ``False``: off; a path: a JSON-lines file
    (appended to); a list: events appended as dicts; a logger: forwarded;
    an :class:`AuditSink`: itself.
    """
    if isinstance(destination, AuditSink):
        return destination
    if destination is None or destination is True:
        return MemorySink()
    if destination is False:
        return DisabledSink()
    if isinstance(destination, (str, os.PathLike)):
        return JsonLinesSink(destination)
    if isinstance(destination, list):
        return MemorySink(destination)
    if callable(getattr(destination, "info", None)):
        return LoggerSink(destination)
    raise TypeError(
        "audit= takes a path, a list, a logger, an AuditSink, True (in memory) or False (off); "
        f"got {destination!r}"
    )
