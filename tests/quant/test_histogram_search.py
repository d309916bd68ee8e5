"""The fast histogram qparam search gives torchao's HistogramObserver answer bit for bit."""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from hypothesis import assume, given, settings
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


def _observer(counts: list[float], low: float, high: float, dtype: torch.dtype) -> HistogramObserver:
    """An observer holding exactly this histogram over ``[low, high]``, as calibration would leave it."""
    observer = HistogramObserver(bins=len(counts), dtype=dtype)
    observer.histogram = torch.tensor(counts, dtype=torch.float32)
    observer.min_val = torch.tensor(low, dtype=torch.float32)
    observer.max_val = torch.tensor(high, dtype=torch.float32)
    return observer


def _assert_same_qparams(observer: HistogramObserver) -> None:
    expected = observer.calculate_qparams()
    actual = histogram.calculate_qparams(observer)
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


def _same_error(mine: float, theirs: float) -> bool:
    """Equal as the search compares them: NaN matches NaN, -0.0 matches 0.0."""
    return mine == theirs or (math.isnan(mine) and math.isnan(theirs))


counts = st.one_of(
    st.floats(0.0, 1e3, width=32),
    st.integers(0, 50).map(float),
    st.just(0.0),
)
ranges = st.tuples(st.floats(-1e4, 1e4, width=32), st.floats(0.0, 1e4, width=32)).map(
    lambda pair: (pair[0], pair[0] + pair[1])
)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(counts, min_size=2, max_size=300),
    bounds=ranges,
    dtype=st.sampled_from([torch.quint8, torch.qint8]),
)
def test_random_histograms_give_torchaos_qparams(values, bounds, dtype):
    assume(sum(values) > 0)
    _assert_same_qparams(_observer(values, *bounds, dtype))


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(counts, min_size=2, max_size=300),
    bounds=ranges,
    dtype=st.sampled_from([torch.quint8, torch.qint8]),
    data=st.data(),
)
def test_each_candidate_range_has_torchaos_quantization_error(values, bounds, dtype, data):
    observer = _observer(values, *bounds, dtype)
    model = histogram._ErrorModel(observer)
    for _ in range(5):
        start = data.draw(st.integers(0, len(values) - 1))
        end = data.draw(st.integers(start, len(values) - 1))
        assert _same_error(model.error(start, end), observer._compute_quantization_error(start, end))


@pytest.mark.parametrize("bins", [2, 17, 2048])
@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_all_mass_in_one_bin(bins, position):
    values = [0.0] * bins
    values[{"first": 0, "middle": bins // 2, "last": bins - 1}[position]] = 37.0
    _assert_same_qparams(_observer(values, -0.75, 3.5, torch.quint8))


@pytest.mark.parametrize("value", [0.0, -2.5, 7.0])
def test_zero_width_range_scores_every_candidate_zero(value):
    observer = _observer([1.0, 4.0, 0.0, 2.0, 9.0], value, value, torch.quint8)
    model = histogram._ErrorModel(observer)
    assert model.error(1, 3) == observer._compute_quantization_error(1, 3) == 0.0
    _assert_same_qparams(observer)


def test_negative_range():
    generator = torch.Generator().manual_seed(3)
    values = (torch.rand(2048, generator=generator) * 20).floor().tolist()
    _assert_same_qparams(_observer(values, -9.25, -0.5, torch.qint8))


def test_calibrated_observers_of_every_scale():
    generator = torch.Generator().manual_seed(11)
    for magnitude in (1e-30, 1e-6, 1.0, 1e6, 1e30):
        observer = HistogramObserver()
        for _ in range(3):
            observer(torch.randn(64, 8, generator=generator).exp() * magnitude)
        _assert_same_qparams(observer)


def test_a_histogram_of_another_dtype_takes_torchaos_own_path():
    observer = _observer([1.0, 2.0, 3.0], 0.0, 1.0, torch.quint8)
    observer.histogram = observer.histogram.double()
    assert not histogram._ErrorModel.applies_to(observer)
    _assert_same_qparams(observer)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(counts, min_size=2, max_size=64),
    low=st.floats(-1e30, 1e30).map(lambda value: float(torch.tensor(value))),
    width_exponent=st.integers(-40, 30),
    dtype=st.sampled_from([torch.quint8, torch.qint8]),
    data=st.data(),
)
def test_extreme_ranges_score_as_torchao_scores_them(values, low, width_exponent, dtype, data):
    """Cubes that overflow to inf, products that underflow to subnormals or zero, NaN from inf - inf."""
    high = float(torch.tensor(low + 10.0**width_exponent, dtype=torch.float32))
    assume(math.isfinite(high) and high >= low)
    observer = _observer(values, low, high, dtype)
    model = histogram._ErrorModel(observer)
    for _ in range(3):
        start = data.draw(st.integers(0, len(values) - 1))
        end = data.draw(st.integers(start, len(values) - 1))
        assert _same_error(model.error(start, end), observer._compute_quantization_error(start, end))


def test_the_beta_table_is_the_loops_own_sequence():
    """The search's ``beta`` after n steps is read from a table; it holds what n subtractions give."""
    table = histogram._betas()
    beta = 1.0
    for steps in range(len(table)):
        assert table[steps] == beta, steps
        beta -= histogram._STEP
    assert table[-1] < 0.0


def test_a_histogram_the_end_bin_never_leaves_is_searched_in_few_steps(monkeypatch):
    """All mass in the last bin: torchao lowers beta 10^5 times one step at a time; the same answer comes at once."""
    values = [0.0] * 2047 + [5.0]
    observer = _observer(values, -1.0, 1.0, torch.quint8)
    calls = 0
    moves = histogram._moves_end_bin

    def counting(last: float, high: float) -> bool:
        nonlocal calls
        calls += 1
        return moves(last, high)

    monkeypatch.setattr(histogram, "_moves_end_bin", counting)
    _assert_same_qparams(observer)
    assert 0 < calls < 200


def _torch_destination_bins(model: histogram._ErrorModel, offset: int, width: float) -> torch.Tensor:
    edges = torch.from_numpy(model.edges[:, offset : offset + model.bins])
    return torch.div(edges, width, rounding_mode="floor").clamp_(0, model.dst_nbins - 1)


@settings(max_examples=300, deadline=None)
@given(
    bins=st.integers(2, 2048),
    low=st.floats(-1e30, 1e30).map(lambda value: float(torch.tensor(value))),
    width_exponent=st.integers(-6, 6),
    destinations=st.sampled_from([2, 256, 2**16, 2**16 + 1, 2**32]),
    data=st.data(),
)
def test_destination_bins_are_torchs_floor_divisions(bins, low, width_exponent, destinations, data):
    """Double-precision floors against torch's floor division, near-integer quotients included."""
    span = max(abs(low), 1e-38) * 10.0**width_exponent
    high = float(torch.tensor(low + span, dtype=torch.float32))
    assume(math.isfinite(high) and high > low)
    model = histogram._ErrorModel(_observer([1.0] * bins, low, high, torch.quint8))
    model.dst_nbins = destinations
    offset = data.draw(st.integers(0, bins - 1))
    edge = float(model.edges[0, data.draw(st.integers(0, 2 * bins - 2))])
    widths = [
        model.bin_width * data.draw(st.integers(1, bins)) / destinations,
        edge / data.draw(st.integers(1, 2**20)) if edge else model.bin_width,
        float(numpy.nextafter(numpy.float32(abs(edge) / 3 or 1e-30), numpy.float32(0))),
    ]
    for width in widths:
        width = float(numpy.float32(width))
        if width == 0.0:
            continue
        with numpy.errstate(all="ignore"):
            mine = model._destination_bins(offset, width)
        theirs = _torch_destination_bins(model, offset, width).numpy()
        assert numpy.array_equal(mine, theirs), (width, offset)
