"""Reading quantization annotations: torchao's format, under torchao's metadata key.

Quantizers (torchao's, ExecuTorch's, the project's own) write a
``QuantizationAnnotation`` into ``node.meta["quantization_annotation"]``; every
stage that reads one goes through here.
"""

from __future__ import annotations

import torch.fx
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

ANNOTATION_KEY = "quantization_annotation"


def annotation_of(node: torch.fx.Node) -> QuantizationAnnotation | None:
    """The node's annotation, or ``None``."""
    annotation = node.meta.get(ANNOTATION_KEY)
    return annotation if isinstance(annotation, QuantizationAnnotation) else None


def is_annotated(node: torch.fx.Node) -> bool:
    """Whether the node carries an annotation that asks for something.

    An annotation with neither input specs nor an output spec asks nothing
    (quantizers write such empty annotations to mark nodes they have seen).
    """
    annotation = annotation_of(node)
    return annotation is not None and (
        bool(annotation.input_qspec_map) or annotation.output_qspec is not None
    )
