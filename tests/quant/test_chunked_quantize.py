"""Quantizing a large constant by slabs gives the same int8 values as quantizing it whole."""

from __future__ import annotations

import pytest
import torch

from plugins import chunked, ops


@pytest.fixture
def weight():
    return torch.randn(3000, 40, 3, generator=torch.Generator().manual_seed(0))


def test_per_tensor(weight, monkeypatch):
    monkeypatch.setattr(chunked, "SLAB_BYTES", 64 * 1024)
    arguments = (weight, 0.013, -3, -128, 127, torch.int8)
    slabs = []
    quantize = ops.QUANTIZE_PER_TENSOR

    def counted(*args):  # type: ignore[no-untyped-def]
        slabs.append(args[0].shape[0])
        return quantize(*args)

    monkeypatch.setattr(chunked.ops, "QUANTIZE_PER_TENSOR", counted)
    quantized = chunked.quantize(counted, arguments, {})
    assert len(slabs) > 10 and sum(slabs) == weight.shape[0]
    expected = quantize(*arguments)
    assert quantized.dtype == expected.dtype and torch.equal(quantized, expected)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_on_any_axis(weight, axis, monkeypatch):
    monkeypatch.setattr(chunked, "SLAB_BYTES", 64 * 1024)
    scales = weight.abs().amax(dim=[d for d in range(3) if d != axis]) / 127
    zero_points = torch.zeros_like(scales, dtype=torch.int64)
    arguments = (weight, scales, zero_points, axis, -127, 127, torch.int8)
    assert torch.equal(
        chunked.quantize(ops.QUANTIZE_PER_CHANNEL, arguments, {}), ops.QUANTIZE_PER_CHANNEL(*arguments)
    )


def test_small_tensors_and_other_ops_run_unchanged(weight):
    assert torch.equal(chunked.quantize(torch.ops.aten.neg.default, (weight,), {}), -weight)
