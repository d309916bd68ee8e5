"""Observers built from quantization specs, and the questions later stages ask of them.

The observer classes are torchao's (so that calibration computes the same
qparams); building one from a spec follows torchao's rules, which decide the
qparams too: the spec's fields override the constructor's own arguments,
``ch_axis`` reaches only per-channel observers, fixed-qparams specs become
``FixedQParamsObserver`` (a fake-quantize in QAT), derived specs a
``DerivedObserverOrFakeQuantize`` over their sources' observers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torchao.quantization.pt2e import DerivedObserverOrFakeQuantize
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase, FixedQParamsFakeQuantize
from torchao.quantization.pt2e.observer import (
    AffineQuantizedObserverBase,
    FixedQParamsObserver,
    ObserverBase,
    PlaceholderObserver,
    _is_activation_post_process,
)
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    QuantizationSpecBase,
)

from plugins.observer_copies import ObserverMaker, constructor_links

ObserverModule = torch.nn.Module


def is_observer(module: object) -> bool:
    """Whether ``module`` is an observer or fake-quantize that convert turns into Q/DQ ops."""
    return isinstance(module, torch.nn.Module) and bool(_is_activation_post_process(module))


def _constructor_class(constructor: Any) -> type:
    last = constructor_links(constructor)[-1]
    return last if isinstance(last, type) else type(last)


def _spec_arguments(spec: QuantizationSpecBase) -> dict[str, Any]:
    return {
        field.name: copy.deepcopy(getattr(spec, field.name))
        for field in dataclasses.fields(spec)  # type: ignore[arg-type]
        if field.name != "observer_or_fake_quant_ctr"
    }


def build(
    spec: QuantizationSpecBase | None,
    built: Mapping[Any, ObserverModule | None],
    *,
    is_qat: bool,
    maker: ObserverMaker,
) -> ObserverModule | None:
    """A new observer for ``spec``; ``built`` holds the observers of other edges and outputs.

    ``maker`` makes the observers of plain specs (copying those it may, see
    :mod:`plugins.observer_copies`).
    """
    if spec is None:
        return None
    if isinstance(spec, DerivedQuantizationSpec):
        return DerivedObserverOrFakeQuantize.with_args(
            dtype=spec.dtype,
            derive_qparams_fn=spec.derive_qparams_fn,
            quant_min=spec.quant_min,
            quant_max=spec.quant_max,
            qscheme=spec.qscheme,
            ch_axis=spec.ch_axis,
            obs_or_fqs=[built[source] for source in spec.derived_from],
        )()
    if isinstance(spec, FixedQParamsQuantizationSpec):
        observer = FixedQParamsObserver.with_args(**_spec_arguments(spec))
        if is_qat:
            return FixedQParamsFakeQuantize.with_args(observer=observer)()
        return observer()
    if not isinstance(spec, QuantizationSpec):
        raise TypeError(f"unsupported quantization spec {spec!r}")
    constructor = spec.observer_or_fake_quant_ctr
    arguments = _spec_arguments(spec)
    if "PerChannel" not in _constructor_class(constructor).__name__:
        arguments.pop("ch_axis")
    return maker.make(constructor, arguments)


def has_seen_data(module: torch.nn.Module) -> bool:
    """Whether the observer has what it needs to compute qparams.

    Dynamic and fixed-qparams observers need nothing; derived ones need their
    sources; min/max and histogram observers need to have seen a finite value.
    """
    if isinstance(module, DerivedObserverOrFakeQuantize):
        return all(has_seen_data(source) for source in module.obs_or_fqs)
    if isinstance(module, (FixedQParamsObserver, FixedQParamsFakeQuantize, PlaceholderObserver)):
        return True
    if getattr(module, "is_dynamic", False):
        return True
    if isinstance(module, AffineQuantizedObserverBase):
        return module.block_size is not None
    if isinstance(module, FakeQuantizeBase):
        inner = getattr(module, "activation_post_process", None)
        return inner is None or has_seen_data(inner)
    if isinstance(module, ObserverBase):
        low = getattr(module, "min_val", None)
        high = getattr(module, "max_val", None)
        if isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor):
            return _all_finite(low) and _all_finite(high)
    return True


def _all_finite(values: torch.Tensor) -> bool:
    """Non-empty and finite.

    A float scalar or vector of a few thousand values (a per-channel minimum
    or maximum) is read as Python floats, which keep inf and NaN, rather than
    checked with two tensor ops.
    """
    count = values.numel()
    if count == 1 and values.is_floating_point():
        return math.isfinite(values.item())
    if values.dim() == 1 and 0 < count <= _READ_AS_FLOATS and values.is_floating_point():
        return all(map(math.isfinite, values.tolist()))
    return count > 0 and bool(torch.isfinite(values).all())


_READ_AS_FLOATS = 4096


def summary(module: torch.nn.Module) -> dict[str, Any]:
    """What an audit event says about an observer: its class, dtype, scheme and range."""
    fields: dict[str, Any] = {"observer_class": type(module).__name__}
    state = vars(module)
    for name in ("dtype", "qscheme", "quant_min", "quant_max", "ch_axis", "is_dynamic"):
        value = state[name] if name in state else getattr(module, name, None)
        if value is not None:
            fields[name] = value if isinstance(value, (bool, int)) else str(value)
    eps = getattr(module, "eps", None)
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        value = float(eps)
        fields["eps"] = value if math.isfinite(value) else str(value)
    return fields
