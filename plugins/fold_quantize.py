"""Folding the quantize ops of constant tensors (weights) so that weights are stored as int8 buffers.

After convert a weight still goes ``get_attr(fp32) -> quantize -> dequantize
-> op`` at run time. torchao's ``constant_fold(gm, _quant_node_constraint)``
computes each quantize op whose inputs are all constant once, stores the
result as a buffer ``_frozen_param<i>`` and reads it with a ``get_attr`` node;
the dequantize op stays, for the backend to fuse. (torchao names that node
after the quantize node it replaced; here it is named after its buffer, so an
audit log never shows one name for two different nodes.)
This stage folds exactly the quantize nodes torchao folds (see
:class:`ConstantCones`), into the same buffers, and does three things better:

- the converted model holds only the quantized copy of a folded weight: every
  tensor attribute no node reads any more is deleted, dotted names included
  (torchao deletes only top-level names, so ``conv.weight`` and
  ``linear.weight`` stay behind in fp32), and so are the container modules
  this leaves empty;
- each folded weight's dequantize node, with the ``get_attr`` nodes feeding it
  (the int8 buffer, per-channel scales and zero points), moves to just before
  its first consumer, so running the graph eagerly never holds every fp32
  weight at once (torchao leaves them all at the top of the graph);
- only the constant cone of each quantize node is evaluated, each node at
  most once, where torchao interprets the whole graph.

The stage always folds: torchao's ``convert_pt2e(..., fold_quantize=False)``
corresponds to leaving the stage out of the run (the façade skips it).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes

from pipeline import Context, Stage, StageError, Violation, condition
from pipeline.module_tree import attribute, has_attribute
from plugins import chunked, dead_code, ops
from plugins.subgraphs import quantizable_graph_modules

_aten = torch.ops.aten

IMPURE_OPS: frozenset[object] = ops.DEQUANTIZE_OPS | {ops.CONVERT_ELEMENT_TYPE}
"""Ops never folded: the dequantize of a folded weight stays for the backend to fuse."""

FROZEN_PREFIX = "_frozen_param"


class _Unknown:
    def __repr__(self) -> str:
        return "<not constant>"


UNKNOWN: Any = _Unknown()
"""The value of a node that is not a compile-time constant."""

_PENDING: Any = object()


@attrs.frozen
class FoldQuantize(Stage):
    """Folds the quantize ops of constant weights into int8 buffers and drops the fp32 weights."""

    name: str = "fold-quantize"
    phase: str = "convert"
    requires: tuple[str, ...] = ("quantized",)
    ensures: tuple[str, ...] = ("weights-folded",)
    after: tuple[str, ...] = ("port-metadata",)

    def run(self, ctx: Context) -> bool:
        changed = False
        for _, module in quantizable_graph_modules(ctx.graph_module):
            changed |= fold_quantize_nodes(module, ctx)
        return changed


class ConstantCones:
    """Which quantize nodes of a graph torchao's ``constant_fold`` folds, and their values.

    torchao interprets the whole graph with a ``ConstantFolder`` (constructors
    skipped). A node is constant when every node it reads is constant, it is
    not a placeholder, a higher-order op, a nondeterministic op or
    ``_efficientzerotensor``, and (unless it is a ``get_attr``) one of its
    input values is a tensor. A constant tensor-valued node other than a
    ``get_attr`` becomes a folding candidate unless it is impure (a dequantize
    op, the int8-to-bf16 weight-only ``convert_element_type`` pattern, or a
    reader of a buffer that a ``copy_``/``put_`` op mutates), in which case it
    counts as not constant; meta tensors are constant but never candidates. A
    candidate whose every use is by candidates is dropped when its last
    non-output user is reached, so only the outermost folding survives; uses
    are counted per argument occurrence, as torchao counts them. Of the
    surviving candidates, the quantize nodes are folded.

    Here the same decisions are made lazily: a node is evaluated only when a
    question about a quantize node needs it, each node at most once.
    """

    def __init__(self, module: torch.fx.GraphModule) -> None:
        self.module = module
        self.graph = module.graph
        self.values: dict[torch.fx.Node, Any] = {}
        self.candidates: set[torch.fx.Node] = set()
        self._position = {node: index for index, node in enumerate(self.graph.nodes)}
        self._mutable = _mutated_buffer_producers(module)
        self._evaluating = False

    def folds(self, quantize: torch.fx.Node) -> bool:
        """Whether torchao's ``constant_fold`` replaces ``quantize`` by a constant."""
        if not ops.is_quantize(quantize) or not self.is_candidate(quantize):
            return False
        users = list(quantize.users)
        computing = [user for user in users if user.op != "output"]
        if not computing:
            return True
        last = max(computing, key=self._position.__getitem__)
        if not self.is_candidate(last):
            return True
        replaced_uses = sum(
            sum(1 for leaf in pytree.arg_tree_leaves(*user.args, **user.kwargs) if leaf is quantize)
            for user in users
            if self.is_candidate(user)
        )
        return replaced_uses != len(users)

    def is_candidate(self, node: torch.fx.Node) -> bool:
        self.value(node)
        return node in self.candidates

    def value(self, node: torch.fx.Node) -> Any:
        """The node's constant value, or :data:`UNKNOWN`; evaluates the inputs it needs first.

        Evaluation runs with the caller's dispatch modes off and without
        autograd, as torchao's interpreter runs; switching them once per
        question rather than once per node is most of what a small cone costs.
        """
        if node not in self.values:
            if self._evaluating:
                self._evaluate_cone(node)
            else:
                with self.evaluating():
                    self._evaluate_cone(node)
        return self.values[node]

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Keeps the modes off across many questions, for a caller asking about every quantize node."""
        if self._evaluating:
            yield
            return
        with _disable_current_modes(), torch.no_grad():
            self._evaluating = True
            try:
                yield
            finally:
                self._evaluating = False

    def _evaluate_cone(self, node: torch.fx.Node) -> None:
        """Depth first: a node is known once an input is known not constant, or all its inputs are known.

        Inputs are settled one at a time, in order, so the inputs after one
        that is not constant (a layer norm's weight after its activation) are
        never evaluated for it.
        """
        values = self.values
        stack = [node]
        while stack:
            current = stack[-1]
            if current in values:
                stack.pop()
                continue
            for item in current.all_input_nodes:
                value = values.get(item, _PENDING)
                if value is UNKNOWN:
                    values[current] = UNKNOWN
                    stack.pop()
                    break
                if value is _PENDING:
                    stack.append(item)
                    break
            else:
                values[current] = self._evaluate(current)
                stack.pop()

    def _evaluate(self, node: torch.fx.Node) -> Any:
        """The value of a node whose inputs are all known; the refusals come first, cheapest first."""
        if node.op in ("placeholder", "output"):
            return UNKNOWN
        if node.op == "get_attr":
            return self._attribute(node)
        if node.op == "call_function" and (
            ops.is_call(node, IMPURE_OPS)
            or node.target is _aten._efficientzerotensor.default
            or node.name == "triton_kernel_wrapper_functional_proxy"
            or isinstance(node.target, torch._ops.HigherOrderOperator)
        ):
            return UNKNOWN
        if isinstance(node.target, torch._ops.OpOverload) and (
            torch.Tag.nondeterministic_seeded in node.target.tags
        ):
            return UNKNOWN
        args, kwargs = torch.fx.node.map_aggregate((node.args, node.kwargs), self._argument)
        if not _holds_tensor((args, kwargs)) and not any(
            isinstance(leaf, torch.Tensor) for leaf in pytree.arg_tree_leaves(*args, **kwargs)
        ):
            return UNKNOWN
        try:
            result = self._run(node, args, kwargs)
        except Exception as error:
            raise _failed(node, error) from error
        if not isinstance(result, torch.Tensor) or result.device.type == "meta":
            return result
        if self._impure(node):
            return UNKNOWN
        self.candidates.add(node)
        return result

    def _attribute(self, node: torch.fx.Node) -> Any:
        try:
            return functools.reduce(attribute, str(node.target).split("."), self.module)
        except Exception as error:
            raise _failed(node, error) from error

    def _argument(self, argument: Any) -> Any:
        return self.values[argument] if isinstance(argument, torch.fx.Node) else argument

    def _run(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_function":
            return chunked.quantize(node.target, args, kwargs)
        if node.op == "call_module":
            return operator.attrgetter(str(node.target))(self.module)(*args, **kwargs)
        receiver, *rest = args
        return getattr(receiver, str(node.target))(*rest, **kwargs)

    def _impure(self, node: torch.fx.Node) -> bool:
        if _is_weight_only_cast(node) or (
            node.target == _aten.permute.default
            and len(node.users) == 1
            and _is_weight_only_cast(next(iter(node.users)))
        ):
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and source.op == "get_attr":
                return True
        return any(isinstance(arg, torch.fx.Node) and arg in self._mutable for arg in node.args)


def _holds_tensor(value: Any) -> bool:
    """Whether a tensor sits among the tuples, lists and dicts of ``value`` (other containers: see pytree)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(map(_holds_tensor, value))
    if isinstance(value, dict):
        return any(map(_holds_tensor, value.values()))
    return False


def _failed(node: torch.fx.Node, error: Exception) -> StageError:
    return StageError(
        f"evaluating the constant {node.name} failed: {type(error).__name__}: {error}", node=node
    )


def _is_weight_only_cast(node: torch.fx.Node) -> bool:
    source = node.args[0] if node.args else None
    return (
        node.target == torch.ops.prims.convert_element_type.default
        and isinstance(source, torch.fx.Node)
        and "val" in source.meta
        and getattr(source.meta["val"], "dtype", None) == torch.int8
        and node.args[1] == torch.bfloat16
    )


def _mutated_buffer_producers(module: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """The producers of every ``copy_``/``put_`` destination that reaches a buffer or an input.

    torchao treats a node reading any of them as impure, whatever the node is.
    """
    buffers: set[str] | None = None
    found: set[torch.fx.Node] = set()
    writes: dict[int, bool] = {}
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        key = id(node.target)
        if key not in writes:
            writes[key] = _copies_or_puts(node.target)
        if not writes[key]:
            continue
        if not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        producers = _producers(node.args[0])
        if producers is None:
            continue
        if buffers is None:
            buffers = {name for name, _ in module.named_buffers()}
        if any(
            item.op == "placeholder" or (item.op == "get_attr" and str(item.target) in buffers)
            for item in producers
        ):
            found.update(producers)
    return found


def _copies_or_puts(target: object) -> bool:
    """An op torchao's constant folding treats as mutating its first argument, by its name."""
    if not hasattr(target, "_schema"):
        return False
    text = str(target)
    return "copy_" in text or "put_" in text


def _producers(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """``node`` and everything upstream of it; ``None`` when an input (placeholder) is reached."""
    nodes = [node]
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for arg in (*current.args, *current.kwargs.values()):
            if not isinstance(arg, torch.fx.Node):
                continue
            if arg.op == "placeholder":
                return None
            nodes.append(arg)
            if not (arg.op == "call_function" and arg.target is getattr):
                frontier.append(arg)
    return nodes


def fold_quantize_nodes(module: torch.fx.GraphModule, ctx: Context) -> bool:
    """Fold the constant quantize nodes of one graph module; whether anything changed."""
    graph = module.graph
    cones = ConstantCones(module)
    with cones.evaluating():
        folding = [node for node in graph.nodes if ops.is_quantize(node) and cones.folds(node)]
    folded = [_replace_with_buffer(module, node, cones.values[node], ctx) for node in folding]
    changed = bool(folded)
    for node in list(graph.find_nodes(op="get_attr")):
        if not node.users:
            graph.erase_node(node)
            changed = True
    changed |= dead_code.eliminate_dead_code(graph)
    _move_next_to_consumers(graph, folded)
    referenced = _referenced_targets(module)
    for dotted in unreferenced_tensors(module, referenced):
        _delete_attribute(module, dotted, referenced)
        changed = True
    return changed


def _replace_with_buffer(
    module: torch.fx.GraphModule, quantize: torch.fx.Node, value: torch.Tensor, ctx: Context
) -> torch.fx.Node:
    graph = module.graph
    qualname = _frozen_name(module)
    module.register_buffer(qualname, value)
    sources = _cone_sources(quantize.args[0])
    weights = [str(source.target) for source in sources]
    with graph.inserting_before(quantize), ctx.origin(quantize, *sources, buffer=qualname, weights=weights):
        buffer = graph.create_node("get_attr", qualname)
    quantize.replace_all_uses_with(buffer)
    buffer.meta.update(quantize.meta)
    graph.erase_node(quantize)
    return buffer


def _frozen_name(module: torch.fx.GraphModule) -> str:
    """torchao's ``_frozen_param<i>``: from the module's counter on, the first unused name."""
    start = getattr(module, "_frozen_param_count", 0)
    for index in itertools.count(start):
        name = f"{FROZEN_PREFIX}{index}"
        if not has_attribute(module, name):
            module._frozen_param_count = index + 1
            return name
    raise AssertionError("unreachable")


def _cone_sources(argument: object) -> list[torch.fx.Node]:
    """The ``get_attr`` nodes a constant argument is computed from, in discovery order."""
    if not isinstance(argument, torch.fx.Node):
        return []
    found: list[torch.fx.Node] = []
    seen = {argument}
    stack = [argument]
    while stack:
        node = stack.pop()
        if node.op == "get_attr":
            found.append(node)
        for item in node.all_input_nodes:
            if item not in seen:
                seen.add(item)
                stack.append(item)
    return found


def _move_next_to_consumers(graph: torch.fx.Graph, buffers: Iterable[torch.fx.Node]) -> None:
    """Move each folded weight's dequantize node, then the get_attr nodes, to just before their first user."""
    position = {node: index for index, node in enumerate(graph.nodes)}
    attributes: dict[torch.fx.Node, None] = {}
    for buffer in buffers:
        if buffer.graph is not graph or buffer not in position:
            continue
        attributes[buffer] = None
        for user in list(buffer.users):
            inputs = user.all_input_nodes
            if ops.is_dequantize(user) and user.users and all(item.op == "get_attr" for item in inputs):
                min(user.users, key=position.__getitem__).prepend(user)
                attributes.update(dict.fromkeys(inputs))
    position = {node: index for index, node in enumerate(graph.nodes)}
    for reader in attributes:
        if reader.users:
            min(reader.users, key=position.__getitem__).prepend(reader)


def unreferenced_tensors(module: torch.fx.GraphModule, referenced: set[str] | None = None) -> list[str]:
    """Dotted names of the tensors held by ``module`` that no node of its graph reads.

    Parameters, buffers and plain tensor attributes count; nested graph
    modules (loop bodies, branches) hold their own and are not looked into.
    ``referenced``, the graph's ``get_attr``/``call_module`` targets, when the caller has them.
    """
    if referenced is None:
        referenced = _referenced_targets(module)
    return [dotted for dotted, _ in _tensor_attributes(module) if not _is_referenced(dotted, referenced)]


def _referenced_targets(module: torch.fx.GraphModule) -> set[str]:
    return {str(node.target) for node in module.graph.nodes if node.op in ("get_attr", "call_module")}


def _is_referenced(dotted: str, referenced: set[str]) -> bool:
    parts = dotted.split(".")
    return any(".".join(parts[:length]) in referenced for length in range(1, len(parts) + 1))


def _tensor_attributes(module: torch.nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in (*module._parameters.items(), *module._buffers.items(), *vars(module).items()):
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
    for name, child in module._modules.items():
        if child is not None and not isinstance(child, torch.fx.GraphModule):
            yield from _tensor_attributes(child, f"{prefix}{name}.")


def _delete_attribute(module: torch.fx.GraphModule, dotted: str, referenced: set[str]) -> None:
    """Delete the attribute, then every container module on its path that this leaves empty."""
    *path, field = dotted.split(".")
    owners: list[torch.nn.Module] = [module]
    for part in path:
        owners.append(getattr(owners[-1], part))
    delattr(owners[-1], field)
    for depth in range(len(path), 0, -1):
        owner = owners[depth]
        if (
            type(owner) is not torch.nn.Module
            or owner._parameters
            or owner._buffers
            or owner._modules
            or any(isinstance(value, torch.Tensor) for value in vars(owner).values())
            or ".".join(path[:depth]) in referenced
        ):
            break
        delattr(owners[depth - 1], path[depth - 1])


@condition("weights-folded", "no quantize op of constants remains and no tensor attribute is left unread")
def weights_folded(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found = []
    for path, module in quantizable_graph_modules(graph_module):
        cones = ConstantCones(module)
        with cones.evaluating():
            folding = [node for node in module.graph.nodes if ops.is_quantize(node) and cones.folds(node)]
        for node in folding:
            found.append(
                Violation(
                    "quantizes constants only: it should have been folded into an int8 buffer",
                    node=node,
                    graph=path,
                )
            )
        found.extend(
            Violation(f"tensor attribute {dotted!r} is read by no node (a weight left behind?)", graph=path)
            for dotted in unreferenced_tensors(module)
        )
    return found
