"""The quantize, dequantize and choose-qparams operators of the PT2E Q/DQ form, by role.

Importing torchao's pt2e package registers the ``quantized_decomposed`` and
``torchao`` operator libraries; every module that matches Q/DQ nodes takes the
targets from here.
"""

from __future__ import annotations

import torch
import torch.fx
import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed and torchao ops)

_decomposed = torch.ops.quantized_decomposed
_torchao = torch.ops.torchao

QUANTIZE_PER_TENSOR = _decomposed.quantize_per_tensor.default
QUANTIZE_PER_TENSOR_TENSOR = _decomposed.quantize_per_tensor.tensor
QUANTIZE_PER_CHANNEL = _decomposed.quantize_per_channel.default
DEQUANTIZE_PER_TENSOR = _decomposed.dequantize_per_tensor.default
DEQUANTIZE_PER_TENSOR_TENSOR = _decomposed.dequantize_per_tensor.tensor
DEQUANTIZE_PER_CHANNEL = _decomposed.dequantize_per_channel.default
CHOOSE_QPARAMS = _decomposed.choose_qparams.tensor
CHOOSE_QPARAMS_SYMMETRIC = _decomposed.choose_qparams_symmetric.tensor
CONVERT_ELEMENT_TYPE = _decomposed.convert_element_type.no_fuse
QUANTIZE_AFFINE = _torchao.quantize_affine
DEQUANTIZE_AFFINE = _torchao.dequantize_affine
CHOOSE_QPARAMS_AFFINE = _torchao.choose_qparams_affine

QUANTIZE_OPS: frozenset[object] = frozenset(
    {
        QUANTIZE_PER_TENSOR,
        QUANTIZE_PER_TENSOR_TENSOR,
        QUANTIZE_PER_CHANNEL,
        QUANTIZE_AFFINE,
        QUANTIZE_AFFINE.default,
    }
)
DEQUANTIZE_OPS: frozenset[object] = frozenset(
    {
        DEQUANTIZE_PER_TENSOR,
        DEQUANTIZE_PER_TENSOR_TENSOR,
        DEQUANTIZE_PER_CHANNEL,
        DEQUANTIZE_AFFINE,
        DEQUANTIZE_AFFINE.default,
    }
)
CHOOSE_QPARAMS_OPS: frozenset[object] = frozenset(
    {CHOOSE_QPARAMS, CHOOSE_QPARAMS_SYMMETRIC, CHOOSE_QPARAMS_AFFINE, CHOOSE_QPARAMS_AFFINE.default}
)
QDQ_OPS: frozenset[object] = QUANTIZE_OPS | DEQUANTIZE_OPS | CHOOSE_QPARAMS_OPS | {CONVERT_ELEMENT_TYPE}


def is_call(node: object, targets: frozenset[object]) -> bool:
    """Whether ``node`` is a ``call_function`` node whose target is one of ``targets``."""
    return (
        isinstance(node, torch.fx.Node) and node.op == "call_function" and _hashable_in(node.target, targets)
    )


def is_quantize(node: object) -> bool:
    return is_call(node, QUANTIZE_OPS)


def is_dequantize(node: object) -> bool:
    return is_call(node, DEQUANTIZE_OPS)


def is_choose_qparams(node: object) -> bool:
    return is_call(node, CHOOSE_QPARAMS_OPS)


def _hashable_in(target: object, targets: frozenset[object]) -> bool:
    try:
        return target in targets
    except TypeError:
        return False
