"""How every command reports a failure: one message naming stage, node and source line; exit status 1."""

from __future__ import annotations

import sys
from types import TracebackType

import click

from pipeline.errors import PipelineError

EXIT_PIPELINE_ERROR = 1


class reported_errors:
    """Turns a PipelineError into one message on stderr and exit status 1 (traceback with --debug)."""

    def __init__(self, ctx: click.Context) -> None:
        root = ctx.find_root().obj or {}
        self._debug = bool(root.get("debug"))

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, PipelineError) and not self._debug:
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_PIPELINE_ERROR)
