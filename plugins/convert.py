"""The convert stage: every observer becomes the quantize/dequantize ops of its qparams.

The forms are torchao 0.18's, so that backends lower the result unchanged:

- static int/float8: ``quantize_per_tensor``/``dequantize_per_tensor`` with the
  scale and zero point as Python literals, or ``*_per_channel`` with them as
  buffers (``_scale_<i>``, ``_zero_point_<i>``) and the channel axis;
- dynamic: ``choose_qparams`` (affine or symmetric) then the ``.tensor``
  overloads reading its outputs;
- float16: a round trip through ``convert_element_type.no_fuse``;
- torchao's affine observers: their own ``quantize_affine``/``dequantize_affine`` form;
- anything else: the observer is dropped and the tensor stays float.

Each new node is attributed to the observer it replaces and the annotated
edges that observer stood for. An observer that never saw data would give
scale 1 and zero point 0 (torchao does that silently); here it is a warning,
or an error with ``uncalibrated="error"``, naming the node and its source line.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Literal

import attrs
import torch
import torch.fx
from torch.fx.traceback import NodeSource, NodeSourceAction
from torchao.quantization.pt2e.utils import is_per_channel, to_underlying_dtype

from pipeline import Context, Stage, StageError, Violation, condition
from pipeline.naming import describe_node
from plugins import dead_code, histogram, observers, ops
from plugins.node_insertion import insert_node
from plugins.prepare import OBSERVED_KEY, AttributeNamer, observer_nodes
from plugins.subgraphs import quantizable_graph_modules

_STATIC_DTYPES = frozenset(
    {
        torch.quint8,
        torch.qint8,
        torch.qint32,
        torch.uint8,
        torch.int8,
        torch.uint16,
        torch.int16,
        torch.int32,
        torch.float8_e5m2,
        torch.float8_e4m3fn,
    }
)
_CHOOSE_BY_SCHEME = {
    torch.per_tensor_affine: ops.CHOOSE_QPARAMS,
    torch.per_tensor_symmetric: ops.CHOOSE_QPARAMS_SYMMETRIC,
}


class UncalibratedObserverWarning(UserWarning):
    """An observer reached convert without having seen data; its qparams are placeholders."""


@attrs.frozen
class Convert(Stage):
    """Replaces each observer with quantize/dequantize ops carrying the qparams it computed."""

    name: str = "convert"
    phase: str = "convert"
    requires: tuple[str, ...] = ("observed",)
    ensures: tuple[str, ...] = ("quantized",)
    invalidates: tuple[str, ...] = ("observed",)
    required: bool = True
    uncalibrated: Literal["warn", "error"] = attrs.field(
        default="warn", validator=attrs.validators.in_(("warn", "error"))
    )

    def run(self, ctx: Context) -> None:
        assert ctx.graph_module is not None
        for path, module in reversed(list(quantizable_graph_modules(ctx.graph_module))):
            _Converter(ctx, module, path, self.uncalibrated).convert()


class _Converter:
    def __init__(self, ctx: Context, module: torch.fx.GraphModule, path: str, uncalibrated: str) -> None:
        self.ctx = ctx
        self.module = module
        self.graph = module.graph
        self.path = path
        self.uncalibrated = uncalibrated
        self.scale_names = AttributeNamer(module, "_scale_")
        self.zero_point_names = AttributeNamer(module, "_zero_point_")
        self.qparams: dict[int, tuple[Any, Any]] = {}

    def convert(self) -> int:
        modules = dict(self.module.named_modules(remove_duplicate=False))
        targets = [
            node
            for node in self.graph.find_nodes(op="call_module")
            if observers.is_observer(modules.get(str(node.target)))
        ]
        for node in targets:
            observer = modules[str(node.target)]
            self._check_calibrated(node, observer)
            details = {
                "observer": node.name,
                "observes": node.meta.get(OBSERVED_KEY, []),
                **observers.summary(observer),
            }
            with self.ctx.origin(node, *node.args[:1], **details):
                self._replace(node, observer)
        dead_code.eliminate_dead_code(self.graph)
        self._drop_unused_observers({str(node.target) for node in targets})
        return len(targets)

    def _check_calibrated(self, node: torch.fx.Node, observer: torch.nn.Module) -> None:
        if observers.has_seen_data(observer):
            return
        message = (
            f"observer {node.name} ({type(observer).__name__}) has seen no data; "
            f"its qparams would be scale 1 and zero point 0. Calibrate the prepared model first. "
            f"It observes: {', '.join(node.meta.get(OBSERVED_KEY, [])) or 'unknown'}\n"
            f"  {describe_node(_nearest_source_line(node))}"
        )
        if self.uncalibrated == "error":
            raise StageError(message, node=node)
        self.ctx.note("uncalibrated observer", node=node)
        warnings.warn(message, UncalibratedObserverWarning, stacklevel=2)

    def _replace(self, node: torch.fx.Node, observer: torch.nn.Module) -> None:
        if callable(getattr(observer, "convert", None)):
            observer.convert(self.module, node)
            return
        dtype = getattr(observer, "dtype", None)
        dynamic = bool(getattr(observer, "is_dynamic", False))
        if dtype in _STATIC_DTYPES and not dynamic:
            self._static(node, observer, dtype)
        elif dynamic:
            self._dynamic(node, observer, dtype)
        elif dtype == torch.float16:
            self._float16(node)
        else:
            self.ctx.note(
                f"observer of dtype {dtype} has no quantized form; the tensor stays float", node=node
            )
            node.replace_all_uses_with(node.args[0])
            self.graph.erase_node(node)

    def _static(self, node: torch.fx.Node, observer: torch.nn.Module, dtype: torch.dtype) -> None:
        if id(observer) not in self.qparams:
            self.qparams[id(observer)] = (
                histogram.calculate_qparams(observer)
                if histogram.applies_to(observer)
                else observer.calculate_qparams()  # type: ignore[operator]
            )
        scale, zero_point = self.qparams[id(observer)]
        quant_min, quant_max = observer.quant_min, observer.quant_max
        target_dtype = to_underlying_dtype(dtype)
        source = node.args[0]
        with self.graph.inserting_before(node):
            if is_per_channel(observer.qscheme):
                quantize, dequantize = ops.QUANTIZE_PER_CHANNEL, ops.DEQUANTIZE_PER_CHANNEL
                qparams: tuple[Any, ...] = (
                    self._buffer(self.scale_names(), scale),
                    self._buffer(self.zero_point_names(), zero_point),
                    int(observer.ch_axis),
                    quant_min,
                    quant_max,
                    target_dtype,
                )
            else:
                quantize, dequantize = ops.QUANTIZE_PER_TENSOR, ops.DEQUANTIZE_PER_TENSOR
                qparams = (float(scale), int(zero_point), quant_min, quant_max, target_dtype)
            quantized = insert_node(self.graph, "call_function", quantize, (source, *qparams))
            dequantized = insert_node(
                self.graph, "call_function", dequantize, (quantized, *qparams), _dequantize_kwargs(source)
            )
        self._finish(node, quantized, dequantized)

    def _dynamic(self, node: torch.fx.Node, observer: torch.nn.Module, dtype: Any) -> None:
        target_dtype = to_underlying_dtype(dtype)
        if target_dtype not in (torch.uint8, torch.int8):
            raise StageError(f"dynamic quantization supports int8 and uint8, not {dtype}", node=node)
        scheme = getattr(observer, "qscheme", torch.per_tensor_affine)
        if scheme not in _CHOOSE_BY_SCHEME:
            raise StageError(
                f"dynamic quantization supports per-tensor affine or symmetric schemes, not {scheme}",
                node=node,
            )
        eps = getattr(observer, "eps", torch.finfo(torch.float32).eps)
        quant_min, quant_max = observer.quant_min, observer.quant_max
        source = node.args[0]
        with self.graph.inserting_before(node):
            choose = insert_node(
                self.graph,
                "call_function",
                _CHOOSE_BY_SCHEME[scheme],
                (source, quant_min, quant_max, eps, target_dtype),
            )
            scale = insert_node(self.graph, "call_function", operator.getitem, (choose, 0))
            zero_point = insert_node(self.graph, "call_function", operator.getitem, (choose, 1))
            qparams = (scale, zero_point, quant_min, quant_max, target_dtype)
            quantized = insert_node(
                self.graph, "call_function", ops.QUANTIZE_PER_TENSOR_TENSOR, (source, *qparams)
            )
            dequantized = insert_node(
                self.graph,
                "call_function",
                ops.DEQUANTIZE_PER_TENSOR_TENSOR,
                (quantized, *qparams),
                _dequantize_kwargs(source),
            )
        self._finish(node, quantized, dequantized)

    def _float16(self, node: torch.fx.Node) -> None:
        with self.graph.inserting_before(node):
            half = insert_node(
                self.graph, "call_function", ops.CONVERT_ELEMENT_TYPE, (node.args[0], torch.float16)
            )
            full = insert_node(self.graph, "call_function", ops.CONVERT_ELEMENT_TYPE, (half, torch.float))
        node.replace_all_uses_with(full)
        self.graph.erase_node(node)

    def _buffer(self, name: str, value: torch.Tensor) -> torch.fx.Node:
        self.module.register_buffer(name, value.detach().clone())
        return insert_node(self.graph, "get_attr", name)

    def _finish(self, node: torch.fx.Node, quantized: torch.fx.Node, dequantized: torch.fx.Node) -> None:
        node.replace_all_uses_with(dequantized)
        for created in (quantized, dequantized):
            created.meta["from_node"] = [
                NodeSource(node, "replace_observer_with_quantize_dequantize_node", [NodeSourceAction.CREATE])
            ]
        self.graph.erase_node(node)

    def _drop_unused_observers(self, names: set[str]) -> None:
        still_used = {str(node.target) for node in self.graph.find_nodes(op="call_module")}
        for name in sorted(names - still_used):
            if hasattr(self.module, name):
                delattr(self.module, name)


def _dequantize_kwargs(source: Any) -> dict[str, Any]:
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype != torch.float32:
        return {"out_dtype": dtype}
    return {}


def _nearest_source_line(observer: torch.fx.Node) -> torch.fx.Node:
    """The observed op whose source line points the user at the right place: a consumer, else the producer."""
    for user in observer.users:
        if "stack_trace" in user.meta:
            return user
    producer = observer.args[0]
    return producer if isinstance(producer, torch.fx.Node) else observer


@condition("quantized", "no observer remains; every quantize op feeds a dequantize op")
def quantized(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found = [
        Violation("observer left in the converted graph", node=node, graph=path)
        for path, node in observer_nodes(graph_module)
    ]
    for path, module in quantizable_graph_modules(graph_module):
        for node in module.graph.nodes:
            if ops.is_quantize(node) and not all(ops.is_dequantize(user) for user in node.users):
                found.append(
                    Violation(
                        "quantize op whose output is read as float (not through a dequantize)",
                        node=node,
                        graph=path,
                    )
                )
    return found
