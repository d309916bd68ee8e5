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
from typing import Any, Literal

import attrs
import torch
import torch.fx
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from pipeline import Context, Stage, StageError, Violation, condition
from plugins.subgraphs import quantizable_graph_modules

_aten = torch.ops.aten

CONV_TARGETS: frozenset[Any] = frozenset(
    {
        _aten.conv1d.default,
        _aten.conv1d.padding,
        _aten.conv2d.default,
        _aten.conv2d.padding,
        _aten.conv3d.default,
        _aten.conv3d.padding,
    }
)
CONV_TRANSPOSE_TARGETS: frozenset[Any] = frozenset(
    {
        _aten.conv_transpose1d,
        _aten.conv_transpose1d.default,
        _aten.conv_transpose2d,
        _aten.conv_transpose2d.input,
        _aten.conv_transpose3d,
        _aten.conv_transpose3d.input,
    }
)
LINEAR_TARGETS: frozenset[Any] = frozenset({_aten.linear.default})

FOLDABLE_BATCH_NORMS: tuple[Any, ...] = (
    _aten.batch_norm.default,
    _aten._native_batch_norm_legit_no_training.default,
)
"""The batch-norm ops folded, as torchao: the composite op (what eval export gives) and the decomposed one."""

_ANY_BATCH_NORM: tuple[Any, ...] = (
    *FOLDABLE_BATCH_NORMS,
    _aten._native_batch_norm_legit.default,
    _aten.cudnn_batch_norm.default,
    _aten.miopen_batch_norm.default,
)

_METADATA_READERS: frozenset[Any] = frozenset(
    {
        _aten.sym_size.int,
        _aten.sym_stride.int,
        _aten.sym_numel.default,
        _aten.sym_storage_offset.default,
        _aten._assert_tensor_metadata.default,
    }
)
"""Ops that read only a tensor's shape, dtype or device, which folding leaves as they were."""

_TRANSPOSE_GROUPS_INDEX = 6

Kind = Literal["conv", "conv_transpose", "linear"]
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
) -> list[Folded]:
    """Fold every eval-mode batch norm of ``graph_module`` and its loop bodies into the layer before it.

    Works in place on ``graph_module``: it is expected to be a private copy, since
    attributes are replaced (never written into). ``origin(layer, batch_norm)``
    is entered around each fold, so a caller can attribute the nodes it creates;
    ``on_skip`` hears of every batch norm after a conv or linear left unfolded.
    Raises :class:`~pipeline.StageError` for a fold whose weights are not module
    attributes.
    """
    folded: list[Folded] = []
    for path, module in quantizable_graph_modules(graph_module):
        folded.extend(_fold_graph(path, module, origin, on_skip))
    return folded


def _fold_graph(
    path: str,
    graph_module: torch.fx.GraphModule,
    origin: FoldOrigin | None,
    on_skip: Callable[[Skipped], None] | None,
) -> list[Folded]:
    graph = graph_module.graph
    if not any(_find(graph, target) for target in _ANY_BATCH_NORM):
        return []
    uses = _attribute_uses(graph)
    batch_norms = sorted(node for target in FOLDABLE_BATCH_NORMS for node in _find(graph, target))
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
    _drop_dead_nodes(graph)
    graph_module.recompile()
    return folded


def _find(graph: torch.fx.Graph, target: Any) -> list[torch.fx.Node]:
    return list(graph.find_nodes(op="call_function", target=target, sort=False))


def _attribute_uses(graph: torch.fx.Graph) -> Counter[str]:
    """How many reads each attribute has, over all its ``get_attr`` nodes."""
    uses: Counter[str] = Counter()
    for node in graph.find_nodes(op="get_attr", sort=False):
        uses[str(node.target)] += len(node.users)
    return uses


def _kind(node: object) -> Kind | None:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    if node.target in CONV_TARGETS:
        return "conv"
    if node.target in CONV_TRANSPOSE_TARGETS:
        return "conv_transpose"
    if node.target in LINEAR_TARGETS:
        return "linear"
    return None


def _batch_norm_arguments(node: torch.fx.Node) -> dict[str, Any]:
    """The batch norm's arguments by schema name, defaults filled in."""
    schema = node.target._schema.arguments  # type: ignore[union-attr]
    values: dict[str, Any] = {}
    for index, argument in enumerate(schema):
        if argument.name in node.kwargs:
            values[argument.name] = node.kwargs[argument.name]
        elif not argument.kwarg_only and index < len(node.args):
            values[argument.name] = node.args[index]
        else:
            values[argument.name] = argument.default_value
    return values


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
    kind = _kind(layer)
    if kind not in kinds:
        return None
    assert isinstance(layer, torch.fx.Node)
    arguments = _batch_norm_arguments(batch_norm)
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
    groups = 1
    if kind == "conv_transpose":
        groups = layer.args[_TRANSPOSE_GROUPS_INDEX] if len(layer.args) > _TRANSPOSE_GROUPS_INDEX else 1
        groups = layer.kwargs.get("groups", groups)
    return _Candidate(
        batch_norm=batch_norm,
        layer=layer,
        kind=kind,
        weight=weight,
        bias=bias if isinstance(bias, torch.fx.Node) else None,
        tensors=tensors,
        eps=float(arguments["eps"]),
        groups=int(groups),
    )


def _attribute(
    graph_module: torch.fx.GraphModule,
    node: object,
    layer: torch.fx.Node,
    batch_norm: torch.fx.Node,
    what: str,
) -> torch.Tensor | None:
    """The tensor a ``get_attr`` argument reads; a clear error for anything that is not one."""
    if node is None:
        return None
    prefix = f"cannot fold {batch_norm.name} into {layer.name if layer is not batch_norm else 'its input'}: "
    if not isinstance(node, torch.fx.Node):
        raise StageError(f"{prefix}the {what} is the constant {node!r}, not a module attribute", node=layer)
    if node.op == "placeholder":
        raise StageError(
            f"{prefix}the {what} is the graph input {node.name!r}, not a module attribute, so it is only "
            "known at run time (in a loop body, weights arrive as inputs; for an ExportedProgram, "
            "pass exported.module())",
            node=layer,
        )
    if node.op != "get_attr":
        raise StageError(
            f"{prefix}the {what} is computed by node {node.name!r} ({node.op} {node.target}), "
            "not read from a module attribute",
            node=layer,
        )
    value: Any = graph_module
    for atom in str(node.target).split("."):
        if not hasattr(value, atom):
            raise StageError(
                f"{prefix}the {what} reads attribute {node.target!r}, which the module does not have",
                node=layer,
            )
        value = getattr(value, atom)
    if not isinstance(value, torch.Tensor):
        raise StageError(
            f"{prefix}the {what} attribute {node.target!r} is a {type(value).__name__}, not a tensor",
            node=layer,
        )
    return value


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
    others = [
        user.name
        for user in layer.users
        if user is not batch_norm and not (user.op == "call_function" and user.target in _METADATA_READERS)
    ]
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
    _replace_attribute(graph_module, weight_target, fused_weight)
    args = list(layer.args)
    if len(args) == 2:
        args.append(None)
    if found.bias is not None:
        bias_target = str(found.bias.target)
        _replace_attribute(graph_module, bias_target, fused_bias)
    else:
        bias_target = _free_attribute(graph_module, f"{weight_target}_bias")
        _new_parameter(graph_module, bias_target, fused_bias)
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
    """The folded weight and bias, with torch's fusion helpers wherever they are right."""
    t = found.tensors
    weight, bias = t["weight"], t["bias"]
    mean, var = t["bn_running_mean"], t["bn_running_var"]
    gamma, beta = t["bn_weight"], t["bn_bias"]
    assert weight is not None and mean is not None and var is not None
    if found.kind == "linear":
        return fuse_linear_bn_weights(
            weight,
            bias,
            mean,
            var,
            found.eps,
            gamma if gamma is not None else torch.ones_like(mean),
            beta if beta is not None else torch.zeros_like(mean),
        )
    transpose = found.kind == "conv_transpose"
    if transpose and found.groups != 1:
        return _fuse_grouped_transpose(weight, bias, mean, var, found.eps, gamma, beta, found.groups)
    return fuse_conv_bn_weights(weight, bias, mean, var, found.eps, gamma, beta, transpose=transpose)


def _fuse_grouped_transpose(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    groups: int,
) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """``fuse_conv_bn_weights``'s arithmetic for a transposed weight ``(in, out / groups, *k)``.

    Output channel ``g * (out / groups) + j`` reads column ``j`` of group ``g``'s
    rows, so the scale is laid out per group; each element is the same product.
    """
    weight_dtype = weight.dtype
    bias_dtype = bias.dtype if bias is not None else weight_dtype
    if bias is None:
        bias = torch.zeros_like(mean)
    if gamma is None:
        gamma = torch.ones_like(mean)
    if beta is None:
        beta = torch.zeros_like(mean)
    var_rsqrt = torch.rsqrt(var + eps)
    rows, per_group, *kernel = weight.shape
    grouped = weight.reshape(groups, rows // groups, per_group, *kernel)
    scale = (gamma * var_rsqrt).reshape(groups, 1, per_group, *[1] * len(kernel))
    fused_weight = (grouped * scale).reshape(weight.shape).to(dtype=weight_dtype)
    fused_bias = ((bias - mean) * var_rsqrt * gamma + beta).to(dtype=bias_dtype)
    return (
        torch.nn.Parameter(fused_weight, weight.requires_grad),
        torch.nn.Parameter(fused_bias, bias.requires_grad),
    )


def _owner(graph_module: torch.fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    prefix, _, field = target.rpartition(".")
    return (graph_module.get_submodule(prefix) if prefix else graph_module), field


def _replace_attribute(graph_module: torch.fx.GraphModule, target: str, value: torch.nn.Parameter) -> None:
    """Point ``target`` at a new tensor of the same kind (parameter, buffer or plain attribute)."""
    module, field = _owner(graph_module, target)
    if field in module._parameters:
        module.register_parameter(field, value)
    elif field in module._buffers:
        persistent = field not in module._non_persistent_buffers_set
        module.register_buffer(field, value.detach(), persistent=persistent)
    else:
        setattr(module, field, value.detach())


def _new_parameter(graph_module: torch.fx.GraphModule, target: str, value: torch.nn.Parameter) -> None:
    module, field = _owner(graph_module, target)
    module.register_parameter(field, value)


def _free_attribute(graph_module: torch.fx.GraphModule, target: str) -> str:
    """``target``, or ``target_<n>`` with the smallest ``n`` that names nothing yet."""
    module, field = _owner(graph_module, target)
    candidate, number = field, 0
    while hasattr(module, candidate):
        number += 1
        candidate = f"{field}_{number}"
    return target[: len(target) - len(field)] + candidate


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


def _drop_dead_nodes(graph: torch.fx.Graph) -> None:
    """torchao's final dead-code elimination, once: side-effect-free nodes nobody reads."""
    for node in reversed(graph.nodes):
        if not node.users and not node.is_impure():
            graph.erase_node(node)


def _fold_sites(graph_module: torch.fx.GraphModule) -> Iterator[tuple[str, _Candidate]]:
    """The folds :func:`fold_batch_norms` would make now, in graph order, without making them."""
    for path, module in quantizable_graph_modules(graph_module):
        graph = module.graph
        uses = _attribute_uses(graph)
        for batch_norm in sorted(node for target in FOLDABLE_BATCH_NORMS for node in _find(graph, target)):
            try:
                found = _inspect(batch_norm, module, uses, ("conv", "conv_transpose", "linear"))
            except StageError:
                continue
            if isinstance(found, _Candidate):
                yield path, found


@condition("bn-folded", "no eval-mode batch norm is left that could be folded into the layer before it")
def bn_folded(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    """Every batch norm fold-bn would fold is a violation."""
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
    batch norms (they train), so with ``is_qat`` the stage does nothing. See
    :mod:`plugins.fold_bn` for the rules and where they differ from torchao.
    """

    name: str = "fold-bn"
    phase: str = "prepare"
    requires: tuple[str, ...] = ("captured", "unannotated")
    ensures: tuple[str, ...] = ("bn-folded",)
    invalidates: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    required: bool = False

    def run(self, ctx: Context) -> bool | None:
        if ctx.inputs.get("is_qat"):
            return False
        graph_module = ctx.graph_module
        assert graph_module is not None

        def origin(layer: torch.fx.Node, batch_norm: torch.fx.Node) -> contextlib.AbstractContextManager[Any]:
            return ctx.origin(layer, batch_norm, folded=batch_norm.name)

        def skipped(skip: Skipped) -> None:
            ctx.note(
                f"left {skip.batch_norm.name} unfolded: {skip.reason}",
                node=skip.batch_norm,
                graph=skip.graph,
                layer=skip.layer.name,
            )

        for fold in fold_batch_norms(graph_module, origin=origin, on_skip=skipped):
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
