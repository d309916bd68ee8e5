"""The annotate stage: a quantizer marks which tensors to quantize, and how.

Any quantizer with torchao 0.18's interface works unchanged
(``transform_for_annotation``, ``annotate``, ``validate``): torchao's
``X86InductorQuantizer`` and XNNPACK test quantizer, ExecuTorch's
``XNNPACKQuantizer``, the project's own. The stage then holds the annotations to
a standard the quantizer's own ``validate`` does not: every spec names a real
input, every shared or derived spec points at something that is quantized, and
no sharing goes round in a circle.

The quantizer runs with :func:`~plugins.partition_search.faster_partition_search`
on (option ``fast_partition_search``, default true): torchao's quantizers
search op chains by enumerating every combination of partitions, which is
cubic in the depth of the model; the replacement returns the same chains in
the same order.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import torch.fx
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

from pipeline import Context, Stage, StageError, Violation, condition
from plugins import sharing
from plugins.annotation import ANNOTATION_KEY
from plugins.partition_search import faster_partition_search
from plugins.subgraphs import loop_bodies, quantizable_graph_modules


@attrs.frozen
class Annotate(Stage):
    """Runs the quantizer: transform_for_annotation, annotate, validate, on the graph and loop bodies.

    For QAT, the top-level graph only: torchao's ``prepare_qat_pt2e`` leaves loop bodies alone.
    ``fast_partition_search`` runs the quantizer with the linear chain search
    of :mod:`plugins.partition_search`; false runs torchao's own.
    """

    name: str = "annotate"
    requires: tuple[str, ...] = ("captured",)
    ensures: tuple[str, ...] = ("annotated",)
    invalidates: tuple[str, ...] = ("unannotated",)
    after: tuple[str, ...] = ("fold-bn",)
    required: bool = True
    fast_partition_search: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

    def run(self, ctx: Context) -> None:
        quantizer = ctx.inputs.get("quantizer")
        if quantizer is None:
            raise StageError("no quantizer to annotate with: pass quantizer=... to the run")
        for method in ("transform_for_annotation", "annotate", "validate"):
            if not callable(getattr(quantizer, method, None)):
                raise StageError(
                    f"{type(quantizer).__name__} is not a quantizer: it has no {method}() "
                    f"(expected torchao's Quantizer interface)"
                )
        assert ctx.graph_module is not None
        search = faster_partition_search() if self.fast_partition_search else contextlib.nullcontext()
        with search:
            ctx.graph_module = _annotate_tree(
                quantizer, ctx.graph_module, bodies=not ctx.inputs.get("is_qat")
            )


def _annotate_tree(quantizer: Any, module: torch.fx.GraphModule, *, bodies: bool) -> torch.fx.GraphModule:
    transformed = quantizer.transform_for_annotation(module)
    if not isinstance(transformed, torch.fx.GraphModule):
        raise StageError(
            f"{type(quantizer).__name__}.transform_for_annotation returned "
            f"{type(transformed).__name__}, not a graph module"
        )
    quantizer.annotate(transformed)
    quantizer.validate(transformed)
    for name, body in list(loop_bodies(transformed)) if bodies else ():
        annotated = _annotate_tree(quantizer, body, bodies=True)
        if annotated is not body:
            setattr(transformed, name, annotated)
    return transformed


@condition(
    "annotated",
    "annotations are well formed: specs name real inputs, shared and derived specs point at "
    "quantized edges or outputs, sharing has no cycle without a concrete spec",
)
def annotated(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found: list[Violation] = []
    for path, module in quantizable_graph_modules(graph_module):
        found += _check_graph(module.graph, path)
    return found


def _check_graph(graph: torch.fx.Graph, path: str) -> list[Violation]:
    found: list[Violation] = []
    keys: set[sharing.EdgeOrNode] = set()
    for node in graph.nodes:
        annotation = node.meta.get(ANNOTATION_KEY)
        if annotation is None:
            continue
        if not isinstance(annotation, QuantizationAnnotation):
            found.append(
                Violation(
                    f"{ANNOTATION_KEY} is a {type(annotation).__name__}, not a QuantizationAnnotation",
                    node=node,
                    graph=path,
                )
            )
            continue
        inputs = set(node.all_input_nodes)
        for producer, spec in annotation.input_qspec_map.items():
            if not isinstance(producer, torch.fx.Node) or producer not in inputs:
                found.append(
                    Violation(
                        f"input_qspec_map names {getattr(producer, 'name', producer)!r}, which is not "
                        f"an input of this node",
                        node=node,
                        graph=path,
                    )
                )
            if spec is not None and not isinstance(spec, QuantizationSpecBase):
                found.append(
                    Violation(
                        f"input spec for {getattr(producer, 'name', producer)} is {spec!r}, "
                        f"not a quantization spec",
                        node=node,
                        graph=path,
                    )
                )
            keys.add((producer, node))
        output = annotation.output_qspec
        if output is not None:
            if not isinstance(output, QuantizationSpecBase):
                found.append(
                    Violation(f"output spec is {output!r}, not a quantization spec", node=node, graph=path)
                )
            keys.add(node)
    if found:
        return found
    specs = sharing.specs_of(graph)
    for key, spec in specs.items():
        if isinstance(spec, SharedQuantizationSpec) and spec.edge_or_node not in keys:
            found.append(
                Violation(
                    f"the SharedQuantizationSpec of {sharing.describe(key)} points at "
                    f"{sharing.describe(spec.edge_or_node)}, which no annotation quantizes",
                    node=sharing.owner(key),
                    graph=path,
                )
            )
        if isinstance(spec, DerivedQuantizationSpec):
            for source in spec.derived_from:
                if source not in keys:
                    found.append(
                        Violation(
                            f"the DerivedQuantizationSpec of {sharing.describe(key)} derives from "
                            f"{sharing.describe(source)}, which no annotation quantizes",
                            node=sharing.owner(key),
                            graph=path,
                        )
                    )
    if found:
        return found
    try:
        groups = sharing.group(specs)
        for number in groups.members:
            groups.deciding_spec(number, specs)
    except StageError as error:
        found.append(Violation(str(error), node=error.node, graph=path))
    return found
