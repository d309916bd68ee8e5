"""What the symmetric quantizer is asked for, and the torchao specs that answer it.

A :class:`SymmetricConfig` is a small frozen value (hashable, so it can key a
cache and be compared between module scopes); :func:`specs_for` turns it into
the observer-carrying ``QuantizationSpec`` objects an annotator writes. The
observers are exactly those of torchao's XNNPACK test configuration
(``get_symmetric_quantization_config``), so a model quantized here can be
compared bit for bit with one quantized by ``XNNPACKQuantizer``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import attrs
import torch
from torchao.quantization.pt2e import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from torchao.quantization.pt2e.quantizer import QuantizationSpec

Mode = Literal["ptq", "qat", "dynamic"]
"""How a config quantizes: static post-training, static with fake-quant training, or dynamic."""

MODES: frozenset[str] = frozenset({"ptq", "qat", "dynamic"})

_INT8_MIN, _INT8_MAX = -128, 127
_EPS = 2**-12
"""XNNPACK's observer eps: keeps scales away from zero for constant tensors."""


def _owner(field: attrs.Attribute[Any]) -> str:
    return f"SymmetricConfig.{field.name}"


def _boolean(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{_owner(field)} must be True or False, got {value!r}")


def _int8_bound(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_owner(field)} must be an int, got {value!r}")
    if not _INT8_MIN <= value <= _INT8_MAX:
        raise ValueError(f"{_owner(field)} must lie in int8's range [{_INT8_MIN}, {_INT8_MAX}], got {value}")


def _above(lower: str) -> Any:
    def check(instance: Any, field: attrs.Attribute[Any], value: int) -> None:
        low = getattr(instance, lower)
        if value <= low:
            raise ValueError(
                f"{_owner(field)} ({value}) must be greater than SymmetricConfig.{lower} ({low})"
            )

    return check


def _symmetric_weight_range(instance: SymmetricConfig, field: attrs.Attribute[Any], value: int) -> None:
    if instance.weight_qmin not in (-value, -value - 1):
        raise ValueError(
            f"{_owner(field)} ({value}) and SymmetricConfig.weight_qmin ({instance.weight_qmin}) do not "
            f"make a symmetric range: weight_qmin must be -{value} (restricted) or -{value + 1} (full)"
        )


@attrs.frozen
class SymmetricConfig:
    """How one scope of a model (the whole model, a module type, a module name) is quantized.

    int8 throughout, as XNNPACK runs it: weights symmetric (``per_channel``
    along the output channel, or per tensor), activations asymmetric per
    tensor. ``dynamic`` computes activation qparams at run time and only
    touches linear and conv; ``qat`` swaps observers for fake-quantize modules
    so the same annotations train. The ranges default to XNNPACK's: the full
    int8 range for activations, the restricted ``[-127, 127]`` for weights so
    that negating a weight never overflows.
    """

    per_channel: bool = attrs.field(default=True, validator=_boolean)
    dynamic: bool = attrs.field(default=False, validator=_boolean)
    qat: bool = attrs.field(default=False, validator=_boolean)
    act_qmin: int = attrs.field(default=-128, validator=_int8_bound)
    act_qmax: int = attrs.field(default=127, validator=[_int8_bound, _above("act_qmin")])
    weight_qmin: int = attrs.field(default=-127, validator=_int8_bound)
    weight_qmax: int = attrs.field(
        default=127, validator=[_int8_bound, _above("weight_qmin"), _symmetric_weight_range]
    )

    @property
    def mode(self) -> Mode:
        """The mode that decides which annotators apply (dynamic wins over qat)."""
        if self.dynamic:
            return "dynamic"
        return "qat" if self.qat else "ptq"

    @property
    def specs(self) -> QuantizationSpecs:
        """The torchao specs for this config; the same objects every time it is asked."""
        return specs_for(self)


@attrs.frozen
class QuantizationSpecs:
    """The specs an annotator writes for one config.

    ``output_activation`` is ``None`` for dynamic configs: a dynamically
    quantized op consumes quantized inputs and produces float. Biases are never
    quantized (XNNPACK computes them in int32 from the input and weight
    scales itself), so there is no bias spec.
    """

    input_activation: QuantizationSpec
    output_activation: QuantizationSpec | None
    weight: QuantizationSpec


@functools.cache
def specs_for(config: SymmetricConfig) -> QuantizationSpecs:
    """The specs of ``config``, cached so that equal configs share spec objects.

    Sharing the objects matters: torchao compares specs by value, and an
    observer constructor made by ``with_args`` only equals itself.
    """
    activation = QuantizationSpec(
        dtype=torch.int8,
        quant_min=config.act_qmin,
        quant_max=config.act_qmax,
        qscheme=torch.per_tensor_affine,
        is_dynamic=config.dynamic,
        observer_or_fake_quant_ctr=_activation_observer(config),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=config.weight_qmin,
        quant_max=config.weight_qmax,
        qscheme=torch.per_channel_symmetric if config.per_channel else torch.per_tensor_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=_weight_observer(config),
    )
    return QuantizationSpecs(
        input_activation=activation,
        output_activation=None if config.dynamic else activation,
        weight=weight,
    )


def _activation_observer(config: SymmetricConfig) -> Any:
    if config.qat and config.dynamic:
        return FakeQuantize.with_args(
            eps=_EPS, observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1)
        )
    if config.qat:
        return FusedMovingAvgObsFakeQuantize.with_args(eps=_EPS)
    if config.dynamic:
        return PlaceholderObserver.with_args(eps=_EPS)
    return HistogramObserver.with_args(eps=_EPS)


def _weight_observer(config: SymmetricConfig) -> Any:
    if config.qat:
        observer = (
            MovingAveragePerChannelMinMaxObserver if config.per_channel else MovingAverageMinMaxObserver
        )
        return FusedMovingAvgObsFakeQuantize.with_args(eps=_EPS, observer=observer)
    if config.per_channel:
        return PerChannelMinMaxObserver.with_args(eps=_EPS)
    return MinMaxObserver.with_args(eps=_EPS)
