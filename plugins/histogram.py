"""torchao's HistogramObserver qparams, computed without its per-step tensor overhead.

``HistogramObserver.calculate_qparams`` narrows the histogram's range in up to
10^5 small steps, and each step indexes and compares 0-d tensors; on a large
model that loop is most of what convert costs. This module runs the same search
on Python floats and gets the same answer bit for bit: the cumulative sums are
float32 values read exactly into doubles, and each bound is rounded to float32
before comparing, which is what comparing a float32 tensor with a Python float
does. The quantization error of a candidate range, the new bounds and the final
qparams still come from the observer's own methods.
"""

from __future__ import annotations

import struct

import torch
from torchao.quantization.pt2e.observer import HistogramObserver

_STEP = 1e-5


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def applies_to(observer: object) -> bool:
    """Only torchao's own class: a subclass may search differently."""
    return type(observer) is HistogramObserver


def calculate_qparams(observer: HistogramObserver) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``observer.calculate_qparams()``, faster."""
    if observer.min_val == float("inf") and observer.max_val == float("-inf"):
        return observer.calculate_qparams()  # type: ignore[no-any-return]
    if observer.bins != len(observer.histogram):
        return observer.calculate_qparams()  # type: ignore[no-any-return]
    new_min, new_max = _search(observer)
    return observer._calculate_qparams(new_min, new_max)  # type: ignore[no-any-return]


def _search(observer: HistogramObserver) -> tuple[torch.Tensor, torch.Tensor]:
    bin_width = (observer.max_val - observer.min_val) / observer.bins
    total = torch.sum(observer.histogram).item()
    cumulative = torch.cumsum(observer.histogram, dim=0).tolist()
    alpha, beta = 0.0, 1.0
    start_bin, end_bin = 0, observer.bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha = alpha + _STEP
        next_beta = beta - _STEP
        low_bound = _float32(next_alpha * total)
        high_bound = _float32(next_beta * total)
        left, right = start_bin, end_bin
        while left < end_bin and cumulative[left] < low_bound:
            left += 1
        while right > start_bin and cumulative[right] > high_bound:
            right -= 1
        next_start_bin, next_end_bin = start_bin, end_bin
        if (left - start_bin) > (end_bin - right):
            next_start_bin = left
            alpha = next_alpha
        else:
            next_end_bin = right
            beta = next_beta
        if next_start_bin == start_bin and next_end_bin == end_bin:
            continue
        norm = observer._compute_quantization_error(next_start_bin, next_end_bin)
        if norm > norm_min:
            break
        norm_min = norm
        start_bin, end_bin = next_start_bin, next_end_bin
    return observer.min_val + bin_width * start_bin, observer.min_val + bin_width * (end_bin + 1)
