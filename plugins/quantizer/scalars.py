"""Python-number operands of add and mul become tensor constants before annotation.

XNNPACK's binary kernels take two quantized tensors: ``x * 2`` must reach it
as a multiplication by a quantized constant, not by a float literal the
kernel cannot hold. Lifting the literal into a ``get_attr`` constant lets the
``add``/``mul`` annotators observe and quantize it like any operand (as
torchao's XNNPACK quantizer does in its ``transform_for_annotation``).

Unlike torchao, only ops whose result is floating point are touched: an
integer ``step + 1`` (a loop counter) keeps its integer literal, where a
float constant would silently turn the counter into a float.
"""

from __future__ import annotations

import torch
import torch.fx
from torch._subclasses import FakeTensor

LIFTED_OPS: frozenset[object] = frozenset({torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor})
"""The ops whose scalar operands are lifted (in-place variants keep theirs: their target is a buffer)."""

_PREFIX = "_scalar_operand_"


def lift_scalar_operands(graph_module: torch.fx.GraphModule, targets: frozenset[object]) -> int:
    """Replace number operands of ``targets`` nodes by float32 constants; return how many."""
    lifted = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        value = node.meta.get("val")
        if not isinstance(value, FakeTensor) or not value.dtype.is_floating_point:
            continue
        arguments = list(node.args)
        for position, argument in enumerate(arguments):
            if isinstance(argument, bool) or not isinstance(argument, (int, float)):
                continue
            constant = torch.tensor(float(argument))
            name = _free_attribute(graph_module)
            graph_module.register_buffer(name, constant)
            with graph_module.graph.inserting_before(node):
                getter = graph_module.graph.get_attr(name)
            getter.meta["val"] = value.fake_mode.from_tensor(constant, static_shapes=True)
            arguments[position] = getter
            lifted += 1
        node.args = tuple(arguments)
    if lifted:
        graph_module.recompile()
    return lifted


def _free_attribute(graph_module: torch.fx.GraphModule) -> str:
    index = 0
    while hasattr(graph_module, f"{_PREFIX}{index}"):
        index += 1
    return f"{_PREFIX}{index}"
