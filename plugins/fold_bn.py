"""Folding eval-mode batch norms into the conv, conv-transpose or linear layer before them (PTQ).

torchao's ``prepare_pt2e`` folds first (conv batch norms, then linear ones)
so that the quantizer sees ``conv -> relu`` rather than
``conv -> batch_norm -> relu`` and the weight observer sees the weights the
model will really run with. :func:`fold_batch_norms` makes the same graph with
the same tensors, bit for bit, in one pass over the graph plus constant work per
fold (torchao re-runs dead-code elimination over the whole graph after every
fold, which is quadratic in the number of blocks).

What is reproduced from torchao:

- the weight attribute is replaced by a new Parameter under the same name; a
  conv with a bias gets its bias attribute replaced; a layer without one gets a
  new Parameter ``<weight target>_bias`` and a ``get_attr`` node for it right
  before the layer (so named ``conv_weight_bias``), carrying ``meta["val"]`` for
  convs only, as torchao does;
- the layer's args are re-assigned even when only the weights changed, and the
  batch norm's uses are handed to the layer in torchao's order, so users-dict
  order (which later passes walk) matches;
- all conv folds come before all linear folds; a linear whose input has more
  than two dimensions is left alone (batch norm and linear act on different
  dimensions there);
- once a graph holds any batch-norm node, dead side-effect-free nodes are dropped
  in one final pass (this is what removes the unused ``num_batches_tracked``
  reads), then the graph is recompiled.

Where torchao silently computes something else, this module declines the fold
instead, and says why (see :class:`Skipped`); the graph then keeps its exact
meaning:

- a batch norm in training mode (``training=True``: a model exported in train
  mode, or ``track_running_stats=False``) normalises with batch statistics; torchao
  folds the running statistics in (or crashes when there are none);
- a layer whose output has users besides the batch norm (readers of its shape or
  dtype alone do not count): torchao folds anyway and those users silently see
  the normalised output;
- a weight or bias read elsewhere too (the same conv module called twice, each
  call followed by its own batch norm): torchao folds the first batch norm into
  the shared weight, then "fake-fuses" the second, which drops it and overwrites
  the bias it just made, so every call computes something else;
- an unbatched conv (output rank below the weight's), where batch norm's channel
  dimension is not the conv's.

And where torchao is wrong in other ways, this module is right:

- a batch norm applied straight to another batch norm's output
  (``bn2(bn1(conv(x)))``) is folded on top of the first fold; torchao drops it;
- a grouped transposed conv is folded per group; torchao raises a shape error or
  builds a weight of the wrong shape;
- ``BatchNorm1d(affine=False)`` after a linear is folded; torchao raises TypeError;
- a weight held as a buffer or plain tensor attribute keeps its kind; torchao
  raises KeyError registering a Parameter over it;
- an existing attribute named ``<weight target>_bias`` is never overwritten: the
  new bias takes the next free ``_<n>`` suffix;
- a weight, bias or batch-norm statistic that is not a module attribute (a graph
  input, as in a loop body or ``F.conv2d(x, w)``, or a computed tensor) raises
  :class:`~pipeline.StageError` naming the layer and the argument, where torchao
  raises a bare ``ValueError``.

Loop bodies (``scan`` combine functions, ``while_loop`` bodies) are folded after
the graph that calls them, as torchao's ``prepare_pt2e`` does for each body.
Their weights arrive as inputs, so a conv followed by a batch norm inside a body
is that error, here as in torchao. An error may leave the graph partly folded;
the pipeline discards its private copy then.
"""

from __future__ import annotations

import contextlib
import operator
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.fx

from pipeline import Context, Stage, StageError, Violation, condition
from plugins import dead_code
from plugins.attributes import (
    NotAnAttribute,
    attribute_reads,
    free_attribute,
    new_parameter,
    read_attribute,
    replace_attribute,
)
from plugins.bn_arithmetic import folded_weights
from plugins.layers import (
    Kind,
    batch_norm_arguments,
    find_batch_norms,
    kind_of,
    other_readers,
    transpose_groups,
)
from plugins.subgraphs import quantizable_graph_modules

_aten = torch.ops.aten

KEPT_FOR_TRAINING = "pt2e_pipeline_kept_for_training"
"""Batch-norm metadata: a QAT run keeps this eval-mode batch norm to train it rather than fold it now."""

FOLDABLE_BATCH_NORMS: tuple[Any, ...] = (
    _aten.batch_norm.default,
    _aten._native_batch_norm_legit_no_training.default,
)
"""The batch-norm ops folded, as torchao: the composite op (what eval export gives) and the decomposed one."""

FoldOrigin = Callable[[torch.fx.Node, torch.fx.Node], contextlib.AbstractContextManager[Any]]


@attrs.frozen
class Folded:
    """One batch norm folded into the layer before it; attribute names are dotted targets."""

    graph: str
    batch_norm: str
    layer: str
    kind: Kind
    weight: str
    bias: str
    new_bias: bool


@attrs.frozen
class Skipped:
    """A batch norm after a conv or linear that was left in place, and why."""

    graph: str
    batch_norm: torch.fx.Node = attrs.field(eq=False)
    layer: torch.fx.Node = attrs.field(eq=False)
    reason: str


@attrs.frozen
class _Candidate:
    """A fold that can be made: the nodes and tensors it reads."""

    batch_norm: torch.fx.Node
    layer: torch.fx.Node
    kind: Kind
    weight: torch.fx.Node
    bias: torch.fx.Node | None
    tensors: dict[str, torch.Tensor | None]
    eps: float
    groups: int


def fold_batch_norms(
    graph_module: torch.fx.GraphModule,
    *,
    origin: FoldOrigin | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    recompile: bool = True,
) -> list[Folded]:
    """Fold every eval-mode batch norm of ``graph_module`` and its loop bodies into the layer before it.

    Works in place on ``graph_module``: it is expected to be a private copy, since
    attributes are replaced (never written into). ``origin(layer, batch_norm)``
    is entered around each fold, so a caller can attribute the nodes it creates;
    ``on_skip`` hears of every batch norm after a conv or linear left unfolded.
    Raises :class:`~pipeline.StageError` for a fold whose weights are not module
    attributes. ``recompile=False`` leaves the modules' code stale, for a caller
    that compiles once later (the engine does).
    """
    folded: list[Folded] = []
    for path, module in quantizable_graph_modules(graph_module):
        folded.extend(_fold_graph(path, module, origin, on_skip, recompile))
    return folded


def _fold_graph(
    path: str,
    graph_module: torch.fx.GraphModule,
    origin: FoldOrigin | None,
    on_skip: Callable[[Skipped], None] | None,
    recompile: bool,
) -> list[Folded]:
    graph = graph_module.graph
    if not find_batch_norms(graph):
        return []
    uses = attribute_reads(graph)
    batch_norms = find_batch_norms(graph, FOLDABLE_BATCH_NORMS)
    folded: list[Folded] = []
    for kinds in (("conv", "conv_transpose"), ("linear",)):
        for batch_norm in batch_norms:
            if batch_norm._erased:
                continue
            found = _inspect(batch_norm, graph_module, uses, kinds)
            if isinstance(found, _Candidate):
                enter = origin(found.layer, batch_norm) if origin else contextlib.nullcontext()
                with enter:
                    folded.append(_fold(path, graph_module, found, uses))
            elif isinstance(found, str) and on_skip is not None:
                on_skip(Skipped(path, batch_norm, batch_norm.args[0], found))
    dead_code.erase_unused(graph)
    if recompile:
        graph_module.recompile()
    return folded


def _inspect(
    batch_norm: torch.fx.Node,
    graph_module: torch.fx.GraphModule,
    uses: Counter[str],
    kinds: tuple[Kind, ...],
) -> _Candidate | str | None:
    """The fold of ``batch_norm``, the reason it must not be made, or ``None`` when it is not a fold site.

    Only reads the graph. Raises :class:`~pipeline.StageError` when the fold site's
    tensors are not module attributes.
    """
    layer = batch_norm.args[0]
    kind = kind_of(layer)
    if kind not in kinds:
        return None
    assert isinstance(layer, torch.fx.Node)
    arguments = batch_norm_arguments(batch_norm)
    if arguments.get("training", False):
        return (
            f"{batch_norm.name} runs in training mode (batch statistics): export the model in eval mode "
            "to fold it; folding its running statistics would change what the graph computes"
        )
    weight = layer.args[1] if len(layer.args) > 1 else None
    bias = layer.args[2] if len(layer.args) > 2 else None
    if not isinstance(weight, torch.fx.Node):
        raise StageError(
            f"cannot fold {batch_norm.name} into {layer.name}: the {kind} has no weight node "
            f"(args[1] is {weight!r})",
            node=layer,
        )
    tensors = {
        "weight": _attribute(graph_module, weight, layer, batch_norm, f"{kind} weight"),
        "bias": _attribute(graph_module, bias, layer, batch_norm, f"{kind} bias"),
    }
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensors[f"bn_{name}"] = _attribute(
            graph_module, arguments[name], batch_norm, batch_norm, f"batch-norm {name}"
        )
    for name in ("bn_running_mean", "bn_running_var"):
        if tensors[name] is None:
            raise StageError(
                f"cannot fold {batch_norm.name}: it is in eval mode but has no {name[3:]}",
                node=batch_norm,
            )
    reason = _unsafe(batch_norm, layer, kind, weight, bias, tensors["weight"], uses)
    if reason is not None:
        return reason
    return _Candidate(
        batch_norm=batch_norm,
        layer=layer,
        kind=kind,
        weight=weight,
        bias=bias if isinstance(bias, torch.fx.Node) else None,
        tensors=tensors,
        eps=float(arguments["eps"]),
        groups=transpose_groups(layer),
    )


def _attribute(
    graph_module: torch.fx.GraphModule,
    node: object,
    layer: torch.fx.Node,
    batch_norm: torch.fx.Node,
    what: str,
) -> torch.Tensor | None:
    """The tensor a ``get_attr`` argument reads; a clear error for anything that is not one."""
    try:
        return read_attribute(graph_module, node, f"the {what}")
    except NotAnAttribute as problem:
        into = layer.name if layer is not batch_norm else "its input"
        raise StageError(f"cannot fold {batch_norm.name} into {into}: {problem}", node=layer) from None


def _unsafe(
    batch_norm: torch.fx.Node,
    layer: torch.fx.Node,
    kind: Kind,
    weight: torch.fx.Node,
    bias: object,
    weight_tensor: torch.Tensor | None,
    uses: Counter[str],
) -> str | None:
    """Why folding would change what some other node computes, if it would."""
    if kind == "linear":
        given = layer.args[0]
        value = given.meta.get("val") if isinstance(given, torch.fx.Node) else None
        if isinstance(value, torch.Tensor) and value.ndim > 2:
            return (
                f"the input of {layer.name} is {value.ndim}-D: the linear acts on the last dimension "
                f"and {batch_norm.name} on dimension 1"
            )
    else:
        value = layer.meta.get("val")
        if isinstance(value, torch.Tensor) and weight_tensor is not None and value.ndim != weight_tensor.ndim:
            return (
                f"{layer.name} is unbatched ({value.ndim}-D output): {batch_norm.name}'s channel "
                "dimension is not the conv's"
            )
    others = other_readers(layer, batch_norm)
    if others:
        return f"the output of {layer.name} also feeds {', '.join(others)}, which would see the folded values"
    for role, node in (("weight", weight), ("bias", bias)):
        if isinstance(node, torch.fx.Node) and uses[str(node.target)] > 1:
            return (
                f"the {role} {node.target!r} of {layer.name} is read elsewhere too; folding "
                f"{batch_norm.name} into it would change those reads"
            )
    if batch_norm.target == _aten.batch_norm.default:
        return None
    for user in batch_norm.users:
        if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0:
            continue
        if user.users or user.op != "call_function" or user.target is not operator.getitem:
            return f"{user.name} uses an output of {batch_norm.name} other than the normalised tensor"
    return None


def _fold(
    path: str,
    graph_module: torch.fx.GraphModule,
    found: _Candidate,
    uses: Counter[str],
) -> Folded:
    graph = graph_module.graph
    layer, batch_norm = found.layer, found.batch_norm
    weight_target = str(found.weight.target)
    fused_weight, fused_bias = _fused(found)
    replace_attribute(graph_module, weight_target, fused_weight)
    args = list(layer.args)
    if len(args) == 2:
        args.append(None)
    if found.bias is not None:
        bias_target = str(found.bias.target)
        replace_attribute(graph_module, bias_target, fused_bias)
    else:
        bias_target = free_attribute(graph_module, f"{weight_target}_bias")
        new_parameter(graph_module, bias_target, fused_bias)
        with graph.inserting_before(layer):
            bias_node = graph.get_attr(bias_target)
        uses[bias_target] += 1
        value = layer.meta.get("val")
        if found.kind != "linear" and hasattr(value, "fake_mode"):
            bias_node.meta["val"] = value.fake_mode.from_tensor(fused_bias, static_shapes=True)
        args[2] = bias_node
    layer.args = tuple(args)
    _hand_over(batch_norm, layer)
    _erase_batch_norm(graph, batch_norm, uses)
    return Folded(
        graph=path,
        batch_norm=batch_norm.name,
        layer=layer.name,
        kind=found.kind,
        weight=weight_target,
        bias=bias_target,
        new_bias=found.bias is None,
    )


def _fused(found: _Candidate) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    t = found.tensors
    weight, mean, var = t["weight"], t["bn_running_mean"], t["bn_running_var"]
    assert weight is not None and mean is not None and var is not None
    return folded_weights(
        found.kind, weight, t["bias"], mean, var, found.eps, t["bn_weight"], t["bn_bias"], found.groups
    )


def _hand_over(batch_norm: torch.fx.Node, layer: torch.fx.Node) -> None:
    """Give the batch norm's normalised output's users to ``layer``, in torchao's order."""
    if batch_norm.target == _aten.batch_norm.default:
        batch_norm.replace_all_uses_with(layer)
        return
    for user in list(batch_norm.users):
        if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0:
            user.replace_all_uses_with(layer)


def _erase_batch_norm(graph: torch.fx.Graph, batch_norm: torch.fx.Node, uses: Counter[str]) -> None:
    """Erase the batch norm, its unused getitems and the attribute reads only it made."""
    for user in list(batch_norm.users):
        if not user.users:
            graph.erase_node(user)
    inputs = [node for node in batch_norm.all_input_nodes if node.op == "get_attr"]
    graph.erase_node(batch_norm)
    for node in inputs:
        uses[str(node.target)] -= 1
        if not node.users:
            graph.erase_node(node)


def _fold_sites(graph_module: torch.fx.GraphModule) -> Iterator[tuple[str, _Candidate]]:
    """The folds :func:`fold_batch_norms` would make now, in graph order, without making them."""
    for path, module in quantizable_graph_modules(graph_module):
        graph = module.graph
        uses = attribute_reads(graph)
        for batch_norm in find_batch_norms(graph, FOLDABLE_BATCH_NORMS):
            if KEPT_FOR_TRAINING in batch_norm.meta:
                continue
            try:
                found = _inspect(batch_norm, module, uses, ("conv", "conv_transpose", "linear"))
            except StageError:
                continue
            if isinstance(found, _Candidate):
                yield path, found


@condition("bn-folded", "no eval-mode batch norm is left that could be folded into the layer before it")
def bn_folded(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    """Every batch norm fold-bn would fold is a violation, unless a QAT run keeps it to train."""
    if graph_module is None:
        return []
    return [
        Violation(
            f"eval-mode {found.batch_norm.name} after {found.kind} {found.layer.name} "
            f"(weight {found.weight.target!r}) is not folded",
            node=found.batch_norm,
            graph=path,
        )
        for path, found in _fold_sites(graph_module)
    ]


@attrs.frozen
class FoldBatchNorm(Stage):
    """Folds eval-mode batch norms into the conv, conv-transpose or linear weights before them.

    The PTQ half of torchao's ``prepare_pt2e`` conv-bn handling; QAT keeps its
    batch norms (they train, and fold-conv-bn folds them at convert), so with
    ``is_qat`` the stage only marks the ones it would have folded
    (:data:`KEPT_FOR_TRAINING`). See :mod:`plugins.fold_bn` for the rules and
    where they differ from torchao.
    """

    name: str = "fold-bn"
    phase: str = "prepare"
    requires: tuple[str, ...] = ("captured", "unannotated")
    ensures: tuple[str, ...] = ("bn-folded",)
    invalidates: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    required: bool = False

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.graph_module is None:
            return None
        if any(find_batch_norms(module.graph) for _, module in quantizable_graph_modules(ctx.graph_module)):
            return None
        return "no batch norm in the graph"

    def run(self, ctx: Context) -> bool | None:
        graph_module = ctx.graph_module
        assert graph_module is not None
        if ctx.inputs.get("is_qat"):
            kept = [found.batch_norm for _, found in _fold_sites(graph_module)]
            for batch_norm in kept:
                batch_norm.meta[KEPT_FOR_TRAINING] = True
            return None if kept else False

        def origin(layer: torch.fx.Node, batch_norm: torch.fx.Node) -> contextlib.AbstractContextManager[Any]:
            return ctx.origin(layer, batch_norm, folded=batch_norm.name)

        def skipped(skip: Skipped) -> None:
            ctx.note(
                f"left {skip.batch_norm.name} unfolded: {skip.reason}",
                node=skip.batch_norm,
                graph=skip.graph,
                layer=skip.layer.name,
            )

        for fold in fold_batch_norms(graph_module, origin=origin, on_skip=skipped, recompile=False):
            ctx.note(
                f"folded {fold.batch_norm} into {fold.kind} {fold.layer}",
                graph=fold.graph,
                batch_norm=fold.batch_norm,
                layer=fold.layer,
                weight=fold.weight,
                bias=fold.bias,
                new_bias=fold.new_bias,
            )
        return None
