"""Op annotators: named rules that write torchao annotations for one op or op pattern.

An :class:`Annotator` is tried on every ``call_function`` node whose target is
one of its ``ops`` (the pattern's *anchor*: the op producing the pattern's
output, such as the ``relu`` of conv+relu). Its function inspects the
anchor's producers, asks the :class:`AnnotationContext` whether it may claim
the pattern's nodes, writes annotations, and says whether it did.

When annotators run (``SymmetricQuantizer.annotate``):

1. ``Tier.OPERATOR`` annotators, one at a time, larger patterns first
   (``pattern_size``, descending) then by name, each over the nodes in graph
   order. Larger first is what lets conv+bn+relu win over conv+bn and conv.
2. ``Tier.SHARING`` annotators, node by node in graph order (for each node,
   its annotators by the same key, until one annotates). These ops reuse
   their input's qparams, so they must see their producer already decided;
   graph order makes chains such as ``pool -> hardtanh -> view`` work.

A node is annotated at most once: the first annotator to claim it wins.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch
import torch.fx
from torch._ops import OpOverload, OpOverloadPacket
from torch._subclasses import FakeTensor
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpecBase

from pipeline.validators import identifier
from plugins.annotation import ANNOTATION_KEY, annotation_of
from plugins.quantizer.config import MODES, QuantizationSpecs, SymmetricConfig

_HISTC_UPPER_BOUND = 3.4028235e15
"""``torch.histc`` (under ``HistogramObserver``) fails on values beyond this."""


class Tier(enum.IntEnum):
    """When an annotator runs; see the module documentation for the full order."""

    OPERATOR = 0
    """Ops with qparams of their own (and fused patterns ending in one)."""
    SHARING = 1
    """Ops whose output reuses the qparams of their input (pools, clamps, reshapes, cat)."""


def _to_ops(value: Any) -> tuple[OpOverload, ...]:
    owner = "Annotator.ops"
    if isinstance(value, OpOverload):
        value = (value,)
    if isinstance(value, OpOverloadPacket) or not isinstance(value, Iterable):
        raise TypeError(f"{owner} must be a sequence of ATen operator overloads, got {value!r}")
    ops = tuple(value)
    if not ops:
        raise ValueError(f"{owner} is empty; an annotator must name the ops it is tried on")
    for op in ops:
        if isinstance(op, OpOverloadPacket):
            raise TypeError(
                f"{owner} holds the operator packet {op}; name its overloads, such as {op}.default"
            )
        if not isinstance(op, OpOverload):
            raise TypeError(
                f"{owner} holds {op!r}, which is not an operator overload; name the overload, "
                f"such as torch.ops.aten.conv2d.default"
            )
    return ops


def _to_modes(value: Any) -> frozenset[str]:
    owner = "Annotator.modes"
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{owner} must be a set of modes such as {{'ptq', 'qat'}}, got {value!r}")
    modes = frozenset(value)
    unknown = sorted(str(mode) for mode in modes - MODES)
    if unknown or not modes:
        raise ValueError(
            f"{owner} must be a non-empty subset of {sorted(MODES)}, got {sorted(map(str, modes))}"
        )
    return modes


def _to_tier(value: Any) -> Tier:
    try:
        return Tier(value)
    except ValueError:
        raise ValueError(
            f"Annotator.tier must be one of {[tier.name for tier in Tier]}, got {value!r}"
        ) from None


def _callable(instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{type(instance).__name__}.{field.name} must be callable, got {value!r}")


def _positive(instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(instance).__name__}.{field.name} must be an int >= 1, got {value!r}")


AnnotateFunction = Callable[[torch.fx.Node, "AnnotationContext"], bool]
"""``function(anchor, ctx) -> annotated``: annotate the pattern ending at ``anchor`` if it matches."""


@attrs.frozen
class Annotator:
    """A named annotation rule, tried on the nodes whose target is one of ``ops``.

    The name is what users and plugins refer to (``builtin_annotators("conv")``,
    a clash between two plugins); ``modes`` says which configs it serves, so
    that one registry can hold static-only fusions and the few ops dynamic
    quantization touches.
    """

    name: str = attrs.field(validator=identifier)
    ops: tuple[OpOverload, ...] = attrs.field(converter=_to_ops)
    function: AnnotateFunction = attrs.field(validator=_callable)
    tier: Tier = attrs.field(default=Tier.OPERATOR, converter=_to_tier)
    pattern_size: int = attrs.field(default=1, validator=_positive)
    modes: frozenset[str] = attrs.field(
        default=frozenset({"ptq", "qat"}),
        converter=_to_modes,
    )

    @property
    def sort_key(self) -> tuple[int, int, str]:
        """Tier, then larger patterns first, then name: the order annotators are tried in."""
        return (int(self.tier), -self.pattern_size, self.name)


@attrs.frozen
class AnnotationContext:
    """What an annotator function may consult: the graph, the anchor's config, and the claim rule."""

    graph_module: torch.fx.GraphModule
    config: SymmetricConfig
    scope_of: Callable[[torch.fx.Node], SymmetricConfig | None]

    @property
    def specs(self) -> QuantizationSpecs:
        """The specs of the anchor's config."""
        return self.config.specs

    def can_claim(self, *nodes: torch.fx.Node) -> bool:
        """Whether a pattern over ``nodes`` may be annotated.

        Every op node must be unannotated so far and quantized by the same
        config as the anchor: a pattern straddling two module scopes is left
        alone rather than quantized by one scope's rules. Weights and other
        ``get_attr``/placeholder nodes belong to no scope and are not claimed.
        """
        return all(
            node.op != "call_function" or (not is_claimed(node) and self.scope_of(node) == self.config)
            for node in nodes
        )


def is_claimed(node: torch.fx.Node) -> bool:
    """Whether some annotator (ours or another quantizer's) has already taken the node."""
    annotation = annotation_of(node)
    return annotation is not None and annotation._annotated


def output_qspec_of(node: object) -> QuantizationSpecBase | None:
    """The spec the node's output is quantized with, if any."""
    if not isinstance(node, torch.fx.Node):
        return None
    annotation = annotation_of(node)
    return None if annotation is None else annotation.output_qspec


def write_annotation(
    node: torch.fx.Node,
    inputs: Mapping[torch.fx.Node, QuantizationSpecBase | None] | None = None,
    output: QuantizationSpecBase | None = None,
) -> None:
    """Annotate ``node``; ``None`` specs are dropped, since an absent input already means float."""
    node.meta[ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map={arg: spec for arg, spec in (inputs or {}).items() if spec is not None},
        output_qspec=output,
        _annotated=True,
    )


def is_float32(node: torch.fx.Node) -> bool:
    """Whether the node produces a float32 tensor (observers handle nothing else)."""
    value = node.meta.get("val")
    return isinstance(value, FakeTensor) and value.dtype == torch.float32


def is_quantizable_operand(node: torch.fx.Node, graph_module: torch.fx.GraphModule) -> bool:
    """A float32 tensor that a histogram observer can take: not a constant beyond ``histc``'s range."""
    if not is_float32(node):
        return False
    if node.op == "get_attr":
        constant: Any = functools.reduce(getattr, str(node.target).split("."), graph_module)
        if (
            isinstance(constant, torch.Tensor)
            and constant.numel() == 1
            and abs(constant.item()) > _HISTC_UPPER_BOUND
        ):
            return False
    return True
