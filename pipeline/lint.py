"""Whether a graph is well formed, with every problem named at its node.

The rules are those of FX's ``Graph.lint``: every node belongs to the graph
and to its node lookup table, has a legal opcode and a name of its own, uses
only nodes of the same graph defined before it, and has a target of the
right kind (a callable for ``call_function``, a string otherwise) that, for
``get_attr`` and ``call_module``, names an attribute (a module, for
``call_module``) of the graph module. ``Graph.lint`` stops at the first
problem and reports it with a printout of the whole graph; here every
problem is a :class:`~pipeline.condition.Violation` at its node, so a check
can show each with the user's source line. Resolved attribute paths are
shared between the nodes that name them, so a run's many checks cost one
pass over the nodes each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.fx

from pipeline.condition import Violation
from pipeline.module_tree import attribute

LEGAL_OPS = frozenset(
    {"placeholder", "call_method", "call_module", "call_function", "get_attr", "output", "root"}
)
_MISSING = object()


def lint_graph(module: torch.fx.GraphModule, path: str = "") -> Iterator[Violation]:
    """Every way the graph of ``module`` (at ``path`` in the run's module tree) is malformed."""
    graph = module.graph
    buckets = graph._find_nodes_lookup_table.table
    defined: set[torch.fx.Node] = set()
    names: set[str] = set()
    resolver = _Resolver(module)
    for node in graph.nodes:
        op = node.op
        if op not in LEGAL_OPS:
            yield Violation(f"has the unknown opcode {op!r}", node=node, graph=path)
        if node.graph is not graph:
            yield Violation("belongs to another graph", node=node, graph=path)
        elif node not in buckets.get((op, node.target if op == "call_function" else None), ()):
            yield Violation(
                "is missing from its graph's node table (made without the graph's API?)",
                node=node,
                graph=path,
            )
        for used in node._input_nodes:
            if used not in defined:
                yield Violation(_use_problem(used, graph), node=node, graph=path)
        if node.name in names:
            yield Violation(f"reuses the name {node.name!r} of an earlier node", node=node, graph=path)
        names.add(node.name)
        defined.add(node)
        if op == "call_function" and callable(node.target):
            continue
        problem = _target_problem(node, resolver)
        if problem is not None:
            yield Violation(problem, node=node, graph=path)


def _use_problem(used: torch.fx.Node, graph: torch.fx.Graph) -> str:
    if used.graph is not graph:
        return f"uses {used.name!r}, a node of another graph"
    return f"uses {used.name!r} before it is defined (the nodes are out of topological order)"


def _target_problem(node: torch.fx.Node, resolver: _Resolver) -> str | None:
    target = node.target
    if node.op == "call_function":
        return None if callable(target) else f"has the target {target!r}, which is not callable"
    if not isinstance(target, str):
        return f"has the target {target!r} ({torch.typename(target)}), where a string is expected"
    if node.op == "get_attr":
        return resolver.problem(target, modules_only=False)
    if node.op == "call_module":
        return resolver.problem(target, modules_only=True)
    return None


class _Resolver:
    """Follows dotted attribute paths from a graph module, remembering every prefix it resolved."""

    def __init__(self, root: torch.nn.Module) -> None:
        self._found: dict[str, Any] = {"": root}

    def problem(self, target: str, *, modules_only: bool) -> str | None:
        parent = ""
        for atom in target.split("."):
            path = f"{parent}.{atom}" if parent else atom
            value = self._found.get(path, _MISSING)
            if value is _MISSING:
                value = attribute(self._found[parent], atom, None)
                if value is None:
                    where = f"of {parent!r}" if parent else "of the graph module"
                    return f"has the target {target!r}, but there is no attribute {atom!r} {where}"
                self._found[path] = value
            if modules_only and not isinstance(value, torch.nn.Module):
                return f"calls {target!r}, but {path!r} is not a module"
            parent = path
        return None
