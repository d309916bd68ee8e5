"""Per-tensor qparams on Python floats are torchao's ``_calculate_qparams``: same values, shapes and dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

from plugins import per_tensor_qparams

float32s = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0]),
    st.integers(-300, 300).map(lambda n: n / 7.0),
).map(per_tensor_qparams.float32)
OBSERVERS = [
    (MinMaxObserver, {"dtype": torch.quint8, "qscheme": torch.per_tensor_affine}),
    (MinMaxObserver, {"dtype": torch.qint8, "qscheme": torch.per_tensor_affine, "reduce_range": True}),
    (MinMaxObserver, {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
    (MinMaxObserver, {"dtype": torch.quint8, "qscheme": torch.per_tensor_symmetric}),
    (
        MinMaxObserver,
        {"dtype": torch.quint8, "qscheme": torch.per_tensor_symmetric, "quant_min": 0, "quant_max": 201},
    ),
    (
        MinMaxObserver,
        {"dtype": torch.qint8, "qscheme": torch.per_tensor_affine, "quant_min": -7, "quant_max": 7},
    ),
    (MinMaxObserver, {"dtype": torch.uint16, "qscheme": torch.per_tensor_symmetric}),
    (MinMaxObserver, {"dtype": torch.int16, "qscheme": torch.per_tensor_affine}),
    (HistogramObserver, {"dtype": torch.quint8, "qscheme": torch.per_tensor_affine, "eps": 2**-12}),
    (HistogramObserver, {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric, "eps": 0.5}),
]


def assert_same(mine, theirs):
    assert mine is not None
    for a, b in zip(mine, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (a, b)


@settings(max_examples=400, deadline=None)
@given(observer=st.sampled_from(range(len(OBSERVERS))), ends=st.tuples(float32s, float32s))
def test_the_qparams_of_any_ordered_finite_range_are_torchaos(observer, ends):
    constructor, arguments = OBSERVERS[observer]
    module = constructor(**arguments)
    low, high = sorted(ends)
    mine = per_tensor_qparams.qparams(module, low, high)
    theirs = module._calculate_qparams(
        torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)
    )
    assert_same(mine, theirs)


@pytest.mark.parametrize(("low", "high"), [(math.nan, 1.0), (-math.inf, 1.0), (0.0, math.inf), (2.0, 1.0)])
def test_ranges_torchao_warns_or_fails_on_are_left_to_it(low, high):
    assert per_tensor_qparams.qparams(MinMaxObserver(), low, high) is None


def test_other_schemes_and_odd_eps_are_left_to_torchao():
    per_channel = MinMaxObserver(qscheme=torch.per_tensor_affine)
    per_channel.qscheme = torch.per_channel_affine
    assert per_tensor_qparams.qparams(per_channel, -1.0, 1.0) is None
    double_eps = MinMaxObserver()
    double_eps.eps = torch.tensor([1e-3], dtype=torch.float64)
    assert per_tensor_qparams.qparams(double_eps, -1.0, 1.0) is None
    zero_eps = MinMaxObserver(eps=0.0)
    assert per_tensor_qparams.qparams(zero_eps, 0.0, 0.0) is None


def test_float32_rounds_to_nearest_and_overflows_to_infinity():
    assert per_tensor_qparams.float32(0.1) == float(torch.tensor(0.1, dtype=torch.float32))
    assert per_tensor_qparams.float32(1e39) == math.inf and per_tensor_qparams.float32(-1e39) == -math.inf
    largest = float(torch.finfo(torch.float32).max)
    assert per_tensor_qparams.float32(largest * (1 + 2**-26)) == largest
