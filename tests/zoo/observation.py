"""A prepared graph's observation structure, comparable between torchao and the project.

Node names of the original ops survive prepare on both sides, so the structure
is read per original node: for every tensor argument, the chain of observers
between the node and its producer; for its output, the observers reading it.
Observers are identified by instance (first-seen order), so sharing is compared
too, and by class, so the observer choice is compared.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import _is_activation_post_process


def _observer(module: GraphModule, node: Any) -> torch.nn.Module | None:
    if isinstance(node, Node) and node.op == "call_module":
        target = module.get_submodule(str(node.target))
        if _is_activation_post_process(target):
            return target
    return None


def observation_structure(module: GraphModule) -> list[tuple[Any, ...]]:
    """Per original node: (name, input observer chains, output observers), observers as (class, instance number)."""
    numbers: dict[int, int] = {}

    def label(observer: torch.nn.Module) -> tuple[str, int]:
        return type(observer).__name__, numbers.setdefault(id(observer), len(numbers))

    rows = []
    for node in module.graph.nodes:
        if _observer(module, node) is not None:
            continue
        inputs = []
        for argument in node.all_input_nodes:
            chain = []
            value = argument
            while (observer := _observer(module, value)) is not None:
                chain.append(label(observer))
                value = value.args[0]
            inputs.append((value.name, tuple(chain)))
        outputs = tuple(
            label(observer) for user in node.users if (observer := _observer(module, user)) is not None
        )
        rows.append((node.name, tuple(inputs), outputs))
    return rows
