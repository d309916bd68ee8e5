"""Identity signatures: proof that nobody touched a graph between two moments.

The engine asks this once between two stages, where only readers run
(conditions, ``skip_reason``, instrumentations; see :mod:`pipeline.reading`),
and of the caller's graph around a run, so it must cost far less than a
snapshot: it freezes no metadata and describes nothing, it only keeps
references to what every node holds. Two signatures are equal when no
node was added, removed, moved, re-wired, re-targeted or renamed, and no
metadata key was added, removed or given a value unequal to the one it had.
Comparing them compares the held objects themselves, so the usual case
(everything the same object) is decided by identity without calling ``==``
on any value.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx

from pipeline.module_tree import graph_modules

_FIELDS = operator.attrgetter("name", "op", "target", "_args", "_kwargs")
_META = operator.attrgetter("meta")


class IdentitySignature:
    """What every node of a graph module (nested graphs included) refers to at one moment."""

    __slots__ = ("_fields", "_meta", "_nodes")

    def __init__(self, nodes: list[torch.fx.Node], meta: list[dict[str, Any]] | None = None) -> None:
        """``meta`` is a shallow copy of each node's ``meta`` when a walk that made it is at hand.

        A shallow copy, not a tuple of the items: one object per node instead
        of one per item, and dict equality still compares the values by
        identity first.
        """
        self._nodes = nodes
        self._fields = list(map(_FIELDS, nodes))
        self._meta = list(map(dict.copy, map(_META, nodes))) if meta is None else meta

    @classmethod
    def of(cls, graph_module: torch.fx.GraphModule | None) -> IdentitySignature:
        """The signature of ``graph_module`` now (an empty one for ``None``)."""
        return cls(_nodes_of(graph_module))

    def holds_for(self, graph_module: torch.fx.GraphModule | None) -> bool:
        """Whether ``graph_module`` still has this signature (``IdentitySignature.of(graph_module) == self``).

        Compares each node's live ``meta`` with the copy kept here, so no copy
        of every node's metadata is made to be compared and dropped.
        """
        nodes = _nodes_of(graph_module)
        try:
            return bool(
                nodes == self._nodes
                and list(map(_FIELDS, nodes)) == self._fields
                and all(map(operator.eq, self._meta, map(_META, nodes)))
            )
        except Exception:
            return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentitySignature):
            return NotImplemented
        try:
            return bool(
                self._nodes == other._nodes and self._fields == other._fields and self._meta == other._meta
            )
        except Exception:
            return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<IdentitySignature of {len(self._nodes)} nodes>"


def _nodes_of(graph_module: torch.fx.GraphModule | None) -> list[torch.fx.Node]:
    if graph_module is None:
        return []
    return [node for _, module in graph_modules(graph_module) for node in module.graph.nodes]
