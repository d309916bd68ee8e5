"""The fast histogram qparam search gives torchao's HistogramObserver answer bit for bit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchao.quantization.pt2e.observer import HistogramObserver

from plugins import histogram

SCHEMES = [
    (torch.quint8, torch.per_tensor_affine, False),
    (torch.qint8, torch.per_tensor_affine, False),
    (torch.qint8, torch.per_tensor_symmetric, False),
    (torch.quint8, torch.per_tensor_affine, True),
]


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
    skew=st.floats(-3.0, 3.0),
    batches=st.integers(1, 4),
    relu=st.booleans(),
)
def test_same_qparams_as_torchao(scheme, seed, scale, skew, batches, relu):
    dtype, qscheme, reduce_range = scheme
    observer = HistogramObserver(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        values = torch.randn(32, 16, generator=generator) * scale + skew * scale * torch.rand(
            1, generator=generator
        )
        observer(torch.relu(values) if relu else values)
    expected = observer.calculate_qparams()
    actual = histogram.calculate_qparams(observer)
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


def test_a_constant_input_matches_too():
    observer = HistogramObserver()
    observer(torch.full((4, 4), 0.5))
    expected = observer.calculate_qparams()
    assert all(
        torch.equal(a, e) for a, e in zip(histogram.calculate_qparams(observer), expected, strict=True)
    )


def test_an_observer_that_saw_nothing_gives_torchaos_placeholder_qparams():
    with pytest.warns(UserWarning, match="must run observer before calling calculate_qparams"):
        actual = histogram.calculate_qparams(HistogramObserver())
    assert [t.tolist() for t in actual] == [[1.0], [0]]


def test_only_torchaos_own_class_takes_the_fast_path():
    class Tweaked(HistogramObserver):
        pass

    assert histogram.applies_to(HistogramObserver())
    assert not histogram.applies_to(Tweaked())
