"""Copying the source line, module path and quantization tag of quantized ops onto their Q/DQ nodes.

Convert creates the quantize, dequantize and choose-qparams nodes with no
``stack_trace`` or ``nn_module_stack``, so a backend (and a reader of the
audit trail) cannot tell which line of the model or which module they belong
to. This stage ports them by the rules of torchao's metadata-porting pass, walking
the annotated nodes in graph order (a later port overwrites an earlier one):

- static input: the dequantize node that feeds the annotated node (a direct
  argument, not one inside a list) and leads back, through Q/DQ nodes, to the
  annotated producer, takes the consumer's metadata; when its quantize node
  reads a ``get_attr`` through view-like ops, that quantize node and those ops
  take the ``get_attr``'s metadata;
- dynamic input: the first choose-qparams node found breadth-first from the
  producer, the quantize node reading its scale and that quantize node's
  dequantize node take the consumer's metadata;
- output: the last user of an annotated producer takes the producer's
  metadata when it is a quantize node.

torchao ports only ``stack_trace`` and ``quantization_tag``; this stage ports
``nn_module_stack`` by the same rules too (torchao's own docstring lists it),
so that every Q/DQ node the rules reach knows its module.

Annotation keys may be nodes of the graph the annotations were written on
rather than of this graph (the pipeline runs every phase on a private copy);
they are matched to this graph's nodes by name.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.fx

from pipeline import Context, Stage, StageError, Violation, condition
from plugins import ops
from plugins.annotation import annotation_of, is_annotated
from plugins.qdq_graph import value_users
from plugins.subgraphs import quantizable_graph_modules

_aten = torch.ops.aten

PORTED_KEYS: tuple[str, ...] = ("stack_trace", "nn_module_stack", "quantization_tag")

WEIGHT_VIEW_OPS: frozenset[object] = frozenset(
    {
        _aten.flatten.using_ints,
        _aten.permute.default,
        _aten.permute_copy.default,
        _aten.slice_copy.Tensor,
        _aten.squeeze.dim,
        _aten.squeeze_copy.dim,
        _aten.transpose.int,
        _aten.transpose_,
        _aten.view_copy.default,
        _aten.view.default,
        _aten._mkldnn_transpose,
    }
)
"""Ops walked from a weight's quantize node back to its ``get_attr`` (torchao's list, packets included)."""

_CONNECTING_OPS = ops.QUANTIZE_OPS | ops.DEQUANTIZE_OPS | {ops.CHOOSE_QPARAMS}


class PortingError(Exception):
    """The graph does not have the dynamic-quantization shape the rules expect."""

    def __init__(self, message: str, node: torch.fx.Node) -> None:
        super().__init__(message)
        self.node = node


@attrs.frozen
class Port:
    """One copy of metadata: ``source``'s ported keys onto ``target``."""

    target: torch.fx.Node
    source: torch.fx.Node


@attrs.frozen
class PortMetadata(Stage):
    """Copies stack_trace, nn_module_stack and quantization_tag onto the Q/DQ nodes of quantized ops."""

    name: str = "port-metadata"
    phase: str = "convert"
    requires: tuple[str, ...] = ("quantized",)
    ensures: tuple[str, ...] = ("qdq-metadata-ported",)
    after: tuple[str, ...] = ("duplicate-dq",)

    def run(self, ctx: Context) -> bool:
        changed = False
        for _, module in quantizable_graph_modules(ctx.graph_module):
            try:
                ports = list(metadata_ports(module.graph))
            except PortingError as error:
                raise StageError(str(error), node=error.node) from error
            for port in ports:
                changed |= _copy_metadata(port)
        return changed


def _copy_metadata(port: Port) -> bool:
    changed = False
    for key in PORTED_KEYS:
        if key in port.source.meta:
            value = port.source.meta[key]
            changed |= port.target.meta.get(key) != value
            port.target.meta[key] = copy.copy(value) if isinstance(value, (dict, list)) else value
    return changed


def metadata_ports(graph: torch.fx.Graph) -> Iterator[Port]:
    """The ports the rules make in ``graph``, in the order they are made.

    Raises :class:`PortingError` where torchao raises: a dynamically quantized
    input with no choose-qparams node, or one whose nodes do not form the
    ``choose_qparams -> getitem -> quantize -> dequantize`` chain.
    """
    by_name = {node.name: node for node in graph.nodes}
    for node in graph.nodes:
        if not is_annotated(node):
            continue
        annotation = annotation_of(node)
        assert annotation is not None
        for key, qspec in annotation.input_qspec_map.items():
            producer = _local(key, graph, by_name)
            if qspec is None or producer is None:
                continue
            if getattr(qspec, "is_dynamic", None) is True:
                yield from _dynamic_input_ports(producer, node)
            else:
                yield from _static_input_ports(producer, node)
        if annotation.output_qspec is not None:
            yield from _output_ports(node)


def _local(key: Any, graph: torch.fx.Graph, by_name: dict[str, torch.fx.Node]) -> torch.fx.Node | None:
    if not isinstance(key, torch.fx.Node):
        return None
    if key.graph is graph:
        return key
    return by_name.get(key.name)


def _static_input_ports(producer: torch.fx.Node, consumer: torch.fx.Node) -> Iterator[Port]:
    dequantize = next(
        (arg for arg in consumer.args if ops.is_dequantize(arg) and _leads_to(arg, producer)),
        None,
    )
    if dequantize is None:
        return
    assert isinstance(dequantize, torch.fx.Node)
    quantize = dequantize.args[0]
    if not ops.is_quantize(quantize):
        return
    assert isinstance(quantize, torch.fx.Node)
    walked = [quantize]
    source = quantize.args[0]
    while ops.is_call(source, WEIGHT_VIEW_OPS):
        assert isinstance(source, torch.fx.Node)
        walked.append(source)
        source = source.args[0]
    if isinstance(source, torch.fx.Node) and source.op == "get_attr":
        for node in walked:
            yield Port(node, source)
    yield Port(dequantize, consumer)


def _leads_to(node: torch.fx.Node, producer: torch.fx.Node) -> bool:
    while ops.is_call(node, _CONNECTING_OPS):
        upstream = node.args[0]
        if not isinstance(upstream, torch.fx.Node):
            raise PortingError(f"expected argument 0 of {node.name} to be a node, got {upstream!r}", node)
        node = upstream
    return node is producer


def _dynamic_input_ports(producer: torch.fx.Node, consumer: torch.fx.Node) -> Iterator[Port]:
    chooser = _first_choose_qparams(producer)
    if chooser is None:
        raise PortingError(
            f"no choose-qparams node found for the dynamically quantized input {producer.name} "
            f"of {consumer.name}",
            consumer,
        )
    results = value_users(chooser)
    if len(results) != 2:
        raise PortingError(
            f"{chooser.name} should have exactly two users (scale and zero point), has {len(results)}",
            chooser,
        )
    quantize = next(iter(results[-1].users))
    dequantizers = value_users(quantize)
    if len(dequantizers) != 1:
        raise PortingError(
            f"{quantize.name} should have a single dequantize user, has {len(dequantizers)}", quantize
        )
    for node in (chooser, quantize, dequantizers[0]):
        yield Port(node, consumer)


def _first_choose_qparams(producer: torch.fx.Node) -> torch.fx.Node | None:
    """Breadth first over the users of ``producer`` (not through the output), as torchao searches."""
    queue = collections.deque(producer.users)
    seen = set(queue)
    while queue:
        node = queue.popleft()
        if node.op == "output":
            continue
        if ops.is_choose_qparams(node):
            return node
        for user in node.users:
            if user not in seen:
                seen.add(user)
                queue.append(user)
    return None


def _output_ports(producer: torch.fx.Node) -> Iterator[Port]:
    users = value_users(producer)
    if users and ops.is_quantize(users[-1]):
        yield Port(users[-1], producer)


@condition(
    "qdq-metadata-ported",
    "every Q/DQ node the porting rules reach carries its consumer's or producer's metadata",
)
def qdq_metadata_ported(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found = []
    for path, module in quantizable_graph_modules(graph_module):
        expected: dict[tuple[torch.fx.Node, str], torch.fx.Node] = {}
        try:
            for port in metadata_ports(module.graph):
                for key in PORTED_KEYS:
                    if key in port.source.meta:
                        expected[port.target, key] = port.source
        except PortingError as error:
            found.append(Violation(str(error), node=error.node, graph=path))
            continue
        for (target, key), source in expected.items():
            if target.meta.get(key) != source.meta[key]:
                found.append(
                    Violation(
                        f"{key} differs from that of {source.name}, which the rules port onto it",
                        node=target,
                        graph=path,
                    )
                )
    return found
