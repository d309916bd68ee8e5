"""The built-in plugin: declares the PTQ and QAT flows through the same hooks a third party uses."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import Condition, Factory, MetaField, NodeDescriber, Stage, hookimpl
from plugins import (
    annotate,
    audit_fields,
    calibrate,
    capture,
    convert,
    duplicate_dq,
    fold_bn,
    fold_conv_bn,
    fold_quantize,
    fuse_conv_bn,
    models,
    port_metadata,
    prepare,
    quantizers,
)
from plugins.quantizer.hooks import pt2e_pipeline_annotators, pt2e_pipeline_hookspecs

__all__ = [
    "pt2e_pipeline_annotators",
    "pt2e_pipeline_conditions",
    "pt2e_pipeline_hookspecs",
    "pt2e_pipeline_meta_fields",
    "pt2e_pipeline_models",
    "pt2e_pipeline_node_describers",
    "pt2e_pipeline_quantizers",
    "pt2e_pipeline_stages",
]


@hookimpl
def pt2e_pipeline_stages() -> Sequence[Stage]:
    return [
        capture.Capture(),
        fold_bn.FoldBatchNorm(),
        annotate.Annotate(),
        fuse_conv_bn.FuseConvBatchNorm(),
        prepare.Prepare(),
        calibrate.Calibrate(),
        convert.Convert(),
        fold_conv_bn.FoldConvBatchNorm(),
        duplicate_dq.DuplicateDequantize(),
        port_metadata.PortMetadata(),
        fold_quantize.FoldQuantize(),
    ]


@hookimpl
def pt2e_pipeline_conditions() -> Sequence[Condition]:
    return [
        capture.captured,
        capture.unannotated,
        fold_bn.bn_folded,
        annotate.annotated,
        prepare.observed,
        calibrate.calibrated,
        convert.quantized,
        fold_conv_bn.no_batch_norm_after_fold,
        duplicate_dq.dq_duplicated,
        port_metadata.qdq_metadata_ported,
        fold_quantize.weights_folded,
    ]


@hookimpl
def pt2e_pipeline_meta_fields() -> Sequence[MetaField]:
    return list(audit_fields.META_FIELDS)


@hookimpl
def pt2e_pipeline_node_describers() -> Sequence[NodeDescriber]:
    return list(audit_fields.DESCRIBERS)


@hookimpl
def pt2e_pipeline_quantizers() -> Sequence[Factory]:
    return list(quantizers.QUANTIZERS)


@hookimpl
def pt2e_pipeline_models() -> Sequence[Factory]:
    return list(models.MODELS)
