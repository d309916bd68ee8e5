"""The PTQ flow against torchao 0.18: same ops, same qparams on every Q/DQ node, bit-identical outputs.

Every zoo model under every quantizer recipe that quantizes it: torchao's own
XNNPACK test quantizer and X86InductorQuantizer (static and dynamic),
ExecuTorch's XNNPACKQuantizer, and the project's symmetric quantizer run
through torchao's flow as the reference.
Both sides get copies of the same exported module and the same calibration
batches; ours runs through the drop-in ``pipeline.pt2e`` functions.
"""

from __future__ import annotations

import copy

import pytest
import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer as ExecuTorchXNNPACKQuantizer,
)
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    get_symmetric_quantization_config as executorch_config,
)
from zoo.compare import assert_same_quantized
from zoo.models import _CASES
from zoo.quantizers import CONFIGS, applies_to, make_quantizer
from zoo.reference import export_case, torchao_ptq

from pipeline.pt2e import convert_pt2e, prepare_pt2e, quantize
from plugins.quantizer import SymmetricConfig, SymmetricQuantizer

SYMMETRIC = {
    "symmetric-per-channel": SymmetricConfig(per_channel=True),
    "symmetric-per-tensor": SymmetricConfig(per_channel=False),
    "symmetric-dynamic": SymmetricConfig(dynamic=True),
}
EXECUTORCH = {
    "executorch-per-channel": {"is_per_channel": True},
    "executorch-per-tensor": {"is_per_channel": False},
    "executorch-dynamic": {"is_per_channel": True, "is_dynamic": True},
}


def build(config: str):
    if config in SYMMETRIC:
        return SymmetricQuantizer(SYMMETRIC[config])
    if config in EXECUTORCH:
        return ExecuTorchXNNPACKQuantizer().set_global(executorch_config(**EXECUTORCH[config]))
    return make_quantizer(config)


def quantizes(config: str, case) -> bool:
    return config in SYMMETRIC or config in EXECUTORCH or applies_to(config, case)


EXECUTORCH_DEFAULT_TIER = {"residual_cnn", "transformer_block", "maxpool_cat_mul"}
"""ExecuTorch's quantizer costs seconds a case; the rest of its matrix runs in `tox -e slow`."""


def pair(case, config):
    slow = config in EXECUTORCH and case.name not in EXECUTORCH_DEFAULT_TIER
    return pytest.param(case, config, id=f"{case.name}-{config}", marks=[pytest.mark.slow] if slow else [])


PAIRS = [
    pair(case, config)
    for case in _CASES
    for config in (*CONFIGS, *SYMMETRIC, *EXECUTORCH)
    if quantizes(config, case)
]


def ours(exported: torch.fx.GraphModule, config: str, batches) -> torch.fx.GraphModule:
    prepared = prepare_pt2e(exported, build(config))
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return convert_pt2e(prepared)


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_bit_identical_to_torchao(case, config):
    exported = export_case(case)
    batches = case.calibration_batches(4, seed=7)
    reference = torchao_ptq(copy.deepcopy(exported), build(config), batches)
    converted = ours(exported, config, batches)
    assert_same_quantized(converted, reference, case.example_inputs)
    for batch in batches[1:]:
        assert_same_quantized(converted, reference, batch)


@pytest.mark.parametrize("name", ["residual_cnn", "transformer_block", "dynamic_batch_conv_linear"])
def test_one_shot_quantize_equals_prepare_calibrate_convert(name):
    case = next(c for c in _CASES if c.name == name)
    batches = case.calibration_batches(4, seed=7)
    exported = export_case(case)
    result = quantize(
        exported, case.example_inputs, quantizer=build("xnnpack-per-channel"), calibration=batches
    )
    assert_same_quantized(
        result.graph_module, ours(exported, "xnnpack-per-channel", batches), case.example_inputs
    )
    tail = ["calibrate", "convert", "duplicate-dq", "port-metadata", "fold-quantize"]
    stages = [stage for stage in result.report.stages if stage.name in tail]
    assert [stage.name for stage in stages] == tail
    assert all(stage.status == "ran" or stage.name == "duplicate-dq" for stage in stages)
    skipped = result.report["fold-conv-bn"]
    assert (skipped.status, skipped.reason) == ("skipped", "no batch norm in the graph")
    assert result.report["fuse-conv-bn"].reason == "not a QAT run"


def test_one_shot_quantize_captures_an_eager_model_with_a_dynamic_batch():
    case = next(c for c in _CASES if c.name == "dynamic_batch_conv_linear")
    batches = case.calibration_batches(4, seed=7)
    result = quantize(
        case.factory(),
        case.example_inputs,
        quantizer=build("xnnpack-per-channel"),
        calibration=batches,
        dynamic_shapes=case.dynamic_shapes,
    )
    reference = torchao_ptq(export_case(case), build("xnnpack-per-channel"), batches)
    for batch in batches:
        assert_same_quantized(result.graph_module, reference, batch)
