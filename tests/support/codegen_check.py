"""Holding :mod:`pipeline.codegen` to FX's own text on every graph it writes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.fx
from torch.fx.graph import PythonCode

from pipeline import codegen


def same_code(ours: PythonCode, theirs: PythonCode) -> bool:
    """Whether two generated codes are the same source, globals, line map and prologue position."""
    return (ours.src, ours.globals, ours._lineno_map, ours._prologue_start) == (
        theirs.src,
        theirs.globals,
        theirs._lineno_map,
        theirs._prologue_start,
    )


@contextlib.contextmanager
def compared_with_fx() -> Iterator[None]:
    """While inside, every code :func:`pipeline.codegen.python_code` writes is checked against FX's."""
    original = codegen.python_code

    def checked(graph: torch.fx.Graph) -> PythonCode | None:
        ours = original(graph)
        if ours is not None:
            theirs = graph.python_code(root_module="self")
            assert same_code(ours, theirs), (
                f"pipeline.codegen differs from FX:\n{ours.src}\n---\n{theirs.src}"
            )
        return ours

    codegen.python_code = checked  # type: ignore[assignment]
    try:
        yield
    finally:
        codegen.python_code = original  # type: ignore[assignment]
