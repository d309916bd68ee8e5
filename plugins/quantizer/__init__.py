"""The project's symmetric int8 quantizer (XNNPACK style) and its op-annotator registry.

``SymmetricQuantizer(SymmetricConfig(...))`` quantizes a captured graph the
way XNNPACK runs it; its annotators are named rules (``linear``,
``conv_relu``, ``cat``, ...) that plugins extend through the
``pt2e_pipeline_annotators`` hook this package defines.
"""

from plugins.quantizer.annotator import (
    AnnotateFunction,
    AnnotationContext,
    Annotator,
    Tier,
    is_claimed,
    is_float32,
    is_quantizable_operand,
    output_qspec_of,
    write_annotation,
)
from plugins.quantizer.builtin_annotators import BUILTIN_ANNOTATORS, builtin_annotators
from plugins.quantizer.config import Mode, QuantizationSpecs, SymmetricConfig, specs_for
from plugins.quantizer.discovery import collect_annotators, default_annotators
from plugins.quantizer.quantizer import DEFAULT_CONFIG, SymmetricQuantizer
from plugins.quantizer.validation import AnnotationError, validate_annotations

__all__ = [
    "BUILTIN_ANNOTATORS",
    "DEFAULT_CONFIG",
    "AnnotateFunction",
    "AnnotationContext",
    "AnnotationError",
    "Annotator",
    "Mode",
    "QuantizationSpecs",
    "SymmetricConfig",
    "SymmetricQuantizer",
    "Tier",
    "builtin_annotators",
    "collect_annotators",
    "default_annotators",
    "is_claimed",
    "is_float32",
    "is_quantizable_operand",
    "output_qspec_of",
    "specs_for",
    "validate_annotations",
    "write_annotation",
]
