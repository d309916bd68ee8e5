"""torchao's PT2E entry points, with torchao 0.18's signatures, run as pipeline stages.

``prepare_pt2e``, ``prepare_qat_pt2e`` and ``convert_pt2e`` run the ``prepare``
and ``convert`` phases of the default pipeline (the built-in stages and every
installed plugin); ``quantize`` runs all phases at once, calibration included.
Nothing here imports the quantization plugins: they arrive through the plugin
hooks like any other. The caller's model is never modified: each function
returns a new module.

Each run's audit trail stays in memory and is found with :func:`audit_of`, or
goes to the JSON-lines file named by the ``PT2E_PIPELINE_AUDIT`` environment
variable (appended to).
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx

from pipeline.audit.reader import AuditLog
from pipeline.engine import Pipeline
from pipeline.report import RunResult

AUDIT_ENVIRONMENT_VARIABLE = "PT2E_PIPELINE_AUDIT"
_FOLD_QUANTIZE = "fold-quantize"

_audits: weakref.WeakKeyDictionary[torch.nn.Module, AuditLog] = weakref.WeakKeyDictionary()


@functools.cache
def default_pipeline() -> Pipeline:
    """The pipeline the functions here run: every installed plugin, built-ins included."""
    return Pipeline.default()


def _audit_destination() -> Any:
    return os.environ.get(AUDIT_ENVIRONMENT_VARIABLE) or None


def _keep(result: RunResult, parent: torch.nn.Module | None = None) -> torch.fx.GraphModule:
    module = result.graph_module
    assert module is not None
    if result.audit is not None:
        earlier = _audits.get(parent) if parent is not None else None
        events = [*(earlier.events if earlier is not None else ()), *result.audit.events]
        _audits[module] = AuditLog(events)
    return module


def audit_of(model: torch.nn.Module) -> AuditLog | None:
    """The audit log of the runs that produced ``model`` (prepare and convert), if kept in memory."""
    return _audits.get(model)


def prepare_pt2e(model: torch.fx.GraphModule, quantizer: Any) -> torch.fx.GraphModule:
    """Annotate ``model`` with ``quantizer`` and insert observers (torchao's ``prepare_pt2e``).

    ``model`` is the graph module of ``torch.export.export(...).module()``.
    Calibrate the returned module by calling it, then pass it to :func:`convert_pt2e`.
    """
    result = default_pipeline().prepare(model, quantizer=quantizer, audit=_audit_destination())
    return _keep(result)


def prepare_qat_pt2e(model: torch.fx.GraphModule, quantizer: Any) -> torch.fx.GraphModule:
    """As :func:`prepare_pt2e` for quantization-aware training: fake-quantize modules instead of observers."""
    result = default_pipeline().prepare(model, quantizer=quantizer, is_qat=True, audit=_audit_destination())
    return _keep(result)


def convert_pt2e(
    model: torch.fx.GraphModule,
    use_reference_representation: bool = False,
    fold_quantize: bool = True,
) -> torch.fx.GraphModule:
    """Replace observers with quantize/dequantize ops (torchao's ``convert_pt2e``).

    ``fold_quantize`` stores quantized weights as int8 constants.
    ``use_reference_representation`` (torchao's integer-arithmetic rewrite) is
    not supported and raises.
    """
    if not isinstance(use_reference_representation, bool):
        raise ValueError(
            "Unexpected argument type for `use_reference_representation`, "
            f"please make sure you're passing in a boolean, got {type(use_reference_representation)}"
        )
    if use_reference_representation:
        raise NotImplementedError(
            "use_reference_representation=True (torchao's reference representation rewrite) is "
            "not supported by pt2e-pipeline; convert with the default False"
        )
    pipeline = default_pipeline()
    skip = () if fold_quantize or _FOLD_QUANTIZE not in pipeline.plan else (_FOLD_QUANTIZE,)
    result = pipeline.convert(model, skip=skip, audit=_audit_destination())
    return _keep(result, parent=model)


def quantize(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    quantizer: Any,
    calibration: Iterable[Any] | None = None,
    pipeline: Pipeline | None = None,
    **inputs: Any,
) -> RunResult:
    """Quantize in one run: capture, annotate, prepare, calibrate, convert, and the rest.

    ``model`` may be any module (it is exported with ``example_inputs``) or an
    exported graph module. ``calibration`` is an iterable of input batches
    (tuples of model arguments); without it the example inputs calibrate
    once. Returns the :class:`~pipeline.RunResult`: the quantized module as
    ``graph_module``, the per-stage ``report`` and the ``audit`` log.
    """
    chosen = pipeline if pipeline is not None else default_pipeline()
    return chosen.run(model, example_inputs, quantizer=quantizer, calibration=calibration, **inputs)
