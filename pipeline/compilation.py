"""Compiling a graph module's Python code when it is next needed, not after every stage.

A graph module runs the Python code generated from its graph; a stage that
changes the graph leaves that code stale. Generating the code is what can
fail, so the engine generates it after every stage that changed the graph
(see :func:`pipeline.invariants.generates_code`); compiling and installing it
is deferred: the module's ``forward`` becomes a stand-in that compiles on its
first call, and every module a run returns is compiled before the caller gets
it. A pipeline of many stages thus compiles once, not once per stage.
"""

from __future__ import annotations

from typing import Any

import torch.fx

from pipeline.snapshot import graph_modules


def _compile_then_call(self: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
    self.recompile()
    return self(*args, **kwargs)


def mark_stale(module: torch.fx.GraphModule) -> None:
    """Make ``module`` compile its graph on the next call.

    The class is the module's own: FX gives every graph module instance a class.
    """
    type(module).forward = _compile_then_call


def is_stale(module: torch.fx.GraphModule) -> bool:
    """Whether ``module`` still runs the stand-in rather than code compiled from its graph."""
    return type(module).__dict__.get("forward") is _compile_then_call


def compile_stale(root: torch.fx.GraphModule) -> None:
    """Compile every stale graph module in ``root`` so that ``code`` and ``forward`` match the graphs."""
    for _, module in graph_modules(root):
        if is_stale(module):
            module.recompile()
