"""What the audit trail records for quantization: annotation and tag changes, and Q/DQ qparams.

The engine watches ``stack_trace`` and ``nn_module_stack`` on its own; these
declarations add ``quantization_tag``, ``quantization_annotation`` and the two
QAT batch-norm marks (fold-bn's "kept for training", fuse-conv-bn's pairing
and decline reason), so that a change to any becomes a ``node.meta_changed``
event, and give every event about a quantize, dequantize or choose-qparams
node its scale, zero point, range, dtype and axis, read from the node's own
arguments.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Hashable
from typing import Any

import torch
import torch.fx
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    SharedQuantizationSpec,
)

from pipeline import MetaField, NodeDescriber
from pipeline.audit.serialize import PlainList
from plugins import ops
from plugins.fold_bn import KEPT_FOR_TRAINING
from plugins.fuse_conv_bn import QAT_BATCH_NORM
from plugins.sharing import describe

_LISTED_VALUES = 256


def spec_summary(spec: object) -> str | None:
    """A one-line, stable description of a quantization spec."""
    if spec is None:
        return None
    if isinstance(spec, SharedQuantizationSpec):
        return f"shared with {describe(spec.edge_or_node)}"
    if isinstance(spec, DerivedQuantizationSpec):
        sources = ", ".join(describe(source) for source in spec.derived_from)
        return f"derived {spec.dtype} {spec.qscheme} from {sources}"
    try:
        return _value_spec_summary(spec)
    except TypeError:
        return _value_spec_summary.__wrapped__(spec)


@functools.lru_cache(maxsize=1024)
def _value_spec_summary(spec: object) -> str:
    """Summaries of specs that name no node: quantizers reuse a few spec objects for every node."""
    if isinstance(spec, FixedQParamsQuantizationSpec):
        return (
            f"fixed {spec.dtype} scale={spec.scale} zero_point={spec.zero_point} "
            f"[{spec.quant_min}, {spec.quant_max}]"
        )
    if isinstance(spec, QuantizationSpec):
        constructor = spec.observer_or_fake_quant_ctr
        observer = getattr(getattr(constructor, "p", None), "func", constructor)
        parts = [
            str(spec.dtype),
            str(spec.qscheme),
            f"[{spec.quant_min}, {spec.quant_max}]",
            f"axis={spec.ch_axis}" if spec.ch_axis is not None else "",
            "dynamic" if spec.is_dynamic else "",
            getattr(observer, "__name__", type(observer).__name__),
        ]
        return " ".join(part for part in parts if part)
    return repr(spec)


def annotation_snapshot(value: Any) -> Hashable:
    """A frozen summary of a ``QuantizationAnnotation`` (its specs by input name, and its flags)."""
    if not isinstance(value, QuantizationAnnotation):
        return repr(value)
    return (
        (
            "inputs",
            tuple(
                (getattr(producer, "name", str(producer)), spec_summary(spec))
                for producer, spec in value.input_qspec_map.items()
            ),
        ),
        ("output", spec_summary(value.output_qspec)),
        ("allow_implicit_sharing", value.allow_implicit_sharing),
        ("annotated", value._annotated),
    )


META_FIELDS = (
    MetaField("quantization_tag"),
    MetaField("quantization_annotation", annotation_snapshot, holds_nodes=True),
    MetaField(KEPT_FOR_TRAINING),
    MetaField(QAT_BATCH_NORM),
)


_PLAIN = frozenset({int, float, bool, str, type(None)})


def _value(owner: torch.nn.Module | None, argument: Any) -> Any:
    if type(argument) in _PLAIN:
        return argument
    if isinstance(argument, torch.fx.Node):
        if argument.op == "get_attr" and owner is not None:
            try:
                tensor = operator.attrgetter(str(argument.target))(owner)
            except AttributeError:
                return f"%{argument.name}"
            return _tensor(tensor) if isinstance(tensor, torch.Tensor) else f"%{argument.name}"
        return f"%{argument.name}"
    if isinstance(argument, (torch.dtype, torch.device, torch.qscheme)):
        return str(argument)
    if isinstance(argument, (list, tuple)):
        return [_value(owner, item) for item in argument]
    return argument


def _tensor(tensor: torch.Tensor) -> Any:
    """A short tensor (a scale or zero point vector) as its values; a longer one as its shape and range."""
    if tensor.numel() <= _LISTED_VALUES:
        values = tensor.tolist() if tensor.dim() <= 1 else tensor.detach().flatten().tolist()
        if tensor.dim() == 0:
            return values
        finite = not tensor.is_floating_point() or all(map(math.isfinite, values))
        return PlainList(values) if finite else values
    flat = tensor.detach().flatten()
    return {
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "min": flat.min().item(),
        "max": flat.max().item(),
    }


@functools.lru_cache(maxsize=256)
def _parameters(target: Any) -> tuple[tuple[int, str, bool, Any], ...]:
    """Each argument of ``target``'s schema but the input: position, name, and default if any."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        return ()
    return tuple(
        (
            position,
            argument.name,
            argument.has_default_value(),
            argument.default_value if argument.has_default_value() else None,
        )
        for position, argument in enumerate(schema.arguments)
        if argument.name != "input"
    )


def describe_qdq(node: torch.fx.Node) -> dict[str, Any]:
    """The qparams of a quantize, dequantize or choose-qparams node, by argument name."""
    target = node.target
    if isinstance(target, torch._ops.OpOverloadPacket):
        target = target.default
    try:
        parameters = _parameters(target)
    except TypeError:
        parameters = _parameters.__wrapped__(target)
    owner = node.graph.owning_module
    args, kwargs = node.args, node.kwargs
    details = {}
    for position, name, has_default, default in parameters:
        if position < len(args):
            value = args[position]
        elif name in kwargs:
            value = kwargs[name]
        elif has_default:
            value = default
        else:
            continue
        details[name] = _value(owner, value)
    return details


DESCRIBERS = (NodeDescriber(tuple(ops.QDQ_OPS), describe_qdq),)
