"""torchao's per-tensor qparams from a float32 range, computed on Python floats.

``UniformQuantizationObserverBase._calculate_qparams`` turns a range into a
scale and zero point with about fifteen small tensor ops; after the
histogram search (:mod:`plugins.histogram`) it was half of what was left of
an observer's convert. For the per-tensor affine and symmetric schemes this
module gets the same tensors from the same float32 arithmetic done on Python
floats: each ``+``, ``-``, ``*`` and ``/`` of float32 values is done in
double precision and rounded to float32, which is the float32 operation
(a double has more than twice float32's precision), ``torch.round`` rounds
halves to even as Python's ``round`` does, and the results take torchao's
shapes and dtypes: a one-element float32 scale and a one-element zero point,
int32 for the affine scheme and int64 for the symmetric one.

Anything else gets ``None`` and goes to torchao: other schemes, a range
that is not finite or not ordered (torchao warns or fails on those), an
``eps`` that is not one float32 value, a zero point near the ends of int32.
"""

from __future__ import annotations

import math
import struct

import torch
from torchao.quantization.pt2e.observer import UniformQuantizationObserverBase

_FLOAT32 = struct.Struct("f")
_SCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_SHIFTS = (-(2**30), 2**30)
"""Zero point shifts whose int32 arithmetic (a cast to int32, ``quant_min`` minus it) cannot overflow."""


def float32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a C cast does (beyond the range: infinity)."""
    try:
        return float(_FLOAT32.unpack(_FLOAT32.pack(value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def qparams(
    observer: UniformQuantizationObserverBase, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``observer._calculate_qparams`` of the float32 range ``[low, high]``; ``None`` for the other cases."""
    if observer.qscheme not in _SCHEMES or not (math.isfinite(low) and math.isfinite(high) and low <= high):
        return None
    eps = observer.eps
    if not isinstance(eps, torch.Tensor) or eps.dtype != torch.float32 or eps.numel() != 1:
        return None
    epsilon = eps.item()
    quant_min, quant_max = observer.quant_min, observer.quant_max
    negative, positive = min(low, 0.0), max(high, 0.0)
    if observer.qscheme == torch.per_tensor_symmetric:
        half_range = float32(float(quant_max - quant_min) / 2)
        scale = max(float32(max(-negative, positive) / half_range), epsilon)
        if observer.dtype in (torch.quint8, torch.uint8):
            zero_point = (quant_min + quant_max) // 2 if observer.has_customized_qrange else 128
        elif observer.dtype == torch.uint16:
            zero_point = 2**15
        else:
            zero_point = 0
        return _tensors(scale, zero_point, torch.int64)
    scale = max(float32(float32(positive - negative) / float32(float(quant_max - quant_min))), epsilon)
    if scale == 0.0:
        return None
    shift = round(float32(negative / scale))
    if not _SHIFTS[0] <= shift <= _SHIFTS[1]:
        return None
    zero_point = min(max(quant_min - shift, quant_min), quant_max)
    return _tensors(scale, zero_point, torch.int32)


def _tensors(
    scale: float, zero_point: int, zero_point_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([scale], dtype=torch.float32), torch.tensor([zero_point], dtype=zero_point_dtype)
