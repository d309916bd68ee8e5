"""Observers copied from the first one of their spec are the observers the constructor would build."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_buffer_registration_hook
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)

from plugins.observer_copies import ObserverMaker

PER_TENSOR = {"dtype": torch.quint8, "qscheme": torch.per_tensor_affine, "quant_min": 0, "quant_max": 255}
PER_CHANNEL = {
    "dtype": torch.qint8,
    "qscheme": torch.per_channel_symmetric,
    "quant_min": -127,
    "quant_max": 127,
    "ch_axis": 0,
}
CASES = [
    (HistogramObserver, PER_TENSOR),
    (HistogramObserver.with_args(bins=64, eps=2**-12), PER_TENSOR),
    (MinMaxObserver, {**PER_TENSOR, "qscheme": torch.per_tensor_symmetric, "dtype": torch.qint8}),
    (MovingAverageMinMaxObserver, PER_TENSOR),
    (PerChannelMinMaxObserver, PER_CHANNEL),
    (PlaceholderObserver, {**PER_TENSOR, "is_dynamic": True}),
]


def assert_same_state(copied: torch.nn.Module, fresh: torch.nn.Module, sibling: torch.nn.Module) -> None:
    assert type(copied) is type(fresh)
    assert vars(copied).keys() == vars(fresh).keys()
    for name, value in vars(fresh).items():
        mine = vars(copied)[name]
        if name == "_buffers":
            assert mine.keys() == value.keys()
            for key, tensor in value.items():
                assert torch.equal(mine[key], tensor) and mine[key].dtype == tensor.dtype
                assert mine[key].stride() == tensor.stride() and mine[key] is not vars(sibling)[name][key]
        elif isinstance(value, (dict, set)):
            assert mine == value and mine is not vars(sibling)[name], name
        else:
            assert mine == value, name


@pytest.mark.parametrize(("constructor", "arguments"), CASES)
def test_a_copy_is_what_the_constructor_builds_and_calibrates_the_same(constructor, arguments):
    maker = ObserverMaker()
    first = maker.make(constructor, arguments)
    second = maker.make(constructor, arguments)
    assert_same_state(second, constructor.with_args(**arguments)(), first)
    if isinstance(second, PlaceholderObserver):
        return
    fresh = constructor.with_args(**arguments)()
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        values = torch.randn(6, 16, generator=generator)
        second(values)
        fresh(values)
    for mine, theirs in zip(second.calculate_qparams(), fresh.calculate_qparams(), strict=True):
        assert torch.equal(mine, theirs)


def test_later_copies_come_from_a_pristine_copy_not_from_an_observer_handed_out():
    maker = ObserverMaker()
    first = maker.make(HistogramObserver, PER_TENSOR)
    first(torch.randn(32))
    first.custom = "set by a quantizer's callback"
    later = maker.make(HistogramObserver, PER_TENSOR)
    assert_same_state(later, HistogramObserver.with_args(**PER_TENSOR)(), first)


class Counting(HistogramObserver):
    built = 0

    def __init__(self, **arguments):
        super().__init__(**arguments)
        type(self).built += 1


def test_a_subclass_is_constructed_every_time():
    maker = ObserverMaker()
    Counting.built = 0
    for _ in range(3):
        maker.make(Counting, PER_TENSOR)
    assert Counting.built == 3


def test_a_constructor_with_callable_arguments_is_called_every_time():
    calls = []

    def bins():
        calls.append(1)
        return 32 * len(calls)

    constructor = HistogramObserver.with_callable_args(bins=bins)
    maker = ObserverMaker()
    made = [maker.make(constructor, PER_TENSOR) for _ in range(3)]
    assert len(calls) == 3 and [observer.bins for observer in made] == [32, 64, 96]


def test_global_registration_hooks_see_every_observer_built():
    maker = ObserverMaker()
    maker.make(HistogramObserver, PER_TENSOR)
    seen = []
    handle = register_module_buffer_registration_hook(lambda module, name, buffer: seen.append(name))
    try:
        maker.make(HistogramObserver, PER_TENSOR)
    finally:
        handle.remove()
    assert "histogram" in seen
