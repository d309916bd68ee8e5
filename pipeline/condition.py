"""Conditions: named facts about a graph that stages require and ensure.

A condition's check returns the violations it found rather than a bool, so a
failure can say which node broke which promise. Checks only read: the engine
takes the graph's signature around the checks (see :mod:`pipeline.signature`)
and treats a check that changed it as an error in its own right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch.fx

from pipeline import validators


@attrs.frozen
class Violation:
    """One place where a condition does not hold.

    ``node`` is the offending node when there is one (the message then carries
    its source line); ``graph`` names the submodule that holds it, ``""`` for the
    top-level graph.
    """

    message: str = attrs.field(validator=attrs.validators.instance_of(str))
    node: torch.fx.Node | None = attrs.field(default=None, eq=False)
    graph: str = ""


@attrs.frozen(kw_only=True)
class Condition:
    """A named, checkable fact about a graph.

    Subclass it and implement :meth:`check`, or build one from a function with
    :func:`condition`. ``name`` is what stages list in ``requires``/``ensures``.
    """

    name: str = attrs.field(validator=validators.identifier)
    description: str = ""

    def check(self, graph_module: torch.fx.GraphModule | None) -> Sequence[Violation]:
        """The violations of this condition in ``graph_module``; empty when it holds.

        ``graph_module`` is ``None`` before any stage has produced a graph.
        Must not change the graph.
        """
        raise NotImplementedError(f"condition {self.name!r} does not implement check()")


@attrs.frozen(kw_only=True)
class FunctionCondition(Condition):
    """A condition whose check is a plain function of the graph module."""

    function: Callable[[torch.fx.GraphModule | None], Sequence[Violation]] = attrs.field(
        validator=attrs.validators.is_callable()
    )

    def check(self, graph_module: torch.fx.GraphModule | None) -> Sequence[Violation]:
        return self.function(graph_module)


def condition(
    name: str, description: str = ""
) -> Callable[[Callable[[torch.fx.GraphModule | None], Sequence[Violation]]], FunctionCondition]:
    """Decorator turning ``check(graph_module) -> violations`` into a :class:`Condition`.

    >>> @condition("has-graph", "a stage has produced a graph")
    ... def has_graph(graph_module):
    ...     return [] if graph_module is not None else [Violation("no graph yet")]
    >>> has_graph.name
    'has-graph'
    """

    def build(
        function: Callable[[torch.fx.GraphModule | None], Sequence[Violation]],
    ) -> FunctionCondition:
        text = description or (function.__doc__ or "").strip().split("\n")[0]
        return FunctionCondition(name=name, description=text, function=function)

    return build
