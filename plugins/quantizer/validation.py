"""Checking that the annotations in a graph can be prepared, before prepare trips on them.

torchao's prepare reports a malformed annotation (a spec for a node that is
not an argument, a shared spec pointing at nothing) as a ``KeyError`` or an
assertion deep in its union-find; here each problem is named with its node,
so the user learns which annotator wrote what.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.fx
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

from pipeline import StageError
from plugins.annotation import ANNOTATION_KEY

_PER_CHANNEL = (torch.per_channel_symmetric, torch.per_channel_affine, torch.per_channel_affine_float_qparams)


class AnnotationError(StageError):
    """An annotation in the graph is malformed; ``node`` is the node carrying it."""


def validate_annotations(graph_module: torch.fx.GraphModule) -> None:
    """Raise :class:`AnnotationError` for the first malformed annotation, in graph order."""
    for node in graph_module.graph.nodes:
        annotation = node.meta.get(ANNOTATION_KEY)
        if annotation is None:
            continue
        if not isinstance(annotation, QuantizationAnnotation):
            _fail(
                node,
                f"carries a {type(annotation).__name__} under {ANNOTATION_KEY!r}; expected torchao's "
                f"QuantizationAnnotation",
            )
        inputs = node.all_input_nodes
        for argument, spec in annotation.input_qspec_map.items():
            if argument not in inputs:
                _fail(node, f"has an input spec for {argument!r}, which is not one of its arguments")
            _check_spec(node, spec, f"input {argument.name}", argument)
        _check_spec(node, annotation.output_qspec, "output", node)


def _fail(node: torch.fx.Node, problem: str) -> None:
    raise AnnotationError(f"quantization annotation of node {node.name} ({node.target}) {problem}", node=node)


def _check_spec(node: torch.fx.Node, spec: object, where: str, tensor: torch.fx.Node) -> None:
    if spec is None:
        return
    if not isinstance(spec, QuantizationSpecBase):
        _fail(node, f"gives its {where} {spec!r}, which is not a torchao quantization spec")
    if isinstance(spec, (QuantizationSpec, DerivedQuantizationSpec, FixedQParamsQuantizationSpec)):
        _check_range(node, spec, where)
    if isinstance(spec, QuantizationSpec) and spec.qscheme in _PER_CHANNEL:
        _check_axis(node, spec, where, tensor)
    if isinstance(spec, FixedQParamsQuantizationSpec) and not spec.scale > 0:
        _fail(node, f"gives its {where} a fixed scale of {spec.scale}; scales must be positive")
    if isinstance(spec, SharedQuantizationSpec):
        _check_shared(node, spec, where)
    if isinstance(spec, DerivedQuantizationSpec):
        for source in spec.derived_from:
            _check_reference(node, source, where, "derives its qparams from")


def _check_range(
    node: torch.fx.Node,
    spec: QuantizationSpec | DerivedQuantizationSpec | FixedQParamsQuantizationSpec,
    where: str,
) -> None:
    if not isinstance(spec.dtype, torch.dtype):
        _fail(node, f"gives its {where} the dtype {spec.dtype!r}, which is not a torch.dtype")
    if spec.dtype.is_floating_point or spec.dtype == torch.bool:
        return
    info = torch.iinfo(spec.dtype)
    for bound in ("quant_min", "quant_max"):
        value = getattr(spec, bound)
        if value is not None and not info.min <= value <= info.max:
            _fail(
                node,
                f"gives its {where} {bound}={value}, outside {spec.dtype}'s range [{info.min}, {info.max}]",
            )


def _check_axis(node: torch.fx.Node, spec: QuantizationSpec, where: str, tensor: torch.fx.Node) -> None:
    if spec.ch_axis is None:
        _fail(node, f"quantizes its {where} per channel ({spec.qscheme}) without a ch_axis")
    value = tensor.meta.get("val")
    rank = value.dim() if isinstance(value, torch.Tensor) else None
    if rank is not None and not spec.ch_axis < rank:
        _fail(
            node,
            f"quantizes its {where} per channel along axis {spec.ch_axis}, but {tensor.name} has "
            f"only {rank} dimension(s)",
        )


def _check_shared(node: torch.fx.Node, spec: SharedQuantizationSpec, where: str) -> None:
    _check_reference(node, spec.edge_or_node, where, "shares qparams with")
    seen: set[object] = set()
    current: object = spec
    while isinstance(current, SharedQuantizationSpec):
        target = current.edge_or_node
        if target in seen:
            _fail(node, f"has a sharing cycle through its {where}: {_describe(target)} shares with itself")
        seen.add(target)
        current = _spec_at(target)


def _check_reference(node: torch.fx.Node, target: object, where: str, relation: str) -> None:
    if isinstance(target, torch.fx.Node):
        if target.graph is not node.graph:
            _fail(node, f"{where} {relation} node {target.name} of another graph")
        if _spec_at(target) is None:
            _fail(node, f"{where} {relation} the output of {target.name}, which is not quantized")
        return
    if (
        isinstance(target, tuple)
        and len(target) == 2
        and all(isinstance(end, torch.fx.Node) for end in target)
    ):
        producer, consumer = cast(tuple[torch.fx.Node, torch.fx.Node], target)
        if consumer.graph is not node.graph or producer not in consumer.all_input_nodes:
            _fail(node, f"{where} {relation} {_describe(target)}, which is not an edge of the graph")
        if _spec_at(target) is None:
            _fail(node, f"{where} {relation} {_describe(target)}, which is not quantized")
        return
    _fail(node, f"{where} {relation} {target!r}; expected a node or a (producer, consumer) edge")


def _spec_at(target: object) -> QuantizationSpecBase | None:
    if isinstance(target, torch.fx.Node):
        annotation = target.meta.get(ANNOTATION_KEY)
        return annotation.output_qspec if isinstance(annotation, QuantizationAnnotation) else None
    producer, consumer = cast(tuple[torch.fx.Node, torch.fx.Node], target)
    annotation = consumer.meta.get(ANNOTATION_KEY)
    if not isinstance(annotation, QuantizationAnnotation):
        return None
    return annotation.input_qspec_map.get(producer)


def _describe(target: object) -> str:
    if isinstance(target, torch.fx.Node):
        return f"the output of {target.name}"
    producer, consumer = cast(tuple[torch.fx.Node, torch.fx.Node], target)
    return f"the edge {producer.name} -> {consumer.name}"
