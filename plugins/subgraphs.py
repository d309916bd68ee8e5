"""Which graphs quantization visits: the top graph and the bodies of loops.

``torch.export`` keeps ``scan`` and ``while_loop`` as higher-order calls whose
bodies are nested graph modules (``get_attr`` arguments). torchao quantizes
the combine function of a ``scan`` (argument 0) and the body of a
``while_loop`` (argument 1), recursively, and leaves ``cond`` branches and
loop conditions alone; the stages here follow the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.fx

_BODY_ARGUMENT = {
    torch.ops.higher_order.scan: 0,
    torch.ops.higher_order.while_loop: 1,
}


def loop_bodies(graph_module: torch.fx.GraphModule) -> Iterator[tuple[str, torch.fx.GraphModule]]:
    """The loop bodies called directly from ``graph_module``: scans first, then while loops."""
    for operator, position in _BODY_ARGUMENT.items():
        for node in graph_module.graph.find_nodes(op="call_function", target=operator):
            body = node.args[position]
            if isinstance(body, torch.fx.Node) and body.op == "get_attr":
                module = graph_module.get_submodule(str(body.target))
                if isinstance(module, torch.fx.GraphModule):
                    yield str(body.target), module


def quantizable_graph_modules(
    graph_module: torch.fx.GraphModule, prefix: str = ""
) -> Iterator[tuple[str, torch.fx.GraphModule]]:
    """``graph_module`` (path ``""``), then every loop body in it, depth first, by dotted path."""
    yield prefix, graph_module
    for name, body in loop_bodies(graph_module):
        yield from quantizable_graph_modules(body, f"{prefix}.{name}" if prefix else name)
