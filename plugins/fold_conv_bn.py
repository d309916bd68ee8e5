"""QAT's fold-conv-bn stage: each trained batch norm folded into the layer before it, after convert.

After convert, the weight fake-quant of a simulated layer (see
:mod:`plugins.qat_simulation`) is a quantize/dequantize pair reading the
scaled weight. Folding replaces the whole form with the layer alone: its
weight and bias become the folded ones, the weight's quantize op reads the
folded weight with the qparams it learned in training, and the batch norm's
users read the layer. The result equals torchao's QAT convert tensor for
tensor: the folded weights come from ``fuse_conv_bn_weights`` with the batch
norm's eps (torchao's is always 1e-5, which is also the default), the
quantize/dequantize arguments are the converted ones. torchao finds the forms
by exporting 96 pattern functions and running 48 rewrite passes per call;
here one walk over the batch norms finds them, a fold is constant work, and
nothing is traced.

The forms are found by structure (:func:`~plugins.qat_simulation.find_simulation`),
so a model prepared by torchao's ``prepare_qat_pt2e`` folds too. Per-channel
or per-tensor weights, a quantized bias or not, a batch norm in training or
eval form: the quantize/dequantize nodes are kept and only re-pointed, so any
combination folds (torchao requires weight and bias to be quantized the same
way). A weight read elsewhere too (one conv module called twice, each call
followed by its own batch norm) gets a new attribute for each fold instead of
being overwritten (torchao folds the second call into the first's result).

What torchao also does, and so does this stage by default: the
``num_batches_tracked`` increments that train-mode export records are removed
for BatchNorm2d modules only (``drop_counters="batchnorm2d"``). With
``drop_counters="folded"`` the increments of every folded batch norm go, of
any dimension, and those of batch norms still in the graph stay.

The condition ``no_batch_norm_after_fold`` then holds every batch norm that
fuse-conv-bn paired with a layer, and every simulated form, to having been
folded: each one left is a violation naming it and the reason.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import attrs
import torch
import torch.fx

from pipeline import Context, Stage, StageError, Violation, condition
from plugins.annotation import ANNOTATION_KEY, annotation_of
from plugins.attributes import (
    NotAnAttribute,
    attribute_reads,
    free_attribute,
    new_parameter,
    read_attribute,
    replace_attribute,
)
from plugins.bn_arithmetic import folded_weights
from plugins.fuse_conv_bn import QAT_BATCH_NORM
from plugins.layers import BATCH_NORM, batch_norm_arguments, find_batch_norms, transpose_groups
from plugins.qat_simulation import Simulation, find_simulation

_aten = torch.ops.aten

Counters = Literal["batchnorm2d", "folded"]

_BATCH_NORM_2D = "torch.nn.modules.batchnorm.BatchNorm2d"


@attrs.frozen
class FoldedSimulation:
    """One batch norm folded into its layer; attribute names are dotted targets."""

    batch_norm: str
    layer: str
    weight: str
    bias: str
    new_bias: bool


def fold_simulations(
    graph_module: torch.fx.GraphModule,
    *,
    drop_counters: Counters = "batchnorm2d",
    origin: Callable[[Simulation], Any] | None = None,
    on_unfolded: Callable[[torch.fx.Node, str], None] | None = None,
    recompile: bool = True,
) -> list[FoldedSimulation]:
    """Fold every simulated layer and batch norm of ``graph_module`` (the top-level graph), in place.

    ``origin(simulation)`` is entered around each fold, so a caller can
    attribute the nodes it creates; ``on_unfolded(batch_norm, reason)`` hears
    of every form that cannot be folded. Attributes are replaced, never
    written into. ``recompile=False`` leaves the module's code stale, for a
    caller that compiles once later (the engine does).
    """
    graph = graph_module.graph
    batch_norms = find_batch_norms(graph)
    if not batch_norms:
        return []
    reads = attribute_reads(graph)
    folded: list[FoldedSimulation] = []
    owners: set[str] = set()
    for batch_norm in batch_norms:
        if batch_norm.target != BATCH_NORM:
            continue
        found = find_simulation(batch_norm)
        if isinstance(found, str):
            if on_unfolded is not None:
                on_unfolded(batch_norm, found)
            continue
        if found is None:
            continue
        owners.add(_owner_of(batch_norm))
        with origin(found) if origin is not None else contextlib.nullcontext():
            folded.append(_fold(graph_module, found, reads))
    _drop_counters(graph, drop_counters, owners)
    if recompile:
        graph_module.recompile()
    return folded


def _owner_of(batch_norm: torch.fx.Node) -> str:
    """The module path of the batch norm's statistics (``blocks.0.bn``), which owns its step counter."""
    mean = batch_norm_arguments(batch_norm)["running_mean"]
    return str(mean.target).rpartition(".")[0] if isinstance(mean, torch.fx.Node) else ""


def _tensor(graph_module: torch.fx.GraphModule, node: object, simulation: Simulation, what: str) -> Any:
    try:
        return read_attribute(graph_module, node, what)
    except NotAnAttribute as problem:
        raise StageError(
            f"cannot fold {simulation.batch_norm.name} into {simulation.layer.name}: {problem}",
            node=simulation.batch_norm,
        ) from None


def _fold(
    graph_module: torch.fx.GraphModule, simulation: Simulation, reads: Counter[str]
) -> FoldedSimulation:
    graph = graph_module.graph
    layer, batch_norm = simulation.layer, simulation.batch_norm
    arguments = batch_norm_arguments(batch_norm)
    weight = _tensor(graph_module, simulation.weight, simulation, f"the weight of {layer.name}")
    bias = _tensor(graph_module, simulation.bias, simulation, f"the bias of {layer.name}")
    statistics = {
        name: _tensor(graph_module, arguments[name], simulation, f"the {name} of {batch_norm.name}")
        for name in ("weight", "bias", "running_mean", "running_var")
    }
    if statistics["running_mean"] is None or statistics["running_var"] is None:
        raise StageError(
            f"cannot fold {batch_norm.name} into {layer.name}: it keeps no running statistics",
            node=batch_norm,
        )
    fused_weight, fused_bias = folded_weights(
        simulation.kind,
        weight,
        bias,
        statistics["running_mean"],
        statistics["running_var"],
        float(arguments["eps"]),
        statistics["weight"],
        statistics["bias"],
        transpose_groups(layer),
    )
    first_reader = simulation.weight_chain[0] if simulation.weight_chain else layer
    weight_node = _holder(
        graph_module, simulation.weight, fused_weight, reads, own_reads=1, before=first_reader
    )
    first_reader.replace_input_with(simulation.scaled_weight, weight_node)
    if simulation.bias is not None and simulation.zero_bias is not None:
        bias_reader = simulation.bias_chain[0] if simulation.bias_chain else layer
        bias_node = _holder(graph_module, simulation.bias, fused_bias, reads, own_reads=2, before=bias_reader)
        bias_reader.replace_input_with(simulation.zero_bias, bias_node)
        new_bias = False
    else:
        target = free_attribute(graph_module, f"{simulation.weight.target}_bias")
        new_parameter(graph_module, target, fused_bias)
        with graph.inserting_before(layer):
            bias_node = graph.get_attr(target)
        reads[target] += 1
        _fake_value(bias_node, layer, fused_bias)
        args = list(layer.args)
        if len(args) < 3:
            args.append(None)
        args[2] = bias_node
        layer.args = tuple(args)
        new_bias = True
    _move_annotation(
        layer, batch_norm, {simulation.scaled_weight: weight_node, simulation.zero_bias: bias_node}
    )
    batch_norm.replace_all_uses_with(layer)
    inputs = [node for node in batch_norm.all_input_nodes if node.op == "get_attr"]
    erased = [batch_norm, *simulation.helpers, *([simulation.zero_bias] if simulation.zero_bias else [])]
    for node in sorted(erased, reverse=True):
        inputs.extend(other for other in node.all_input_nodes if other.op == "get_attr")
        graph.erase_node(node)
    for node in dict.fromkeys(inputs):
        if not node.users:
            graph.erase_node(node)
    return FoldedSimulation(
        batch_norm=batch_norm.name,
        layer=layer.name,
        weight=str(weight_node.target),
        bias=str(bias_node.target),
        new_bias=new_bias,
    )


def _holder(
    graph_module: torch.fx.GraphModule,
    node: torch.fx.Node,
    value: torch.nn.Parameter,
    reads: Counter[str],
    *,
    own_reads: int,
    before: torch.fx.Node,
) -> torch.fx.Node:
    """The ``get_attr`` node to read ``value``: ``node`` re-pointed, when nothing but the form reads it."""
    target = str(node.target)
    if reads[target] <= own_reads:
        replace_attribute(graph_module, target, value)
        return node
    new_target = free_attribute(graph_module, f"{target}_folded")
    new_parameter(graph_module, new_target, value)
    with graph_module.graph.inserting_before(before):
        holder = graph_module.graph.get_attr(new_target)
    holder.meta.update(
        {key: node.meta[key] for key in ("nn_module_stack", "stack_trace") if key in node.meta}
    )
    _fake_value(holder, node, value)
    reads[target] -= own_reads
    reads[new_target] += 1
    return holder


def _fake_value(node: torch.fx.Node, like: torch.fx.Node, value: torch.Tensor) -> None:
    existing = like.meta.get("val")
    fake_mode = getattr(existing, "fake_mode", None)
    if fake_mode is not None:
        node.meta["val"] = fake_mode.from_tensor(value, static_shapes=True)


def _move_annotation(
    layer: torch.fx.Node, batch_norm: torch.fx.Node, renamed: dict[torch.fx.Node | None, torch.fx.Node]
) -> None:
    """The layer's specs re-keyed to the folded weight and bias; the batch norm's output spec on it."""
    annotation = annotation_of(layer)
    norm = annotation_of(batch_norm)
    if annotation is None:
        return
    inputs = {renamed.get(source, source): spec for source, spec in annotation.input_qspec_map.items()}
    output = annotation.output_qspec
    if output is None and norm is not None:
        output = norm.output_qspec
    layer.meta[ANNOTATION_KEY] = type(annotation)(
        input_qspec_map=inputs,
        output_qspec=output,
        allow_implicit_sharing=annotation.allow_implicit_sharing,
        _annotated=annotation._annotated,
    )


def _drop_counters(graph: torch.fx.Graph, rule: Counters, owners: set[str]) -> None:
    """Erase ``num_batches_tracked += 1`` steps: of BatchNorm2d modules (torchao), or of folded ones."""
    for node in list(graph.find_nodes(op="call_function", target=_aten.add_.Tensor)):
        counter = node.args[0]
        if not (isinstance(counter, torch.fx.Node) and counter.op == "get_attr" and node.args[1] == 1):
            continue
        if rule == "batchnorm2d":
            drop = _BATCH_NORM_2D in _module_classes(node)
        else:
            drop = str(counter.target).rpartition(".")[0] in owners
        if drop:
            graph.erase_node(node)
            if not counter.users:
                graph.erase_node(counter)


def _module_classes(node: torch.fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    classes = []
    for entry in stack.values():
        kind = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None
        if isinstance(kind, type):
            kind = f"{kind.__module__}.{kind.__qualname__}"
        if isinstance(kind, str):
            classes.append(kind)
    return classes


def _unfolded(graph_module: torch.fx.GraphModule) -> list[Violation]:
    found: list[Violation] = []
    for batch_norm in find_batch_norms(graph_module.graph):
        simulation = find_simulation(batch_norm)
        mark = batch_norm.meta.get(QAT_BATCH_NORM)
        if isinstance(simulation, Simulation):
            message = f"{batch_norm.name} is still in QAT's simulated form with {simulation.layer.name}"
        elif isinstance(simulation, str):
            message = f"{batch_norm.name} is not folded: {simulation}"
        elif isinstance(mark, dict):
            reason = mark.get("declined") or "its simulated form was taken apart before convert"
            message = f"{batch_norm.name} after {mark.get('layer')} is not folded: {reason}"
        else:
            continue
        found.append(Violation(message, node=batch_norm))
    return found


@condition(
    "no_batch_norm_after_fold",
    "every batch norm QAT paired with a layer is folded into it; no simulated conv-bn form is left",
)
def no_batch_norm_after_fold(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    return _unfolded(graph_module)


@attrs.frozen
class FoldConvBatchNorm(Stage):
    """Folds each QAT-trained batch norm into its layer and re-points the weight's quantize op.

    See :mod:`plugins.fold_conv_bn` for the rules and where they differ from torchao.
    """

    name: str = "fold-conv-bn"
    phase: str = "convert"
    requires: tuple[str, ...] = ("quantized",)
    ensures: tuple[str, ...] = ("no_batch_norm_after_fold",)
    invalidates: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ("duplicate-dq", "port-metadata", "fold-quantize")
    required: bool = False
    drop_counters: Counters = attrs.field(
        default="batchnorm2d", validator=attrs.validators.in_(("batchnorm2d", "folded"))
    )

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.graph_module is None or find_batch_norms(ctx.graph_module.graph):
            return None
        return "no batch norm in the graph"

    def run(self, ctx: Context) -> bool | None:
        graph_module = ctx.graph_module
        assert graph_module is not None
        if self.skip_reason(ctx) is not None:
            return False

        def origin(simulation: Simulation) -> Any:
            return ctx.origin(simulation.layer, simulation.batch_norm, folded=simulation.batch_norm.name)

        def unfolded(batch_norm: torch.fx.Node, reason: str) -> None:
            ctx.note(f"left {batch_norm.name} unfolded: {reason}", node=batch_norm)

        for fold in fold_simulations(
            graph_module,
            drop_counters=self.drop_counters,
            origin=origin,
            on_unfolded=unfolded,
            recompile=False,
        ):
            ctx.note(
                f"folded {fold.batch_norm} into {fold.layer}",
                batch_norm=fold.batch_norm,
                layer=fold.layer,
                weight=fold.weight,
                bias=fold.bias,
                new_bias=fold.new_bias,
            )
        return None
