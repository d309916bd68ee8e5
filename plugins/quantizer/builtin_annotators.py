"""The built-in annotators: XNNPACK's op list and sharing rules.

Operator tier (each op gets qparams of its own):

==================  ============================  =================  ==========================
name                pattern (anchor last)         modes              annotates
==================  ============================  =================  ==========================
``conv_bn_relu``    conv -> batch_norm -> relu    qat                conv inputs, relu output
``conv_bn``         conv -> batch_norm            qat                conv inputs, bn output
``linear_bn_relu``  linear -> batch_norm -> relu  qat                linear inputs, relu output
``linear_bn``       linear -> batch_norm          qat                linear inputs, bn output
``conv_relu``       conv -> relu                  ptq, qat           conv inputs, relu output
``linear_relu``     linear -> relu                ptq, qat           linear inputs, relu output
``add_relu``        add -> relu                   ptq, qat           add inputs, relu output
``mul_relu``        mul -> relu                   ptq, qat           mul inputs, relu output
``conv``            conv1d / conv2d               ptq, qat, dynamic  input, weight, output
``linear``          linear                        ptq, qat, dynamic  input, weight, output
``add``, ``mul``    add / mul (and in-place)      ptq, qat           both operands, output
==================  ============================  =================  ==========================

The intermediate of a fused pattern (conv, bn, add, ...) must have no other
user, or the pattern does not match and the ops are annotated one by one.
Batch norms only survive to annotation in QAT (PTQ folds them first), hence
the ``conv_bn`` and ``linear_bn`` patterns serve QAT alone (fuse-conv-bn then
rewrites each pair into its simulated form, and a linear's batch norm is
BatchNorm1d over 2-D activations). Biases stay float. Binary ops are
skipped when an operand is not a float32 tensor or is a constant beyond
``histc``'s range (their observer could not take it).

Sharing tier (the output reuses the input's qparams, so no requantization):

* ``adaptive_avg_pool2d``: always; its input shares its producer's output
  qparams when the producer is quantized, else gets activation qparams.
* ``cat``: always; every input and the output share the first input's qparams.
* ``avg_pool2d``, ``hardtanh`` (ReLU6 exports to it), ``max_pool2d``, ``mean``,
  ``permute``, ``relu``, ``slice``, ``squeeze``, ``view`` (also ``view_copy``
  and ``flatten``): only when the producer's output is quantized; a float
  input stays float.

Differences from torchao's XNNPACK test quantizer, on purpose:

* ``cat`` matches ``aten.cat`` itself. torchao looks cats up by source
  partition (``torch.cat``), which non-strict ``torch.export`` records as the
  string ``"cat"``, so it never annotates one and each cat input keeps its own
  qparams; here they share one set, as XNNPACK's concatenation requires.
  A cat with a non-float32 input is left alone (an observer could not take it).
* Dynamic configs annotate conv as well as linear (torchao: linear only).
* ``avg_pool2d``, the in-place ``relu_`` and ``slice.Tensor`` (the
  training-IR spelling of ``slice_copy``) share qparams like their siblings;
  torchao does not list them.
* Weights are not marked as claimed, so two convs sharing one weight are both
  quantized (torchao skips the second); only op nodes are claimed.
* Not provided: ``gru_io_only`` and the ``conv_transpose*`` patterns (a
  transposed conv's output channels lie on weight axis 1, which torchao's
  ``ch_axis=0`` weight spec gets wrong), and conv3d (torchao's ``conv_relu``
  happens to match it, its ``conv`` does not). ``gelu`` is not quantized:
  XNNPACK has no int8 GELU.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx
from torch._ops import OpOverload
from torchao.quantization.pt2e.quantizer import QuantizationSpecBase, SharedQuantizationSpec

from plugins.quantizer.annotator import (
    AnnotateFunction,
    AnnotationContext,
    Annotator,
    Tier,
    is_float32,
    is_quantizable_operand,
    output_qspec_of,
    write_annotation,
)

aten = torch.ops.aten

CONV_OPS = (aten.conv1d.default, aten.conv1d.padding, aten.conv2d.default, aten.conv2d.padding)
LINEAR_OPS = (aten.linear.default,)
RELU_OPS = (aten.relu.default, aten.relu_.default)
ADD_OPS = (aten.add.Tensor, aten.add_.Tensor)
MUL_OPS = (aten.mul.Tensor, aten.mul_.Tensor)
BATCH_NORM_OPS = (aten.batch_norm.default,)

_ALL_MODES = frozenset({"ptq", "qat", "dynamic"})


def _single_user_producer(node: torch.fx.Node, targets: tuple[object, ...]) -> torch.fx.Node | None:
    """``node``'s first argument if it is one of ``targets`` and feeds nothing else (fusable)."""
    producer = node.args[0] if node.args else None
    if (
        isinstance(producer, torch.fx.Node)
        and producer.op == "call_function"
        and producer.target in targets
        and len(producer.users) == 1
    ):
        return producer
    return None


def _weighted_inputs(
    op: torch.fx.Node, ctx: AnnotationContext
) -> dict[torch.fx.Node, QuantizationSpecBase | None] | None:
    activation, weight = op.args[0], op.args[1]
    if not isinstance(activation, torch.fx.Node) or not isinstance(weight, torch.fx.Node):
        return None
    return {activation: ctx.specs.input_activation, weight: ctx.specs.weight}


def _binary_inputs(
    op: torch.fx.Node, ctx: AnnotationContext
) -> dict[torch.fx.Node, QuantizationSpecBase | None] | None:
    inputs: dict[torch.fx.Node, QuantizationSpecBase | None] = {}
    for operand in op.args[:2]:
        if isinstance(operand, torch.fx.Node):
            if not is_quantizable_operand(operand, ctx.graph_module):
                return None
            inputs[operand] = ctx.specs.input_activation
    return inputs


def annotate_weighted(node: torch.fx.Node, ctx: AnnotationContext) -> bool:
    """conv or linear alone: activation and weight in, activation out (none when dynamic)."""
    inputs = _weighted_inputs(node, ctx)
    if inputs is None or not ctx.can_claim(node):
        return False
    write_annotation(node, inputs, ctx.specs.output_activation)
    return True


def annotate_binary(node: torch.fx.Node, ctx: AnnotationContext) -> bool:
    """add or mul alone: each tensor operand in, activation out."""
    inputs = _binary_inputs(node, ctx)
    if inputs is None or not ctx.can_claim(node):
        return False
    write_annotation(node, inputs, ctx.specs.output_activation)
    return True


def _fused_relu(producers: tuple[object, ...], weighted: bool) -> AnnotateFunction:
    """``producer -> relu``: the producer's inputs, the relu's output."""

    def annotate(relu: torch.fx.Node, ctx: AnnotationContext) -> bool:
        op = _single_user_producer(relu, producers)
        if op is None:
            return False
        inputs = _weighted_inputs(op, ctx) if weighted else _binary_inputs(op, ctx)
        if inputs is None or not ctx.can_claim(op, relu):
            return False
        write_annotation(op, inputs)
        write_annotation(relu, output=ctx.specs.output_activation)
        return True

    return annotate


def _normalises_channels(layer: torch.fx.Node) -> bool:
    """Whether a batch norm after ``layer`` acts on its output channels: not for a linear over 3-D input."""
    value = layer.meta.get("val")
    return layer.target not in LINEAR_OPS or not isinstance(value, torch.Tensor) or value.ndim == 2


def _layer_bn(layers: tuple[object, ...]) -> AnnotateFunction:
    def annotate(bn: torch.fx.Node, ctx: AnnotationContext) -> bool:
        """layer -> batch_norm (QAT): layer inputs, bn output."""
        layer = _single_user_producer(bn, layers)
        if layer is None or not _normalises_channels(layer):
            return False
        inputs = _weighted_inputs(layer, ctx)
        if inputs is None or not ctx.can_claim(layer, bn):
            return False
        write_annotation(layer, inputs)
        write_annotation(bn, output=ctx.specs.output_activation)
        return True

    return annotate


def _layer_bn_relu(layers: tuple[object, ...]) -> AnnotateFunction:
    def annotate(relu: torch.fx.Node, ctx: AnnotationContext) -> bool:
        """layer -> batch_norm -> relu (QAT): layer inputs, relu output."""
        bn = _single_user_producer(relu, BATCH_NORM_OPS)
        layer = None if bn is None else _single_user_producer(bn, layers)
        if bn is None or layer is None or not _normalises_channels(layer):
            return False
        inputs = _weighted_inputs(layer, ctx)
        if inputs is None or not ctx.can_claim(layer, bn, relu):
            return False
        write_annotation(layer, inputs)
        write_annotation(relu, output=ctx.specs.output_activation)
        return True

    return annotate


def annotate_shared_with_producer(node: torch.fx.Node, ctx: AnnotationContext) -> bool:
    """Output and input reuse the producer's qparams, if the producer's output is quantized."""
    producer = node.args[0] if node.args else None
    if not isinstance(producer, torch.fx.Node) or output_qspec_of(producer) is None:
        return False
    if not ctx.can_claim(node):
        return False
    shared = SharedQuantizationSpec(producer)
    write_annotation(node, {producer: shared}, shared)
    return True


def annotate_adaptive_avg_pool2d(node: torch.fx.Node, ctx: AnnotationContext) -> bool:
    """Always quantized: the input shares a quantized producer's qparams, the output the input's."""
    producer = node.args[0]
    if not isinstance(producer, torch.fx.Node) or not ctx.can_claim(node):
        return False
    if output_qspec_of(producer) is not None:
        input_spec: QuantizationSpecBase = SharedQuantizationSpec(producer)
    else:
        input_spec = ctx.specs.input_activation
    write_annotation(node, {producer: input_spec}, SharedQuantizationSpec((producer, node)))
    return True


def annotate_cat(node: torch.fx.Node, ctx: AnnotationContext) -> bool:
    """Always quantized, one set of qparams for every input and the output (a cat cannot rescale)."""
    tensors = node.args[0]
    if not isinstance(tensors, (list, tuple)) or not tensors:
        return False
    first = tensors[0]
    if not isinstance(first, torch.fx.Node) or not ctx.can_claim(node):
        return False
    if not all(is_float32(tensor) for tensor in tensors if isinstance(tensor, torch.fx.Node)):
        return False
    shared = SharedQuantizationSpec((first, node))
    inputs: dict[torch.fx.Node, QuantizationSpecBase | None] = {first: ctx.specs.input_activation}
    for tensor in tensors[1:]:
        if isinstance(tensor, torch.fx.Node) and tensor not in inputs:
            inputs[tensor] = shared
    write_annotation(node, inputs, shared)
    return True


def _sharing(name: str, ops: Iterable[OpOverload]) -> Annotator:
    return Annotator(name=name, ops=tuple(ops), function=annotate_shared_with_producer, tier=Tier.SHARING)


_DECLARED = (
    Annotator("conv_bn_relu", RELU_OPS, _layer_bn_relu(CONV_OPS), pattern_size=3, modes={"qat"}),
    Annotator("conv_bn", BATCH_NORM_OPS, _layer_bn(CONV_OPS), pattern_size=2, modes={"qat"}),
    Annotator("linear_bn_relu", RELU_OPS, _layer_bn_relu(LINEAR_OPS), pattern_size=3, modes={"qat"}),
    Annotator("linear_bn", BATCH_NORM_OPS, _layer_bn(LINEAR_OPS), pattern_size=2, modes={"qat"}),
    Annotator("conv_relu", RELU_OPS, _fused_relu(CONV_OPS, weighted=True), pattern_size=2),
    Annotator("linear_relu", RELU_OPS, _fused_relu(LINEAR_OPS, weighted=True), pattern_size=2),
    Annotator("add_relu", RELU_OPS, _fused_relu(ADD_OPS, weighted=False), pattern_size=2),
    Annotator("mul_relu", RELU_OPS, _fused_relu(MUL_OPS, weighted=False), pattern_size=2),
    Annotator("conv", CONV_OPS, annotate_weighted, modes=_ALL_MODES),
    Annotator("linear", LINEAR_OPS, annotate_weighted, modes=_ALL_MODES),
    Annotator("add", ADD_OPS, annotate_binary),
    Annotator("mul", MUL_OPS, annotate_binary),
    Annotator(
        "adaptive_avg_pool2d",
        (aten.adaptive_avg_pool2d.default,),
        annotate_adaptive_avg_pool2d,
        tier=Tier.SHARING,
    ),
    Annotator("cat", (aten.cat.default,), annotate_cat, tier=Tier.SHARING),
    _sharing("avg_pool2d", (aten.avg_pool2d.default,)),
    _sharing("hardtanh", (aten.hardtanh.default, aten.hardtanh_.default)),
    _sharing("max_pool2d", (aten.max_pool2d.default,)),
    _sharing("mean", (aten.mean.default, aten.mean.dim)),
    _sharing("permute", (aten.permute.default, aten.permute_copy.default)),
    _sharing("relu", RELU_OPS),
    _sharing("slice", (aten.slice.Tensor, aten.slice_copy.Tensor)),
    _sharing("squeeze", (aten.squeeze.dim, aten.squeeze_copy.dim)),
    _sharing("view", (aten.view.default, aten.view_copy.default, aten.flatten.using_ints)),
)
BUILTIN_ANNOTATORS: tuple[Annotator, ...] = tuple(sorted(_DECLARED, key=lambda annotator: annotator.sort_key))
"""Every built-in annotator, in the order they are tried."""

_BY_NAME = {annotator.name: annotator for annotator in BUILTIN_ANNOTATORS}


def builtin_annotators(*names: str) -> tuple[Annotator, ...]:
    """The built-in annotators called ``names`` (all of them if none is given), in the order given.

    The way to build a hermetic quantizer from a known op list, such as a
    backend's or a test's.
    """
    if not names:
        return BUILTIN_ANNOTATORS
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise KeyError(
            f"no built-in annotator named {', '.join(map(repr, unknown))}; "
            f"the built-ins are {', '.join(sorted(_BY_NAME))}"
        )
    return tuple(_BY_NAME[name] for name in names)
