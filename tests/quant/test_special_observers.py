"""Observer kinds beyond min/max and histogram: the same Q/DQ forms as torchao.

torchao's affine observers (static and dynamic) become ``quantize_affine`` /
``dequantize_affine``; a float16 spec becomes a ``convert_element_type`` round
trip; a fixed-qparams spec keeps its scale and zero point. Each is compared
with torchao's flow on the same graph and calibration data.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchao.quantization.pt2e import MappingType, PerAxis, PerTensor, PerToken
from torchao.quantization.pt2e._affine_quantization import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
)
from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver, PlaceholderObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as torchao_convert_pt2e
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as torchao_prepare_pt2e
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
)
from zoo.compare import assert_same_quantized

from pipeline.pt2e import convert_pt2e, prepare_pt2e
from plugins.observers import has_seen_data


class LinearSigmoid(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


class Annotating(Quantizer):
    """Gives the linear's input, weight and output, and the sigmoid's output, the specs it is built with."""

    def __init__(self, activation, weight, output=None, sigmoid=None) -> None:
        super().__init__()
        self.activation, self.weight, self.output, self.sigmoid = activation, weight, output, sigmoid

    def annotate(self, model):
        for node in model.graph.nodes:
            if node.target == torch.ops.aten.linear.default:
                x, w = node.args[0], node.args[1]
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={x: self.activation, w: self.weight},
                    output_qspec=self.output,
                    _annotated=True,
                )
            if node.target == torch.ops.aten.sigmoid.default and self.sigmoid is not None:
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: self.output}, output_qspec=self.sigmoid, _annotated=True
                )
        return model

    def validate(self, model):
        pass


def affine(mapping, granularity, **extra):
    return QuantizationSpec(
        dtype=torch.int8,
        observer_or_fake_quant_ctr=AffineQuantizedMinMaxObserver.with_args(
            mapping_type=mapping, target_dtype=torch.int8, granularity=granularity, **extra
        ),
    )


INT8 = affine(MappingType.ASYMMETRIC, PerTensor())
FLOAT16 = QuantizationSpec(dtype=torch.float16, observer_or_fake_quant_ctr=PlaceholderObserver)
FIXED = FixedQParamsQuantizationSpec(
    dtype=torch.uint8,
    scale=1.0 / 256.0,
    zero_point=0,
    quant_min=0,
    quant_max=255,
    qscheme=torch.per_tensor_affine,
)
DYNAMIC_AFFINE = QuantizationSpec(
    dtype=torch.int8,
    is_dynamic=True,
    observer_or_fake_quant_ctr=AffineQuantizedPlaceholderObserver.with_args(
        mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.int8, granularity=PerToken()
    ),
)

RECIPES = {
    "affine-static": dict(activation=INT8, weight=affine(MappingType.SYMMETRIC, PerAxis(0)), output=INT8),
    "affine-dynamic": dict(activation=DYNAMIC_AFFINE, weight=affine(MappingType.SYMMETRIC, PerAxis(0))),
    "float16": dict(activation=FLOAT16, weight=FLOAT16, output=FLOAT16),
    "fixed-qparams": dict(
        activation=INT8, weight=affine(MappingType.SYMMETRIC, PerAxis(0)), output=INT8, sigmoid=FIXED
    ),
}


def calibrated(prepare, exported, quantizer, batches):
    prepared = prepare(exported, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return prepared


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_same_qdq_form_as_torchao(recipe):
    torch.manual_seed(0)
    model = LinearSigmoid().eval()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 8, generator=generator),) for _ in range(3)]
    exported = torch.export.export(model, batches[0]).module()
    reference = torchao_convert_pt2e(
        calibrated(torchao_prepare_pt2e, copy.deepcopy(exported), Annotating(**RECIPES[recipe]), batches)
    )
    ours = convert_pt2e(calibrated(prepare_pt2e, exported, Annotating(**RECIPES[recipe]), batches))
    for batch in batches:
        assert_same_quantized(ours, reference, batch)
    targets = {str(node.target) for node in ours.graph.nodes if node.op == "call_function"}
    expected = {
        "affine-static": "torchao.dequantize_affine",
        "affine-dynamic": "torchao.choose_qparams_affine",
        "float16": "quantized_decomposed.convert_element_type.no_fuse",
        "fixed-qparams": "quantized_decomposed.dequantize_per_tensor.default",
    }[recipe]
    assert any(target.startswith(expected) for target in targets), targets


def test_a_fixed_qparams_spec_keeps_its_scale_and_zero_point():
    torch.manual_seed(0)
    model = LinearSigmoid().eval()
    batch = (torch.randn(4, 8),)
    prepared = calibrated(
        prepare_pt2e,
        torch.export.export(model, batch).module(),
        Annotating(**RECIPES["fixed-qparams"]),
        [batch],
    )
    converted = convert_pt2e(prepared)
    sigmoid_q = [
        node
        for node in converted.graph.nodes
        if node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
        and node.args[0].name == "sigmoid"
    ]
    assert [(node.args[1], node.args[2], node.args[5]) for node in sigmoid_q] == [
        (1.0 / 256.0, 0, torch.uint8)
    ]


@pytest.mark.parametrize(
    ("low", "high", "seen"),
    [
        (-1.0, 2.0, True),
        (float("inf"), float("-inf"), False),
        (0.0, float("nan"), False),
        (float("-inf"), 1.0, False),
    ],
)
def test_a_min_max_observer_has_seen_data_when_its_range_is_finite(
    low: float, high: float, seen: bool
) -> None:
    per_tensor = MinMaxObserver()
    per_tensor.min_val, per_tensor.max_val = torch.tensor(low), torch.tensor(high)
    per_channel = PerChannelMinMaxObserver()
    per_channel.min_val, per_channel.max_val = torch.tensor([0.0, low]), torch.tensor([1.0, high])
    assert has_seen_data(per_tensor) is seen
    assert has_seen_data(per_channel) is seen
    assert has_seen_data(PerChannelMinMaxObserver()) is False
