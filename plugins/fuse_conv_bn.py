"""QAT's fuse-conv-bn stage: each layer and the batch norm after it take the simulated form.

torchao's ``prepare_qat_pt2e`` annotates the graph as exported, then rewrites
every ``conv -> batch_norm`` into the form of :mod:`plugins.qat_simulation`,
so the weight fake-quant trains on the weight the batch norm will be folded
into. It finds the pairs by exporting twelve pattern functions and running
the subgraph rewriter eight times over the whole graph on every call; here
one walk over the batch norms finds them and each rewrite is local, so the
stage is linear in the graph and costs nothing per call.

Layers: every conv, conv-transpose and linear overload ``torch.export`` emits
(``padding="same"`` convs, conv3d and linear + BatchNorm1d included, which
torchao leaves alone), with or without bias. The annotations move with the
weight and bias: a spec on the edge ``weight -> conv`` moves to
``scaled weight -> conv``, wherever it is referenced (shared and derived specs
included). torchao moves them by position instead, and so swaps the input
and weight specs of a quantizer that annotates the weight first.

A pair is left as it is, and the audit trail says why, when folding it at
convert could not be right: the layer's output has other readers, the
quantizer quantizes the layer's output before the batch norm, a weight or
batch-norm tensor is not a module attribute, the batch norm keeps no running
statistics, or the batch norm does not act on the layer's channels. Each batch
norm after a layer is marked (:data:`QAT_BATCH_NORM`), so that fold-conv-bn's
condition can name every one it could not fold.

Only the top-level graph is visited: torchao's QAT neither annotates nor
prepares loop bodies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.fx
from torchao.quantization.pt2e.quantizer import DerivedQuantizationSpec, SharedQuantizationSpec

from pipeline import Context, Stage
from pipeline.naming import describe_node
from plugins.annotation import ANNOTATION_KEY, annotation_of
from plugins.attributes import NotAnAttribute, read_attribute
from plugins.layers import (
    BATCH_NORM,
    batch_norm_arguments,
    find_batch_norms,
    kind_of,
    other_readers,
)
from plugins.qat_simulation import Simulation, simulate

QAT_BATCH_NORM = "pt2e_pipeline_qat_batch_norm"
"""Batch-norm metadata: the layer fuse-conv-bn paired it with, and why it was left unfused (or ``None``)."""

Edge = tuple[torch.fx.Node, torch.fx.Node]


class UnfusedBatchNormWarning(UserWarning):
    """A batch norm after a layer was left unfused at prepare: convert will not fold it.

    Raised before training, so that a model whose convert is bound to break
    the ``no_batch_norm_after_fold`` condition is known before hours are spent
    training it.
    """


@attrs.frozen
class Declined:
    """A batch norm after a layer, left unfused, and why."""

    batch_norm: torch.fx.Node = attrs.field(eq=False)
    layer: torch.fx.Node = attrs.field(eq=False)
    reason: str


def fuse_conv_batch_norms(
    graph_module: torch.fx.GraphModule,
    *,
    origin: Callable[[torch.fx.Node, torch.fx.Node], Any] | None = None,
    on_decline: Callable[[Declined], None] | None = None,
    recompile: bool = True,
) -> list[Simulation]:
    """Rewrite every foldable layer -> batch norm pair of ``graph_module`` into the simulated form.

    Works in place. ``origin(layer, batch_norm)`` is entered around each
    rewrite, so a caller can attribute the nodes it creates; ``on_decline``
    hears of every pair left alone. ``recompile=False`` leaves the module's
    code stale, for a caller that compiles once later (the engine does).
    """
    graph = graph_module.graph
    simulations: list[Simulation] = []
    moved: dict[Edge, Edge] = {}
    for batch_norm in find_batch_norms(graph):
        layer = batch_norm.args[0] if batch_norm.args else None
        if kind_of(layer) is None:
            continue
        assert isinstance(layer, torch.fx.Node)
        reason = _unfusable(graph_module, layer, batch_norm)
        batch_norm.meta[QAT_BATCH_NORM] = {"layer": layer.name, "declined": reason}
        if reason is not None:
            if on_decline is not None:
                on_decline(Declined(batch_norm, layer, reason))
            continue
        with origin(layer, batch_norm) if origin is not None else contextlib.nullcontext():
            simulation = simulate(graph, layer, batch_norm)
        simulations.append(simulation)
        moved[(simulation.weight, layer)] = (simulation.scaled_weight, layer)
        if simulation.bias is not None and simulation.zero_bias is not None:
            moved[(simulation.bias, layer)] = (simulation.zero_bias, layer)
    if moved:
        _move_annotations(graph, moved)
        if recompile:
            graph_module.recompile()
    return simulations


def _unfusable(
    graph_module: torch.fx.GraphModule, layer: torch.fx.Node, batch_norm: torch.fx.Node
) -> str | None:
    """Why folding this pair at convert would not be right, or ``None``."""
    if batch_norm.target != BATCH_NORM:
        return f"{batch_norm.name} is {batch_norm.target}, not aten.batch_norm (what torch.export emits)"
    others = other_readers(layer, batch_norm)
    if others:
        return f"the output of {layer.name} also feeds {', '.join(others)}, which would see the folded values"
    arguments = batch_norm_arguments(batch_norm)
    if arguments["running_mean"] is None or arguments["running_var"] is None:
        return (
            f"{batch_norm.name} keeps no running statistics (track_running_stats=False), "
            "so there is nothing to fold"
        )
    layer_bias = layer.args[2] if len(layer.args) > 2 else None
    tensors = [
        (f"the weight of {layer.name}", layer.args[1]),
        (f"the bias of {layer.name}", layer_bias),
        *(
            (f"the {name} of {batch_norm.name}", arguments[name])
            for name in ("weight", "bias", "running_mean", "running_var")
        ),
    ]
    for what, node in tensors:
        try:
            read_attribute(graph_module, node, what)
        except NotAnAttribute as problem:
            return str(problem)
    misaligned = _misaligned(layer, batch_norm)
    if misaligned:
        return misaligned
    quantized = _quantized_output(layer, batch_norm)
    if quantized:
        return (
            f"the quantizer quantizes the output of {layer.name} before {batch_norm.name} ({quantized}); "
            "the batch norm cannot be folded past it"
        )
    return None


def _quantized_output(layer: torch.fx.Node, batch_norm: torch.fx.Node) -> str | None:
    layer_annotation = annotation_of(layer)
    if layer_annotation is not None and layer_annotation.output_qspec is not None:
        return f"an output spec on {layer.name}"
    norm_annotation = annotation_of(batch_norm)
    if norm_annotation is not None and norm_annotation.input_qspec_map.get(layer) is not None:
        return f"an input spec on {batch_norm.name}"
    return None


def _misaligned(layer: torch.fx.Node, batch_norm: torch.fx.Node) -> str | None:
    """Why the batch norm's channels are not the layer's output channels, if they are not."""
    output = layer.meta.get("val")
    weight = layer.args[1]
    weight_value = weight.meta.get("val") if isinstance(weight, torch.fx.Node) else None
    if not isinstance(output, torch.Tensor) or not isinstance(weight_value, torch.Tensor):
        return (
            f"{layer.name} carries no shape metadata, so its channels cannot be lined up "
            f"with {batch_norm.name}"
        )
    if kind_of(layer) == "linear":
        if output.ndim != 2:
            return (
                f"the output of {layer.name} is {output.ndim}-D: the linear acts on the last dimension "
                f"and {batch_norm.name} on dimension 1"
            )
    elif output.ndim != weight_value.ndim:
        return (
            f"{layer.name} is unbatched ({output.ndim}-D output): {batch_norm.name}'s channel "
            "dimension is not the conv's"
        )
    return None


def _move_annotations(graph: torch.fx.Graph, moved: dict[Edge, Edge]) -> None:
    """Re-key the layers' weight and bias specs and re-point every spec naming those edges."""
    for node in graph.nodes:
        annotation = annotation_of(node)
        if annotation is None:
            continue
        inputs = {
            moved.get((source, node), (source, node))[0]: _moved_spec(spec, moved)
            for source, spec in annotation.input_qspec_map.items()
        }
        output = _moved_spec(annotation.output_qspec, moved)
        unchanged = output is annotation.output_qspec and all(
            key is old_key and spec is old_spec
            for (key, spec), (old_key, old_spec) in zip(
                inputs.items(), annotation.input_qspec_map.items(), strict=True
            )
        )
        if not unchanged:
            node.meta[ANNOTATION_KEY] = dataclasses.replace(
                annotation, input_qspec_map=inputs, output_qspec=output
            )


def _moved_spec(spec: Any, moved: dict[Edge, Edge]) -> Any:
    if isinstance(spec, SharedQuantizationSpec) and isinstance(spec.edge_or_node, tuple):
        target = moved.get(spec.edge_or_node)
        return spec if target is None else SharedQuantizationSpec(target)
    if isinstance(spec, DerivedQuantizationSpec):
        sources = [
            moved.get(source, source) if isinstance(source, tuple) else source for source in spec.derived_from
        ]
        if any(new is not old for new, old in zip(sources, spec.derived_from, strict=True)):
            return dataclasses.replace(spec, derived_from=sources)
    return spec


@attrs.frozen
class FuseConvBatchNorm(Stage):
    """Rewrites each layer -> batch norm pair into QAT's simulated form (QAT runs only).

    See :mod:`plugins.fuse_conv_bn` for the pairs and where this differs from torchao.
    """

    name: str = "fuse-conv-bn"
    phase: str = "prepare"
    requires: tuple[str, ...] = ("annotated",)
    ensures: tuple[str, ...] = ("annotated",)
    invalidates: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    required: bool = False

    def skip_reason(self, ctx: Context) -> str | None:
        return None if ctx.inputs.get("is_qat") else "not a QAT run"

    def run(self, ctx: Context) -> bool | None:
        if self.skip_reason(ctx) is not None:
            return False
        graph_module = ctx.graph_module
        assert graph_module is not None

        def origin(layer: torch.fx.Node, batch_norm: torch.fx.Node) -> Any:
            return ctx.origin(layer, batch_norm, fused=batch_norm.name)

        def declined(found: Declined) -> None:
            ctx.note(
                f"left {found.batch_norm.name} unfused: {found.reason}",
                node=found.batch_norm,
                layer=found.layer.name,
            )
            warnings.warn(
                f"fuse-conv-bn left {found.batch_norm.name} after {found.layer.name} unfused: "
                f"{found.reason}. It will still be there after convert, which breaks the "
                f"condition no_batch_norm_after_fold\n  {describe_node(found.batch_norm)}",
                UnfusedBatchNormWarning,
                stacklevel=2,
            )

        simulations = fuse_conv_batch_norms(graph_module, origin=origin, on_decline=declined, recompile=False)
        for simulation in simulations:
            ctx.note(
                f"fused {simulation.batch_norm.name} with {simulation.kind} {simulation.layer.name}",
                node=simulation.batch_norm,
                layer=simulation.layer.name,
                scaled_weight=simulation.scaled_weight.name,
                zero_bias=simulation.zero_bias.name if simulation.zero_bias is not None else None,
            )
        return None
