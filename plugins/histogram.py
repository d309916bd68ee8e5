"""torchao's HistogramObserver qparams, computed without its per-step tensor overhead.

``HistogramObserver.calculate_qparams`` narrows the histogram's range in up to
10^5 small steps, and each step indexes and compares 0-d tensors; on a large
model that loop is most of what convert costs. This module runs the same search
on Python floats and gets the same answer bit for bit: the cumulative sums are
float32 values read exactly into doubles, and each bound is rounded to float32
before comparing, which is what comparing a float32 tensor with a Python float
does.

Each candidate range the search meets is scored by a quantization error that
torchao computes with about fifty small tensor ops; :class:`_ErrorModel` gets
the same float32 value with about half as many (see there). The new bounds and
the final qparams still come from the observer's own methods.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterator

import numpy
import torch
from torchao.quantization.pt2e.observer import HistogramObserver

from plugins import per_tensor_qparams
from plugins.per_tensor_qparams import float32 as _float32

_STEP = 1e-5


def _cube(value: float) -> float:
    """``v * v * v`` of a float32 ``v`` in float32 arithmetic.

    A product of two float32 values is exact in a double, so rounding it to
    float32 is the float32 product.
    """
    return _float32(_float32(value * value) * value)


def applies_to(observer: object) -> bool:
    """Only torchao's own class: a subclass may search differently."""
    return type(observer) is HistogramObserver


def calculate_qparams(observer: HistogramObserver) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``observer.calculate_qparams()``, faster."""
    if observer.min_val == float("inf") and observer.max_val == float("-inf"):
        return observer.calculate_qparams()  # type: ignore[no-any-return]
    if observer.bins != len(observer.histogram) or not _ErrorModel.applies_to(observer):
        return observer.calculate_qparams()  # type: ignore[no-any-return]
    start_bin, end_bin = _search(observer)
    low, high = _bounds(observer.min_val.item(), observer.max_val.item(), observer.bins, start_bin, end_bin)
    found = per_tensor_qparams.qparams(observer, low, high)
    if found is not None:
        return found
    bin_width = (observer.max_val - observer.min_val) / observer.bins
    new_min = observer.min_val + bin_width * start_bin
    new_max = observer.min_val + bin_width * (end_bin + 1)
    return observer._calculate_qparams(new_min, new_max)  # type: ignore[no-any-return]


def _bounds(low: float, high: float, bins: int, start_bin: int, end_bin: int) -> tuple[float, float]:
    """torchao's float32 tensor arithmetic for the range the search kept, on Python floats.

    ``min_val + (max_val - min_val) / bins * bin``, each operation a float32
    one (see :mod:`plugins.per_tensor_qparams`).
    """
    bin_width = _float32(_float32(high - low) / bins)
    new_low = _float32(low + _float32(bin_width * start_bin))
    return new_low, _float32(low + _float32(bin_width * (end_bin + 1)))


def _search(observer: HistogramObserver) -> tuple[int, int]:
    """torchao's search: shrink the range while the quantization error does not grow; the bins it keeps."""
    errors = _ErrorModel(observer)
    start_bin, end_bin = 0, observer.bins - 1
    norm_min = float("inf")
    for next_start_bin, next_end_bin in _candidates(observer):
        norm = errors.error(next_start_bin, next_end_bin)
        if norm > norm_min:
            break
        norm_min = norm
        start_bin, end_bin = next_start_bin, next_end_bin
    return start_bin, end_bin


def _candidates(observer: HistogramObserver) -> Iterator[tuple[int, int]]:
    """The ranges the search scores, in order, each assuming the one before it was kept.

    The search stops at the first range it does not keep, so up to there this
    is exactly its sequence. A step that moves neither bound bin only lowers
    ``beta``; such steps come in runs, which :func:`_skip_idle_steps` takes at once.
    ``beta`` is also tracked by the number of steps it took (see :func:`_betas`).
    """
    total = torch.sum(observer.histogram).item()
    cumulative = torch.cumsum(observer.histogram, dim=0).tolist()
    alpha, beta, beta_steps = 0.0, 1.0, 0
    start_bin, end_bin = 0, observer.bins - 1
    while alpha < beta:
        next_alpha = alpha + _STEP
        next_beta = beta - _STEP
        left = _first_reaching(cumulative, start_bin, end_bin, next_alpha * total)
        right = _last_within(cumulative, end_bin, start_bin, next_beta * total)
        if (left - start_bin) > (end_bin - right):
            alpha = next_alpha
            start_bin = left
        else:
            beta, beta_steps = next_beta, beta_steps + 1
            if right == end_bin:
                last = cumulative[end_bin] if end_bin > start_bin else -math.inf
                beta_steps = _skip_idle_steps(last, alpha, beta_steps, total)
                beta = float(_betas()[beta_steps])
                continue
            end_bin = right
        yield start_bin, end_bin


_MAX_STEPS = int(1 / _STEP) + 2


@functools.cache
def _betas() -> numpy.ndarray:
    """``beta`` after each number of steps: 1.0, then ``_STEP`` less each time, rounded as the loop rounds.

    ``subtract.accumulate`` subtracts in order, one IEEE double operation per
    element, which is what ``beta = beta - _STEP`` in a loop does. The search
    ends once ``alpha``, which grows by the same step, reaches ``beta``, so it
    never takes more steps than the table holds.
    """
    steps = numpy.full(_MAX_STEPS + 1, _STEP)
    steps[0] = 1.0
    return numpy.subtract.accumulate(steps)


def _skip_idle_steps(last: float, alpha: float, beta_steps: int, total: float) -> int:
    """``beta``'s step count after the steps that move neither bin, up to the one that moves the end bin.

    A step moved neither bin: the start bin stayed (so alpha stays, and with
    it the start bin of every following step) and the end bin stayed. Until
    the end bin moves, each step only takes ``_STEP`` off ``beta``. Whether a
    step would move the end bin (its cumulative sum ``last`` is above float32
    ``beta * total``) and whether the loop goes on (``alpha < beta``) each
    turn over once as ``beta`` falls, so both points are found by bisection
    rather than step by step.
    """
    betas = _betas()
    steps = range(beta_steps, len(betas))
    ended = bisect.bisect_left(steps, True, key=lambda index: not alpha < betas[index])
    moves = bisect.bisect_left(
        steps, True, lo=1, hi=ended + 1, key=lambda index: _moves_end_bin(last, float(betas[index]) * total)
    )
    return beta_steps + (moves - 1 if moves <= ended else ended)


def _moves_end_bin(last: float, high: float) -> bool:
    return last > high and last > _float32(high)


def _first_reaching(cumulative: list[float], start: int, stop: int, bound: float) -> int:
    """The first bin from ``start`` (at most ``stop``) whose cumulative sum is not below float32 ``bound``.

    ``cumulative[i] < float32(bound)`` implies ``cumulative[i] < bound``:
    rounding is monotone and a float32 value rounds to itself. So when the
    first bin is not below ``bound`` itself, no rounding is needed.
    """
    index = start
    if index < stop and cumulative[index] < bound:
        rounded = _float32(bound)
        while index < stop and cumulative[index] < rounded:
            index += 1
    return index


def _last_within(cumulative: list[float], start: int, stop: int, bound: float) -> int:
    """The last bin from ``start`` down (to ``stop``) whose cumulative sum is not above float32 ``bound``."""
    index = start
    if index > stop and cumulative[index] > bound:
        rounded = _float32(bound)
        while index > stop and cumulative[index] > rounded:
            index -= 1
    return index


class _ErrorModel:
    """``observer._compute_quantization_error(start, end)``, the same float32 value, in fewer ops.

    torchao's error is a sum over source bins of three float32 terms. Here each
    term is computed by the same float32 operations on the same operands, in
    the same order, and summed by the same tensor ``sum()``, except that:

    - what depends on the observer only is computed once: the source bin
      edges for every start bin (the edges for one start bin are a slice of
      them, each element the same op on the same values) and the density;
    - the begin and end edges are one array of two rows, so each floor
      division and clamp is one op over both (element-wise, the same values);
    - what is the same for every bin is computed once on Python floats: the
      cube of half a destination bin and the middle term's factor. torchao
      computes them on 0-d float32 tensors or tensors filled with one value;
      rounding the exact double result of each ``*``, ``-`` and ``/`` of
      float32 values to float32 is that float32 op, as a double has more than
      twice float32's precision;
    - the element-wise ``+``, ``-``, ``*`` and ``/`` run in NumPy on views of
      the same memory: IEEE float32 arithmetic is correctly rounded in both
      libraries, and NumPy's call costs a third of a tensor op's. The floor
      divisions are exact floors of the quotients, taken in double precision
      (see :meth:`_destination_bins` for why that is torch's result);
    - the running sum starts from the first term, not from zeros plus it,
      which can only turn a -0.0 into +0.0, and the error is only compared.
    """

    def __init__(self, observer: HistogramObserver) -> None:
        bins = observer.bins
        self.bins = bins
        self.dst_nbins = observer.dst_nbins
        self.bin_width = (observer.max_val.item() - observer.min_val.item()) / bins
        begins = torch.arange(-(bins - 1), bins) * self.bin_width
        self.edges = torch.stack((begins, begins + self.bin_width)).numpy()
        self.density = (observer.histogram / self.bin_width).numpy()

    @staticmethod
    def applies_to(observer: HistogramObserver) -> bool:
        """The float32 CPU histograms the model reproduces; others keep torchao's own method."""
        return (
            observer.histogram.dtype == torch.float32
            and observer.histogram.device.type == "cpu"
            and observer.histogram.dim() == 1
            and torch.get_default_dtype() == torch.float32
        )

    def error(self, start_bin: int, end_bin: int) -> float:
        dst_bin_width = self.bin_width * (end_bin - start_bin + 1) / self.dst_nbins
        if dst_bin_width == 0.0:
            return 0.0
        offset = self.bins - 1 - start_bin
        width = numpy.float32(_float32(dst_bin_width))
        begin, end = self.edges[:, offset : offset + self.bins]
        half = _float32(dst_bin_width / 2)
        minus_half = _float32(-dst_bin_width / 2)
        whole_bin = _float32(_float32(_cube(half) - _cube(minus_half)) / 3)
        with numpy.errstate(all="ignore"):
            dst_of_begin, dst_of_end = self._destination_bins(offset, float(width))
            delta_begin = begin - (dst_of_begin + _ONE_HALF) * width
            norm = self.density * (
                (numpy.float32(_cube(half)) - delta_begin * delta_begin * delta_begin) / _THREE
            )
            norm += (dst_of_end - dst_of_begin - _ONE) * (self.density * numpy.float32(whole_bin))
            delta_end = end - (dst_of_end * width + numpy.float32(half))
            norm += self.density * (
                (delta_end * delta_end * delta_end - numpy.float32(_cube(minus_half))) / _THREE
            )
        return float(torch.from_numpy(norm).sum().item())

    def _destination_bins(self, offset: int, width: float) -> numpy.ndarray:
        """``torch.div(edges, width, rounding_mode="floor").clamp(0, dst_nbins - 1)`` of the float32 edges.

        torch's floor division of float32 values returns the floor of their
        exact quotient while that is below 2^22 in magnitude (its two roundings
        stay under the half it corrects for), and so does ``floor`` of their
        quotient in double precision: a quotient that is not an integer lies
        further from one, relative to its size, than a double's rounding
        reaches. Beyond 2^22 torch may be off by a little, but with at most
        2^16 destination bins such a quotient is clamped to the same end
        either way; more destination bins keep torch's own op.
        """
        edges = self.edges[:, offset : offset + self.bins]
        if self.dst_nbins > _EXACT_DESTINATIONS:
            floor = torch.div(torch.from_numpy(edges), width, rounding_mode="floor")
            return floor.clamp_(0, self.dst_nbins - 1).numpy()
        quotient = numpy.divide(edges, width, dtype=numpy.float64)
        numpy.floor(quotient, out=quotient)
        numpy.minimum(quotient, self.dst_nbins - 1, out=quotient)
        numpy.maximum(quotient, 0.0, out=quotient)
        return quotient.astype(numpy.float32)


_EXACT_DESTINATIONS = 2**16
_ONE = numpy.float32(1)
_ONE_HALF = numpy.float32(0.5)
_THREE = numpy.float32(3)
