"""Graphs as readable text, and what changed between two of them as a unified diff.

One line per node, in graph order, in FX's own notation (``%conv2d :
[num_users=1] = call_function[target=torch.ops.aten.conv2d.default](args =
(%x, %w), kwargs = {})``), nested graphs under a header of their path. Lines
are compared as text, so a renamed node shows as changed wherever it is read.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch.fx

from pipeline.module_tree import graph_modules


def graph_lines(graph_module: torch.fx.GraphModule) -> list[str]:
    """Every node of ``graph_module`` and of the graph modules nested in it, one line each."""
    lines: list[str] = []
    for path, module in graph_modules(graph_module):
        if path:
            lines.append(f"graph {path}:")
        lines.extend(node.format_node() or f"%{node.name}" for node in module.graph.nodes)
    return lines


def unified_diff(before: list[str], after: list[str], before_label: str, after_label: str) -> Iterator[str]:
    """The changed lines with three lines of context, ``-`` for ``before`` and ``+`` for ``after``."""
    return difflib.unified_diff(before, after, before_label, after_label, lineterm="")
