"""The invariants every stage must keep, checked after each stage that changed the graph.

They hold for any graph, whatever the stages are for: FX's lint rules hold, the
stage left no node computing a value nobody uses, and the graph still generates
Python code, so later stages and the caller can run it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch.fx

from pipeline import compilation, emission
from pipeline.condition import Violation
from pipeline.lint import lint_graph
from pipeline.module_tree import graph_modules
from pipeline.snapshot import GraphSnapshot, same_arguments


def lint(graph_module: torch.fx.GraphModule, paths: Collection[str] | None = None) -> Iterator[Violation]:
    """FX's lint rules on every graph (or on those at ``paths``), each problem at its node.

    See :mod:`pipeline.lint`: topological order, node ownership, unique
    names, targets that exist.
    """
    for path, module in graph_modules(graph_module):
        if paths is None or path in paths:
            yield from lint_graph(module, path)


def no_new_dangling_nodes(
    before: GraphSnapshot, after: GraphSnapshot, paths: Collection[str] | None = None
) -> Iterator[Violation]:
    """No node the stage created, or whose users it took away, is left without users.

    Side-effecting nodes, placeholders and outputs may stand alone, and so may
    anything in a graph the stage produced from nothing (a capture). Only the
    graphs at ``paths`` are looked at, when given: those whose wiring changed.
    """
    for path, records in after.graphs.items():
        if paths is not None and path not in paths:
            continue
        previous = before.graphs.get(path, {})
        for node, record in records.items():
            if record.users or node.op in ("placeholder", "output"):
                continue
            old = previous.get(node)
            if old is not None and old.users == 0:
                continue
            if node.op in ("call_function", "call_method", "call_module") and node.is_impure():
                continue
            yield Violation(
                "has no users: the stage left it dangling (erase it, or use its value)",
                node=node,
                graph=path,
            )


def generates_code(
    graph_module: torch.fx.GraphModule,
    changed: set[str],
    before: GraphSnapshot,
    after: GraphSnapshot,
) -> Iterator[Violation]:
    """Every changed graph still generates Python code; a graph that does not is a violation.

    A graph the stage kept (the same graph object, as ``before`` and ``after``
    show) whose created and changed nodes all :func:`always emit
    <pipeline.emission.always_emits>` still generates the code it generated
    before the stage; any other changed graph has its code generated. The
    code is compiled and installed when the module next runs (see
    :mod:`pipeline.compilation`).
    """
    for path, module in graph_modules(graph_module):
        if path not in changed:
            continue
        if _only_emitting_changes(path, module, before, after):
            compilation.defer(module)
            continue
        try:
            compilation.generate(module)
        except Exception as error:
            yield Violation(f"code generation failed: {type(error).__name__}: {error}", graph=path)


def _only_emitting_changes(
    path: str, module: torch.fx.GraphModule, before: GraphSnapshot, after: GraphSnapshot
) -> bool:
    old, new = before.graphs.get(path), after.graphs.get(path)
    if old is None or new is None or before.graph_objects.get(path) is not module.graph:
        return False
    touched = (
        node
        for node, record in new.items()
        if (previous := old.get(node)) is None
        or previous[:3] != record[:3]
        or not same_arguments(previous.args, record.args)
        or not same_arguments(previous.kwargs, record.kwargs)
    )
    return emission.all_emit(touched)
