"""Reading the quantize/dequantize structure of a converted graph, as torchao's post-convert passes read it.

The three stages that finish the convert phase (duplicate-dq, port-metadata,
fold-quantize) and their conditions must agree on what counts as a user of a
node and what the dynamic-quantization pattern looks like; both rules live here.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from plugins import ops

_aten = torch.ops.aten

SIZE_QUERIES: frozenset[object] = frozenset(
    {_aten.sym_size.default, _aten.sym_numel.default, _aten.sym_size, _aten.sym_numel}
)
"""Size reads that torchao does not count as users of a Q/DQ node.

``aten.sym_size.int``, which ``torch.export`` emits for symbolic dimensions,
is not among them in torchao either, so it counts as a user.
"""

DYNAMIC_QUANTIZE_OPS: frozenset[object] = frozenset(
    {ops.QUANTIZE_PER_TENSOR, ops.QUANTIZE_PER_TENSOR_TENSOR, ops.QUANTIZE_PER_CHANNEL}
)
AFFINE_QUANTIZE_OPS: frozenset[object] = frozenset({ops.QUANTIZE_AFFINE, ops.QUANTIZE_AFFINE.default})
AFFINE_DEQUANTIZE_OPS: frozenset[object] = frozenset({ops.DEQUANTIZE_AFFINE, ops.DEQUANTIZE_AFFINE.default})
AFFINE_CHOOSE_OPS: frozenset[object] = frozenset(
    {ops.CHOOSE_QPARAMS_AFFINE, ops.CHOOSE_QPARAMS_AFFINE.default}
)


def value_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The users of ``node`` other than size reads, in users-dict order."""
    return [user for user in node.users if not ops.is_call(user, SIZE_QUERIES)]


def is_dynamic_dequantize(dequantize: torch.fx.Node) -> bool:
    """Whether ``dequantize`` belongs to a ``choose_qparams -> getitem -> quantize -> dequantize`` chain.

    For the decomposed ops this is torchao's rule exactly: only the asymmetric
    ``choose_qparams.tensor`` counts (a ``choose_qparams_symmetric`` chain does
    not). For ``dequantize_affine``, which torchao never looks at, the scale
    of a ``quantize_affine`` coming from ``choose_qparams_affine`` counts.
    """
    quantize = dequantize.args[0] if dequantize.args else None
    if ops.is_call(dequantize, AFFINE_DEQUANTIZE_OPS):
        if not ops.is_call(quantize, AFFINE_QUANTIZE_OPS):
            return False
        return _is_choice_of(_arg(quantize, 2), AFFINE_CHOOSE_OPS)
    if not ops.is_call(quantize, DYNAMIC_QUANTIZE_OPS):
        return False
    return _is_choice_of(_arg(quantize, 1), frozenset({ops.CHOOSE_QPARAMS}))


def _arg(node: object, index: int) -> object:
    assert isinstance(node, torch.fx.Node)
    return node.args[index] if len(node.args) > index else None


def _is_choice_of(scale: object, choosers: frozenset[object]) -> bool:
    return (
        isinstance(scale, torch.fx.Node)
        and scale.op == "call_function"
        and scale.target is operator.getitem
        and ops.is_call(scale.args[0], choosers)
    )
