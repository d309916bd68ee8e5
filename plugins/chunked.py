"""Quantizing a large constant a slab at a time, so folding a weight never holds several fp32 copies.

``quantize_per_tensor`` and ``quantize_per_channel`` compute element by element
(divide, round, add, clamp, cast), each step allocating a tensor as large as
the weight; on a 128 MB embedding-sized weight that is several hundred MB at
once. Cutting the weight into slabs along its first dimension gives the same
int8 values bit for bit (every element sees the same arithmetic) while the
temporaries stay one slab large. Each slab's result is written into the one
int8 tensor returned, so the quantized copy is never held twice (as
concatenating the slabs would).
"""

from __future__ import annotations

from typing import Any

import torch

from plugins import ops

SLAB_BYTES = 8 * 2**20
"""Temporaries stay about this large; smaller tensors are quantized whole."""


def quantize(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``target(*args, **kwargs)``, by slabs when it is a large static quantize."""
    value = args[0] if args else None
    if (
        kwargs
        or not isinstance(value, torch.Tensor)
        or value.dim() == 0
        or value.numel() * value.element_size() <= SLAB_BYTES
        or target not in (ops.QUANTIZE_PER_TENSOR, ops.QUANTIZE_PER_CHANNEL)
    ):
        return target(*args, **kwargs)
    rows = max(1, SLAB_BYTES // max(1, value[0].numel() * value.element_size()))
    result: torch.Tensor | None = None
    for start in range(0, value.shape[0], rows):
        stop = min(start + rows, value.shape[0])
        slab_args = list(args)
        slab_args[0] = value[start:stop]
        if target is ops.QUANTIZE_PER_CHANNEL and args[3] == 0:
            slab_args[1] = args[1][start:stop]
            slab_args[2] = args[2][start:stop]
        slab = target(*slab_args)
        if result is None:
            result = slab.new_empty((value.shape[0], *slab.shape[1:]))
        result[start:stop] = slab
    return result
