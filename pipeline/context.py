"""What a stage sees while it runs: the graph, the run's inputs, and a way to say where nodes came from."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs
import torch.fx

from pipeline.errors import StageError

if TYPE_CHECKING:
    from pipeline.audit.trail import AuditTrail
    from pipeline.plan import PlannedStage


@attrs.frozen
class Origin:
    """The nodes (and details) that nodes created inside :meth:`Context.origin` come from."""

    sources: tuple[torch.fx.Node, ...]
    details: Mapping[str, Any]


class Context:
    """The state one run of the pipeline hands to each stage.

    ``graph_module`` is the pipeline's private copy (``None`` until a stage
    produces a graph); a stage may rewrite it in place or assign a new module.
    ``inputs`` holds what the caller passed to the run (the model, example
    inputs, and anything else by name), read-only. ``state`` is a scratch dict
    that lives for one run, for stages that hand results to later stages.
    """

    def __init__(
        self,
        *,
        graph_module: torch.fx.GraphModule | None,
        inputs: Mapping[str, Any],
        run_id: str,
        trail: AuditTrail,
    ) -> None:
        self._graph_module = graph_module
        self.inputs: Mapping[str, Any] = MappingProxyType(dict(inputs))
        self.state: dict[str, Any] = {}
        self.run_id = run_id
        self.trail = trail
        self.current: PlannedStage | None = None
        self._origins: list[Origin] = []
        self._graph_listeners: list[Callable[[torch.fx.GraphModule], None]] = []

    @property
    def graph_module(self) -> torch.fx.GraphModule | None:
        """The graph module the stages work on."""
        return self._graph_module

    @graph_module.setter
    def graph_module(self, value: torch.fx.GraphModule) -> None:
        if not isinstance(value, torch.fx.GraphModule):
            raise TypeError(f"ctx.graph_module must be a torch.fx.GraphModule, got {type(value)!r}")
        self._graph_module = value
        for listener in self._graph_listeners:
            listener(value)

    @property
    def graph(self) -> torch.fx.Graph:
        """The graph of :attr:`graph_module`; an error before any stage has produced one."""
        if self._graph_module is None:
            raise StageError("there is no graph yet: a stage that produces one must run first")
        return self._graph_module.graph

    def on_graph_module(self, listener: Callable[[torch.fx.GraphModule], None]) -> Callable[[], None]:
        """Call ``listener`` whenever a stage assigns a new graph module; returns the unsubscriber."""
        self._graph_listeners.append(listener)
        return lambda: self._graph_listeners.remove(listener)

    @contextlib.contextmanager
    def origin(self, *sources: torch.fx.Node, **details: Any) -> Iterator[None]:
        """Attribute the nodes created inside the block to ``sources``, with ``details``.

        The audit trail records them on each ``node.created`` event:

        .. code-block:: python

            with ctx.origin(observer_node, edge=["conv", "relu"]):
                quantize = ctx.graph.call_function(...)
        """
        self._origins.append(Origin(tuple(sources), MappingProxyType(dict(details))))
        try:
            yield
        finally:
            self._origins.pop()

    @property
    def current_origin(self) -> Origin | None:
        """The innermost :meth:`origin` block in force, if any."""
        return self._origins[-1] if self._origins else None

    def note(self, message: str, *, node: torch.fx.Node | None = None, **details: Any) -> None:
        """Add a ``stage.note`` event to the audit trail (a decision worth explaining later)."""
        stage = self.current.stage.name if self.current else None
        self.trail.emit(
            "stage.note",
            stage=stage,
            message=message,
            node=node.name if node is not None else None,
            details=details,
        )
