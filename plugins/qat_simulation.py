"""The simulated form of a layer followed by a batch norm, for quantization-aware training.

In QAT the batch norm must keep training while the layer's weight is
fake-quantized as it will be once the batch norm is folded into it. torchao's
answer, reproduced op for op (the training numerics depend on it), scales the
weight by the batch norm's factor before the layer, so the weight fake-quant
sees the folded weight, and divides the factor back out after it::

    scale   = gamma / sqrt(running_var + eps)                 add, sqrt, div
    y       = layer(x, W * scale, zeros_like(b))          reshape, mul, zeros_like, layer
    y       = y / scale + b                               reshape, div, reshape, add
    output  = batch_norm(y, gamma, beta, mean, var, training=True, momentum, eps)

The layer's weight argument is the ``mul`` and its bias the ``zeros_like``, so
a quantizer's specs for the weight and bias edges move onto those edges. This
module builds the form (:func:`simulate`, at prepare) and recognises it
(:func:`find_simulation`, at convert, after the weight's fake-quant became
quantize/dequantize ops), in torchao's spelling too, so a model prepared by
torchao converts here as well.

Where torchao's form is wrong this one is right, and the recognition accepts
both: eps and momentum are the batch norm's own (torchao: always 1e-5 and
0.1); ``BatchNorm(affine=False)`` scales by ``1 / sqrt`` (torchao divides
``None``); a grouped transposed conv scales its weight per group (torchao's
reshape cannot); the zero bias takes the activation's dtype (torchao:
float32 always).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor

from plugins import ops
from plugins.layers import BATCH_NORM, Kind, batch_norm_arguments, kind_of, transpose_groups

_aten = torch.ops.aten

ADD = _aten.add.Tensor
SQRT = _aten.sqrt.default
DIV = _aten.div.Tensor
RECIPROCAL = _aten.reciprocal.default
RESHAPE = _aten.reshape.default
MUL = _aten.mul.Tensor
ZEROS_LIKE = _aten.zeros_like.default

_WEIGHT, _BIAS = 1, 2


@attrs.frozen
class Simulation:
    """The nodes of one simulated layer and batch norm.

    ``weight`` and ``bias`` read the float parameters (``bias`` is ``None``
    for a layer without one). ``weight_chain`` and ``bias_chain`` are the
    quantize/dequantize nodes between the scaled weight (or zero bias) and the
    layer, outermost last; empty before convert, or when the edge is not
    quantized. ``helpers`` are every node of the form apart from the layer,
    the batch norm, the parameters and the chains: what folding erases.
    """

    layer: torch.fx.Node = attrs.field(eq=False)
    batch_norm: torch.fx.Node = attrs.field(eq=False)
    kind: Kind
    weight: torch.fx.Node = attrs.field(eq=False)
    bias: torch.fx.Node | None = attrs.field(eq=False)
    scaled_weight: torch.fx.Node = attrs.field(eq=False)
    zero_bias: torch.fx.Node | None = attrs.field(eq=False)
    weight_chain: tuple[torch.fx.Node, ...] = attrs.field(eq=False)
    bias_chain: tuple[torch.fx.Node, ...] = attrs.field(eq=False)
    helpers: tuple[torch.fx.Node, ...] = attrs.field(eq=False)


def weight_shape(kind: Kind, rank: int) -> list[int]:
    """How the per-channel scale lines up with the weight: output channels on axis 0, 1 if transposed."""
    if kind == "conv_transpose":
        return [1, -1, *[1] * (rank - 2)]
    return [-1, *[1] * (rank - 1)]


def output_shape(rank: int) -> list[int]:
    """How the per-channel scale lines up with the layer's output: channels on axis 1."""
    return [1, -1, *[1] * (rank - 2)]


def simulate(graph: torch.fx.Graph, layer: torch.fx.Node, batch_norm: torch.fx.Node) -> Simulation:
    """Rewrite ``layer -> batch_norm`` into the simulated form, reusing both nodes.

    The layer must be ``batch_norm``'s input and its weight a node; the caller
    checks the rest (see :mod:`plugins.fuse_conv_bn`). Nodes computing the
    scaled weight go right before the layer, those undoing the scale right
    before the batch norm, so everything between the two stays where it was.
    The layer keeps its literal arguments; the batch norm keeps its momentum
    and eps and trains.
    """
    kind = kind_of(layer)
    assert kind is not None
    arguments = batch_norm_arguments(batch_norm)
    gamma, variance, eps = arguments["weight"], arguments["running_var"], arguments["eps"]
    weight = layer.args[_WEIGHT]
    bias = layer.args[_BIAS] if len(layer.args) > _BIAS else None
    assert isinstance(weight, torch.fx.Node)
    assert bias is None or isinstance(bias, torch.fx.Node)
    rank = _rank(weight)
    created: list[torch.fx.Node] = []

    def call(target: Any, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = graph.call_function(target, args, kwargs)
        created.append(node)
        return node

    with graph.inserting_before(layer):
        root = call(SQRT, call(ADD, variance, eps))
        scale = call(DIV, gamma, root) if gamma is not None else call(RECIPROCAL, root)
        scaled_weight = _scaled_weight(call, kind, weight, scale, rank, transpose_groups(layer))
        zero_bias = None
        if bias is not None:
            zero_bias = call(ZEROS_LIKE, bias, dtype=_dtype(layer.args[0]), pin_memory=False)
    layer.args = (layer.args[0], scaled_weight, zero_bias, *layer.args[3:])
    weight_side = len(created)
    with graph.inserting_before(batch_norm):
        output = call(DIV, layer, call(RESHAPE, scale, output_shape(rank)))
        if bias is not None:
            output = call(ADD, output, call(RESHAPE, bias, output_shape(rank)))
    batch_norm.args = (
        output,
        gamma,
        arguments["bias"],
        arguments["running_mean"],
        variance,
        True,
        arguments["momentum"],
        eps,
        arguments["cudnn_enabled"],
    )
    batch_norm.kwargs = {}
    for position, node in enumerate(created):
        _copy_metadata(node, layer if position < weight_side else batch_norm)
        _infer_value(node)
    helpers = tuple(node for node in created if node is not scaled_weight and node is not zero_bias)
    return Simulation(
        layer=layer,
        batch_norm=batch_norm,
        kind=kind,
        weight=weight,
        bias=bias,
        scaled_weight=scaled_weight,
        zero_bias=zero_bias,
        weight_chain=(),
        bias_chain=(),
        helpers=helpers,
    )


def _scaled_weight(
    call: Any, kind: Kind, weight: torch.fx.Node, scale: torch.fx.Node, rank: int, groups: int
) -> torch.fx.Node:
    if kind == "conv_transpose" and groups != 1:
        rows, per_group, *kernel = _shape(weight)
        grouped = call(RESHAPE, weight, [groups, rows // groups, per_group, *kernel])
        lined_up = call(RESHAPE, scale, [groups, 1, per_group, *[1] * len(kernel)])
        return call(RESHAPE, call(MUL, grouped, lined_up), [rows, per_group, *kernel])
    return call(MUL, weight, call(RESHAPE, scale, weight_shape(kind, rank)))


def find_simulation(batch_norm: torch.fx.Node) -> Simulation | str | None:
    """The simulated form ending at ``batch_norm``; why it cannot be folded; or ``None`` if there is none.

    Only reads the graph. Literal arguments (eps, shapes, qparams) are not
    compared, as in torchao's matching; node identities and single use are:
    the form is folded away, so no node of it may be read from outside.
    """
    if batch_norm.op != "call_function" or batch_norm.target != BATCH_NORM:
        return None
    arguments = batch_norm_arguments(batch_norm)
    output = arguments["input"]
    bias_read: torch.fx.Node | None = None
    helpers: list[torch.fx.Node] = []
    if _is(output, ADD) and _is(output.args[0], DIV) and _is(output.args[1], RESHAPE):
        bias_read = output.args[1]
        helpers += [output, bias_read]
        output = output.args[0]
    if not _is(output, DIV) or not _is(output.args[1], RESHAPE):
        return None
    undo, quotient = output.args[1], output
    layer = quotient.args[0]
    helpers += [quotient, undo]
    scale = undo.args[0]
    if not _is_scale(scale, arguments):
        return None
    if ops.is_dequantize(layer):
        return (
            f"the output of the layer before {batch_norm.name} is quantized before the batch norm "
            f"({layer.name}), so folding would change what that quantization sees"
        )
    kind = kind_of(layer)
    if kind is None:
        return None
    assert isinstance(layer, torch.fx.Node)
    weight_chain, scaled_weight = _chain(layer.args[_WEIGHT])
    found = _weight_of(scaled_weight, scale)
    if found is None:
        return None
    weight, weight_helpers = found
    bias_argument = layer.args[_BIAS] if len(layer.args) > _BIAS else None
    bias_chain, zero_bias = _chain(bias_argument)
    bias: torch.fx.Node | None = None
    if zero_bias is not None:
        if not _is(zero_bias, ZEROS_LIKE) or bias_read is None or zero_bias.args[0] is not bias_read.args[0]:
            return None
        bias = bias_read.args[0]
    elif bias_read is not None:
        return None
    helpers += [scaled_weight, *weight_helpers, *_scale_nodes(scale)]
    inside = {*helpers, *weight_chain, *bias_chain, layer, batch_norm}
    if zero_bias is not None:
        inside.add(zero_bias)
    for node in (*helpers, *weight_chain, *bias_chain, layer, *([zero_bias] if zero_bias else [])):
        outside = [user.name for user in node.users if user not in inside]
        if outside:
            return (
                f"{node.name}, part of the QAT form of {layer.name} and {batch_norm.name}, is also read "
                f"by {', '.join(outside)}, which would lose it when the batch norm is folded"
            )
    return Simulation(
        layer=layer,
        batch_norm=batch_norm,
        kind=kind,
        weight=weight,
        bias=bias if isinstance(bias, torch.fx.Node) else None,
        scaled_weight=scaled_weight,
        zero_bias=zero_bias,
        weight_chain=weight_chain,
        bias_chain=bias_chain,
        helpers=tuple(dict.fromkeys(helpers)),
    )


def _is(node: object, target: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == target


def _is_scale(scale: object, arguments: dict[str, Any]) -> bool:
    """``gamma / sqrt(var + eps)`` (``1 / sqrt(...)`` without gamma) over the batch norm's gamma and var."""
    if _is(scale, DIV):
        root, gamma = scale.args[1], scale.args[0]  # type: ignore[union-attr]
        if gamma is not arguments["weight"]:
            return False
    elif _is(scale, RECIPROCAL) and arguments["weight"] is None:
        root = scale.args[0]  # type: ignore[union-attr]
    else:
        return False
    return _is(root, SQRT) and _is(root.args[0], ADD) and root.args[0].args[0] is arguments["running_var"]


def _scale_nodes(scale: torch.fx.Node) -> list[torch.fx.Node]:
    root = scale.args[1] if scale.target == DIV else scale.args[0]
    assert isinstance(root, torch.fx.Node)
    total = root.args[0]
    assert isinstance(total, torch.fx.Node)
    return [scale, root, total]


def _chain(argument: object) -> tuple[tuple[torch.fx.Node, ...], torch.fx.Node | None]:
    """The quantize/dequantize nodes above a layer argument, outermost last, and the value they start from.

    Before convert the chain is the observer or fake-quant module call instead.
    """
    chain: list[torch.fx.Node] = []
    node = argument
    while isinstance(node, torch.fx.Node) and (
        ops.is_dequantize(node) or ops.is_quantize(node) or (node.op == "call_module" and len(node.args) == 1)
    ):
        chain.append(node)
        node = node.args[0]
    chain.reverse()
    return tuple(chain), node if isinstance(node, torch.fx.Node) else None


def _weight_of(
    scaled_weight: torch.fx.Node | None, scale: torch.fx.Node
) -> tuple[torch.fx.Node, list[torch.fx.Node]] | None:
    """The float weight under ``W * scale`` (or its per-group spelling), and the reshapes on the way."""
    if _is(scaled_weight, RESHAPE) and _is(scaled_weight.args[0], MUL):  # type: ignore[union-attr]
        product = scaled_weight.args[0]  # type: ignore[union-attr]
        grouped, lined_up = product.args  # type: ignore[union-attr]
        if _is(grouped, RESHAPE) and _is(lined_up, RESHAPE) and lined_up.args[0] is scale:
            weight = grouped.args[0]
            if isinstance(weight, torch.fx.Node):
                return weight, [product, grouped, lined_up]
        return None
    if not _is(scaled_weight, MUL):
        return None
    weight, lined_up = scaled_weight.args  # type: ignore[union-attr]
    if _is(lined_up, RESHAPE) and lined_up.args[0] is scale and isinstance(weight, torch.fx.Node):
        return weight, [lined_up]
    return None


def _rank(node: torch.fx.Node) -> int:
    return len(_shape(node))


def _shape(node: torch.fx.Node) -> list[int]:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{node.name} has no tensor value in its metadata, so its shape is unknown")
    return [int(size) for size in value.shape]


def _dtype(node: object) -> torch.dtype:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value.dtype if isinstance(value, torch.Tensor) else torch.float32


_COPIED_METADATA = ("nn_module_stack", "stack_trace", "source_fn_stack", "torch_fn")


def _copy_metadata(node: torch.fx.Node, source: torch.fx.Node) -> None:
    """The module, source line and function of the layer or batch norm the node computes for."""
    for key in _COPIED_METADATA:
        if key in source.meta:
            node.meta[key] = source.meta[key]


_ELEMENTWISE = frozenset({ADD, SQRT, DIV, RECIPROCAL, MUL})


def _infer_value(node: torch.fx.Node) -> None:
    """``meta["val"]``: the node's fake output, computed from its inputs' fake values.

    An elementwise op whose result has its first input's shape and dtype, or a
    ``zeros_like`` of the same dtype, shares that input's fake value, and a
    reshape of a contiguous value is made directly as the contiguous fake
    tensor it is: the simulation is built once per batch norm, and a fake
    dispatch per node was most of its cost.
    """
    same = _same_value(node) if node.target != RESHAPE else _reshaped_value(node)
    if same is not None:
        node.meta["val"] = same
        return
    values: list[FakeTensor] = []

    def value_of(argument: torch.fx.Node) -> Any:
        value = argument.meta.get("val")
        if isinstance(value, FakeTensor):
            values.append(value)
        return value

    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), value_of)
    if not values:
        return
    with values[0].fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)  # type: ignore[operator]


def _same_value(node: torch.fx.Node) -> FakeTensor | None:
    """The first input's fake value, if the node's output is a tensor just like it."""
    first = node.args[0] if node.args else None
    value = first.meta.get("val") if isinstance(first, torch.fx.Node) else None
    if not isinstance(value, FakeTensor):
        return None
    if node.target == ZEROS_LIKE:
        return value if node.kwargs.get("dtype", value.dtype) == value.dtype else None
    if node.target not in _ELEMENTWISE:
        return None
    shapes = [value.shape]
    for argument in node.args[1:]:
        other = argument.meta.get("val") if isinstance(argument, torch.fx.Node) else argument
        if isinstance(other, torch.Tensor):
            if other.dtype != value.dtype:
                return None
            shapes.append(other.shape)
        elif not (isinstance(other, float) and value.dtype.is_floating_point):
            return None
    if node.target in (SQRT, DIV, RECIPROCAL) and not value.dtype.is_floating_point:
        return None
    return value if all(_broadcasts_into(shape, value.shape) for shape in shapes[1:]) else None


def _broadcasts_into(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether broadcasting ``shape`` against ``target`` leaves ``target``'s shape unchanged."""
    if len(shape) > len(target):
        return False
    return all(size in (1, goal) for size, goal in zip(reversed(shape), reversed(target), strict=False))


def _reshaped_value(node: torch.fx.Node) -> FakeTensor | None:
    """The fake value of ``reshape(contiguous, shape)``: a contiguous tensor of the new shape."""
    source, shape = node.args[0], node.args[1]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if not isinstance(value, FakeTensor) or not isinstance(shape, list):
        return None
    if not all(type(size) is int for size in (*shape, *value.shape)) or not value.is_contiguous():
        return None
    sizes = list(shape)
    if sizes.count(-1) == 1:
        known = math.prod(size for size in sizes if size != -1)
        if known == 0 or value.numel() % known:
            return None
        sizes[sizes.index(-1)] = value.numel() // known
    if any(size < 0 for size in sizes) or math.prod(sizes) != value.numel():
        return None
    meta = torch.empty(sizes, dtype=value.dtype, device="meta")
    reshaped = value.fake_mode.fake_tensor_converter.from_meta_and_device(value.fake_mode, meta, value.device)
    reshaped.requires_grad_(value.requires_grad)
    return reshaped
