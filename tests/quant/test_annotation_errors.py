"""Where torchao fails badly on an annotation or a prepared model, the pipeline does better.

Each case states torchao's behaviour (checked here against torchao 0.18 itself)
and ours: correct results, or a clear error naming the node and the user's line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as torchao_convert_pt2e
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as torchao_prepare_pt2e
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from pipeline import ConditionViolationError, StageFailedError
from pipeline.pt2e import convert_pt2e, prepare_pt2e
from plugins.convert import UncalibratedObserverWarning

INT8 = QuantizationSpec(
    dtype=torch.int8,
    quant_min=-128,
    quant_max=127,
    qscheme=torch.per_tensor_affine,
    observer_or_fake_quant_ctr=HistogramObserver,
)
UINT8 = QuantizationSpec(
    dtype=torch.uint8,
    quant_min=0,
    quant_max=255,
    qscheme=torch.per_tensor_affine,
    observer_or_fake_quant_ctr=MinMaxObserver,
)


class Branches(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(x)
        b = torch.sigmoid(x)
        return a + b


class Scripted(Quantizer):
    """Annotates with a function of {node name: node}."""

    def __init__(self, script: Callable[[dict[str, torch.fx.Node]], None]) -> None:
        super().__init__()
        self.script = script

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        self.script({node.name: node for node in model.graph.nodes})
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        pass


def exported() -> torch.fx.GraphModule:
    return torch.export.export(Branches(), (torch.randn(4, 8),)).module()


def annotate(node: torch.fx.Node, inputs=None, output=None) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map=inputs or {}, output_qspec=output, _annotated=True
    )


def forward_pointer(nodes):
    annotate(nodes["relu"], {nodes["x"]: INT8}, SharedQuantizationSpec(nodes["add"]))
    annotate(nodes["sigmoid"], {nodes["x"]: INT8}, INT8)
    annotate(nodes["add"], {nodes["relu"]: INT8, nodes["sigmoid"]: INT8}, INT8)


def calibrate(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(4, 8, generator=torch.Generator().manual_seed(seed)))
    return model


def test_a_shared_spec_pointing_at_a_later_node_works():
    with pytest.raises(AssertionError, match="please make sure only refer to edge or node that has observer"):
        torchao_prepare_pt2e(exported(), Scripted(forward_pointer))
    prepared = prepare_pt2e(exported(), Scripted(forward_pointer))
    relu_observer = next(iter(next(n for n in prepared.graph.nodes if n.name == "relu").users))
    add_observer = next(iter(next(n for n in prepared.graph.nodes if n.name == "add").users))
    assert prepared.get_submodule(relu_observer.target) is prepared.get_submodule(add_observer.target)
    converted = convert_pt2e(calibrate(prepared))
    scales = {
        n.args[0].name: n.args[1]
        for n in converted.graph.nodes
        if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
    }
    assert scales["relu"] == scales["add"]


def test_a_sharing_cycle_is_a_clear_error_naming_the_node():
    def cycle(nodes):
        annotate(nodes["relu"], {}, SharedQuantizationSpec(nodes["sigmoid"]))
        annotate(nodes["sigmoid"], {}, SharedQuantizationSpec(nodes["relu"]))

    with pytest.raises(AssertionError):
        torchao_prepare_pt2e(exported(), Scripted(cycle))
    with pytest.raises(ConditionViolationError) as caught:
        prepare_pt2e(exported(), Scripted(cycle))
    message = str(caught.value)
    assert "stage 'annotate'" in message and "ensures 'annotated'" in message
    assert "only point at each other" in message
    assert "a = torch.relu(x)" in message or "b = torch.sigmoid(x)" in message


def test_a_node_edge_sharing_cycle_is_a_clear_error_not_a_recursion_error():
    def cycle(nodes):
        annotate(
            nodes["add"],
            {nodes["sigmoid"]: SharedQuantizationSpec(nodes["add"])},
            SharedQuantizationSpec((nodes["sigmoid"], nodes["add"])),
        )

    with pytest.raises(RecursionError):
        torchao_prepare_pt2e(exported(), Scripted(cycle))
    with pytest.raises(ConditionViolationError, match=r"cycle|point at each other") as caught:
        prepare_pt2e(exported(), Scripted(cycle))
    assert "return a + b" in str(caught.value)


def test_a_shared_spec_pointing_at_nothing_quantized_names_the_node():
    def dangling(nodes):
        annotate(nodes["add"], {nodes["relu"]: INT8}, SharedQuantizationSpec(nodes["sigmoid"]))

    with pytest.raises(ConditionViolationError) as caught:
        prepare_pt2e(exported(), Scripted(dangling))
    assert "the SharedQuantizationSpec of add points at sigmoid, which no annotation quantizes" in str(
        caught.value
    )


def test_a_derived_spec_from_a_later_output_works():
    def derive(scales):
        (first, second) = scales
        scale_a, _ = first.calculate_qparams()
        scale_b, _ = second.calculate_qparams()
        return scale_a * scale_b, torch.zeros_like(scale_a, dtype=torch.int32)

    def later(nodes):
        derived = DerivedQuantizationSpec(
            derived_from=[nodes["sigmoid"], nodes["add"]],
            derive_qparams_fn=derive,
            dtype=torch.int32,
            quant_min=-(2**31),
            quant_max=2**31 - 1,
            qscheme=torch.per_tensor_affine,
        )
        annotate(nodes["relu"], {nodes["x"]: INT8}, derived)
        annotate(nodes["sigmoid"], {}, INT8)
        annotate(nodes["add"], {}, INT8)

    with pytest.raises(KeyError):
        torchao_prepare_pt2e(exported(), Scripted(later))
    converted = convert_pt2e(calibrate(prepare_pt2e(exported(), Scripted(later))))
    quantizes = [
        n
        for n in converted.graph.nodes
        if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
    ]
    assert {n.args[0].name for n in quantizes} >= {"relu", "sigmoid", "add"}


def plain(nodes):
    annotate(nodes["relu"], {nodes["x"]: INT8}, INT8)
    annotate(nodes["add"], {nodes["relu"]: INT8, nodes["sigmoid"]: UINT8}, INT8)


def test_an_uncalibrated_observer_is_a_warning_naming_it_not_a_silent_scale_of_one():
    torchao_converted = torchao_convert_pt2e(torchao_prepare_pt2e(exported(), Scripted(plain)))
    assert 1.0 in [n.args[1] for n in torchao_converted.graph.nodes if "quantize_per_tensor" in str(n.target)]
    with pytest.warns(UncalibratedObserverWarning) as caught:
        convert_pt2e(prepare_pt2e(exported(), Scripted(plain)))
    messages = [str(w.message) for w in caught]
    assert any(
        "activation_post_process_0" in m and "has seen no data" in m and "x -> relu" in m for m in messages
    )
    assert any("a = torch.relu(x)" in m for m in messages)


def test_an_uncalibrated_observer_can_be_an_error():
    from pipeline import OptionsError, Pipeline

    pipeline = Pipeline.default(stage_options={"convert": {"uncalibrated": "error"}})
    prepared = pipeline.prepare(exported(), quantizer=Scripted(plain)).graph_module
    with pytest.raises(StageFailedError, match=r"stage 'convert' .* failed at activation_post_process_0"):
        pipeline.convert(prepared)
    with pytest.raises(OptionsError, match=r"stage 'convert'.*'uncalibrated' must be in \('warn', 'error'\)"):
        Pipeline.default(stage_options={"convert": {"uncalibrated": "loud"}})
    with pytest.raises(
        OptionsError,
        match=r"stage 'convert' \(plugin builtin .*\) has no option 'fold'; its options: uncalibrated",
    ):
        Pipeline.default(stage_options={"convert": {"fold": True}})


def test_a_deep_copied_prepared_model_converts_like_the_original():
    prepared = calibrate(prepare_pt2e(exported(), Scripted(plain)))
    duplicate = copy.deepcopy(prepared)
    stale = next(n for n in duplicate.graph.nodes if n.name == "add").meta["quantization_annotation"]
    assert all(key.graph is not duplicate.graph for key in stale.input_qspec_map)
    converted = convert_pt2e(duplicate)
    reference = convert_pt2e(prepared)
    x = torch.randn(4, 8)
    assert torch.equal(converted(x), reference(x))
    assert [str(n.target) for n in converted.graph.nodes] == [str(n.target) for n in reference.graph.nodes]


def test_a_tensor_in_keyword_arguments_is_a_clear_error():
    class KeywordOther(Scripted):
        def transform_for_annotation(self, model):
            add = next(n for n in model.graph.nodes if n.name == "add")
            add.kwargs = {"other": add.args[1]}
            add.args = add.args[:1]
            model.recompile()
            return model

    def mark(nodes):
        annotate(nodes["add"], {nodes["relu"]: INT8}, INT8)

    with pytest.raises(AssertionError, match="Kwarg 'other' contained type"):
        torchao_prepare_pt2e(exported(), KeywordOther(mark))
    with pytest.raises(
        StageFailedError, match=r"keyword argument 'other' holds the tensor sigmoid"
    ) as caught:
        prepare_pt2e(exported(), KeywordOther(mark))
    assert "return a + b" in str(caught.value)


def test_an_input_spec_for_a_node_that_is_not_an_input_names_the_node():
    def wrong(nodes):
        annotate(nodes["relu"], {nodes["sigmoid"]: INT8}, INT8)

    with pytest.raises(
        ConditionViolationError, match=r"input_qspec_map names 'sigmoid', which is not an input of this node"
    ):
        prepare_pt2e(exported(), Scripted(wrong))
