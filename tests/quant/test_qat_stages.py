"""fuse-conv-bn, fold-conv-bn and the train/eval switches on real exported graphs.

The differential tests (test_qat_differential.py) hold the common cases to
torchao bit for bit; these hold the rest: annotations that move with the
weight whatever order a quantizer wrote them in, pairs that must not be fused
and say why, forms torchao cannot fold (shared weights, mixed weight and bias
schemes, grouped transposed convs, ``affine=False``), models prepared by
torchao, the condition that no batch norm is left behind, and the audit trail.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torchao.quantization.pt2e import move_exported_model_to_eval as torchao_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as torchao_convert
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e as torchao_prepare_qat
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    Quantizer,
    SharedQuantizationSpec,
)
from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from zoo.compare import assert_same_quantized, op_multiset

from pipeline import ConditionViolationError, Pipeline
from pipeline.pt2e import convert_pt2e, prepare_qat_pt2e
from plugins import ops
from plugins.annotation import ANNOTATION_KEY, annotation_of
from plugins.fold_conv_bn import FoldConvBatchNorm, fold_simulations, no_batch_norm_after_fold
from plugins.fuse_conv_bn import QAT_BATCH_NORM, fuse_conv_batch_norms
from plugins.qat_simulation import Simulation, find_simulation
from plugins.quantizers import symmetric
from plugins.train_eval import (
    TRAINING_ATTRIBUTE,
    allow_exported_model_train_eval,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)

aten = torch.ops.aten
BATCH_NORM = aten.batch_norm.default


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and statistics (variances positive), so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    return model


class LayerNorm(nn.Module):
    """A layer, a batch norm, optionally a relu."""

    def __init__(self, layer: nn.Module, norm: nn.Module, relu: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.bn = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.layer(x))
        return torch.relu(y) if self.relu else y


class SharedConv(nn.Module):
    """One conv module called twice, each call followed by its own batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv(torch.relu(self.bn1(self.conv(x)))))


class ConvReadTwice(nn.Module):
    """The conv output feeds the batch norm and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def export(model: nn.Module, *inputs: torch.Tensor, train: bool = True) -> torch.fx.GraphModule:
    model.train(train)
    return torch.export.export(model, inputs).module()


def conv_bn(bias: bool = True, **norm: object) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    x = torch.randn(2, 3, 8, 8)
    model = seeded(LayerNorm(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4, **norm)))
    return export(model, x), x


def xnnpack(per_channel: bool = True) -> Quantizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = XNNPACKQuantizer()
    return quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True))


def train(model: torch.fx.GraphModule, shape: tuple[int, ...], steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(11)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(torch.randn(*shape)).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def batch_norms(graph_module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return list(graph_module.graph.find_nodes(op="call_function", target=BATCH_NORM))


def prepared_qat(graph_module: torch.fx.GraphModule, quantizer: Quantizer, **options: object):
    return Pipeline.default().prepare(graph_module, quantizer=quantizer, is_qat=True, **options)


def qat_flow(graph_module: torch.fx.GraphModule, quantizer: Quantizer, shape: tuple[int, ...], **options):
    prepared = prepared_qat(graph_module, quantizer).graph_module
    train(prepared, shape)
    move_exported_model_to_eval(prepared)
    return prepared, Pipeline.default().convert(prepared, **options)


def unfolded_reference(prepared: torch.fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    """What the converted model computes before the fold: the simulated form with its Q/DQ ops.

    The fold must keep that within one step of the output's quantization: it
    replaces ``W * (gamma / sqrt(var + eps))`` by torchao's
    ``W * (gamma * rsqrt(var + eps))``, whose rounding may move a weight by
    one step. (The prepared model itself is no reference: a
    FusedMovingAvgObsFakeQuantize computes its qparams in its own kernel, not
    quite as its observer's ``calculate_qparams``, which convert uses.)
    """
    unfolded = Pipeline.default().convert(copy.deepcopy(prepared), skip=["fold-conv-bn"]).graph_module
    assert batch_norms(unfolded)
    with torch.no_grad():
        return unfolded(x)


def output_step(converted: torch.fx.GraphModule) -> float:
    """The scale of the dequantize op that produces the model's output."""
    (output,) = converted.graph.find_nodes(op="output")
    node = output.args[0][0]
    while not ops.is_dequantize(node):
        node = node.args[0]
    return float(node.args[1])


# fuse-conv-bn ---------------------------------------------------------------------------------


def test_fusion_builds_torchaos_form_and_trains_like_it():
    graph_module, _ = conv_bn()
    ours = prepare_qat_pt2e(copy.deepcopy(graph_module), xnnpack())
    reference = torchao_prepare_qat(copy.deepcopy(graph_module), xnnpack())
    assert op_multiset(ours) == op_multiset(reference)
    assert torch.equal(torch.stack(train(ours, (2, 3, 8, 8))), torch.stack(train(reference, (2, 3, 8, 8))))
    (norm,) = batch_norms(ours)
    simulation = find_simulation(norm)
    assert isinstance(simulation, Simulation)
    assert norm.args[5:8] == (True, 0.1, 1e-05)
    assert norm.meta[QAT_BATCH_NORM] == {"layer": "conv2d", "declined": None}


def test_fusion_keeps_the_batch_norms_own_eps_and_momentum_and_trains_even_from_an_eval_export():
    graph_module, _ = conv_bn(eps=1e-3, momentum=0.3)
    eval_graph = export(
        seeded(LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3))),
        torch.randn(2, 3, 8, 8),
        train=False,
    )
    for module in (graph_module, eval_graph):
        prepared = prepare_qat_pt2e(module, symmetric(qat=True))
        (norm,) = batch_norms(prepared)
        assert norm.args[5] is True and norm.args[7] == 1e-3
        add = next(
            node for node in prepared.graph.nodes if node.target == aten.add.Tensor and node.args[1] == 1e-3
        )
        assert add.args[0].target.endswith("running_var")
    (norm,) = batch_norms(prepare_qat_pt2e(graph_module, symmetric(qat=True)))
    assert norm.args[6] == 0.3


class WeightFirst(Quantizer):
    """Annotates a conv's weight before its input; torchao then swaps the two specs."""

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        specs = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        for node in model.graph.find_nodes(op="call_function", target=aten.conv2d.default):
            x, weight = node.args[0], node.args[1]
            node.meta[ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map={weight: specs.weight, x: specs.input_activation}, _annotated=True
            )
        for node in model.graph.find_nodes(op="call_function", target=BATCH_NORM):
            node.meta[ANNOTATION_KEY] = QuantizationAnnotation(
                output_qspec=specs.output_activation, _annotated=True
            )
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        return None


def test_specs_move_with_the_weight_whatever_order_the_quantizer_wrote_them_in():
    graph_module, _ = conv_bn()
    prepared = prepared_qat(graph_module, WeightFirst(), stop_after="fuse-conv-bn").graph_module
    (norm,) = batch_norms(prepared)
    simulation = find_simulation(norm)
    assert isinstance(simulation, Simulation)
    inputs = annotation_of(simulation.layer).input_qspec_map
    specs = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    assert inputs == {
        simulation.scaled_weight: specs.weight,
        simulation.layer.args[0]: specs.input_activation,
    }


class DerivedBias(Quantizer):
    """Quantizes the conv bias with scale input_scale * weight_scale, and shares the relu's output with bn's."""

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        specs = get_symmetric_quantization_config(is_per_channel=False, is_qat=True)
        for conv in model.graph.find_nodes(op="call_function", target=aten.conv2d.default):
            x, weight, bias = conv.args[:3]

            def derive(observers):
                (input_scale, _), (weight_scale, _) = (observer.calculate_qparams() for observer in observers)
                return input_scale * weight_scale, torch.zeros_like(input_scale, dtype=torch.int32)

            bias_spec = DerivedQuantizationSpec(
                derived_from=[(x, conv), (weight, conv)],
                derive_qparams_fn=derive,
                dtype=torch.int32,
                quant_min=-(2**31),
                quant_max=2**31 - 1,
                qscheme=torch.per_tensor_symmetric,
            )
            conv.meta[ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map={x: specs.input_activation, weight: specs.weight, bias: bias_spec},
                _annotated=True,
            )
            (norm,) = conv.users
            norm.meta[ANNOTATION_KEY] = QuantizationAnnotation(
                output_qspec=specs.output_activation, _annotated=True
            )
            (relu,) = norm.users
            relu.meta[ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map={norm: SharedQuantizationSpec(norm)},
                output_qspec=SharedQuantizationSpec((norm, relu)),
                _annotated=True,
            )
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        return None


def test_derived_and_shared_specs_follow_the_moved_edges_and_a_quantized_bias_folds():
    graph_module, x = conv_bn()
    prepared = prepared_qat(
        copy.deepcopy(graph_module), DerivedBias(), stop_after="fuse-conv-bn"
    ).graph_module
    (norm,) = batch_norms(prepared)
    simulation = find_simulation(norm)
    assert isinstance(simulation, Simulation)
    bias_spec = annotation_of(simulation.layer).input_qspec_map[simulation.zero_bias]
    assert bias_spec.derived_from == [
        (simulation.layer.args[0], simulation.layer),
        (simulation.scaled_weight, simulation.layer),
    ]
    ours = prepare_qat_pt2e(copy.deepcopy(graph_module), DerivedBias())
    reference = torchao_prepare_qat(copy.deepcopy(graph_module), DerivedBias())
    assert torch.equal(torch.stack(train(ours, x.shape)), torch.stack(train(reference, x.shape)))
    move_exported_model_to_eval(ours)
    torchao_to_eval(reference)
    converted = convert_pt2e(ours)
    assert_same_quantized(converted, torchao_convert(reference), (x,), qparam_matching="graph-order")
    assert sum(node.args[-1] == torch.int32 for node in converted.graph.nodes if ops.is_dequantize(node)) == 1


@pytest.mark.parametrize(
    ("model", "shape", "reason"),
    [
        (ConvReadTwice(), (2, 4, 6, 6), "also feeds add"),
        (
            LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
            (2, 3, 8, 8),
            "no running statistics",
        ),
        (LayerNorm(nn.Linear(8, 4), nn.BatchNorm1d(6)), (2, 6, 8), "3-D"),
    ],
    ids=["conv-read-twice", "no-running-stats", "linear-3d"],
)
def test_pairs_that_cannot_be_folded_are_left_alone_and_say_why(model, shape, reason):
    graph_module = export(seeded(model), torch.randn(*shape))
    result = prepared_qat(graph_module, symmetric(qat=True))
    (norm,) = batch_norms(result.graph_module)
    assert find_simulation(norm) is None
    assert reason in norm.meta[QAT_BATCH_NORM]["declined"]
    assert any(reason in event.get("message", "") for event in result.audit.select(stage="fuse-conv-bn"))


def test_a_quantized_layer_output_is_not_fused_over():
    graph_module, _ = conv_bn(bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_qat=False))
    module = prepared_qat(graph_module, quantizer, stop_after="fuse-conv-bn").graph_module
    (norm,) = batch_norms(module)
    assert "quantizes the output of conv2d" in norm.meta[QAT_BATCH_NORM]["declined"]


def test_a_ptq_run_leaves_batch_norms_to_fold_bn():
    model = seeded(LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    result = Pipeline.default().prepare(
        export(model, torch.randn(2, 3, 8, 8), train=False), quantizer=symmetric()
    )
    assert result.report["fuse-conv-bn"].changed is False
    assert not batch_norms(result.graph_module)


def test_the_callers_model_is_not_touched_by_prepare_or_convert():
    graph_module, x = conv_bn()
    before = str(graph_module.graph)
    prepared = prepare_qat_pt2e(graph_module, symmetric(qat=True))
    assert str(graph_module.graph) == before
    move_exported_model_to_eval(prepared)
    prepared_graph = str(prepared.graph)
    with torch.no_grad():
        prepared(x)
    convert_pt2e(prepared)
    assert str(prepared.graph) == prepared_graph
    with torch.no_grad():
        prepared(x)


# fold-conv-bn ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "shape", "quantized"),
    [
        (LayerNorm(nn.Conv2d(3, 4, 3, padding="same"), nn.BatchNorm2d(4)), (2, 3, 8, 8), 1),
        (LayerNorm(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4)), (2, 3, 5, 5, 5), 0),
        (LayerNorm(nn.Linear(8, 5), nn.BatchNorm1d(5)), (4, 8), 1),
        (LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)), (2, 3, 8, 8), 1),
        (LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), (2, 3, 8, 8), 1),
        (LayerNorm(nn.Conv1d(3, 4, 3, bias=False), nn.BatchNorm1d(4)), (2, 3, 9), 1),
        (SharedConv(), (2, 4, 6, 6), 2),
    ],
    ids=[
        "padding-same",
        "conv3d",
        "linear-bn1d",
        "eps-momentum",
        "affine-false",
        "conv1d-no-bias",
        "shared-weight",
    ],
)
def test_forms_torchao_cannot_fold_fold_here_keeping_the_quantized_numerics(model, shape, quantized):
    graph_module = export(seeded(model), torch.randn(*shape))
    prepared, result = qat_flow(graph_module, symmetric(qat=True), shape)
    converted = result.graph_module
    assert not batch_norms(converted)
    weights = [
        node for node in converted.graph.nodes if ops.is_dequantize(node) and node.args[0].op == "get_attr"
    ]
    assert len(weights) == quantized
    x = torch.randn(*shape)
    with torch.no_grad():
        got = converted(x)
    expected = unfolded_reference(prepared, x)
    if quantized:
        assert (got - expected).abs().max().item() <= output_step(converted) * 1.0001
    else:
        torch.testing.assert_close(got, expected)


def test_a_grouped_transposed_conv_folds_per_group():
    model = seeded(LayerNorm(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)))
    shape = (2, 4, 5, 5)
    graph_module = export(model, torch.randn(*shape))
    prepared, result = qat_flow(graph_module, xnnpack(per_channel=False), shape)
    converted = result.graph_module
    assert not batch_norms(converted)
    x = torch.randn(*shape)
    with torch.no_grad():
        difference = (converted(x) - unfolded_reference(prepared, x)).abs().max().item()
    assert difference <= output_step(converted) * 1.0001


def test_a_weight_read_twice_gets_a_folded_copy_per_read():
    graph_module = export(seeded(SharedConv()), torch.randn(2, 4, 6, 6))
    prepared = prepare_qat_pt2e(graph_module, symmetric(qat=True))
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        prepared(torch.randn(2, 4, 6, 6))
    converted = Pipeline.default().convert(prepared, skip=["fold-quantize"]).graph_module
    reads = [
        node.target for node in converted.graph.find_nodes(op="get_attr") if "conv.weight" in node.target
    ]
    assert sorted(reads) == ["conv.weight", "conv.weight_folded"]
    assert not torch.equal(
        converted.get_parameter("conv.weight"), converted.get_parameter("conv.weight_folded")
    )


def test_a_model_prepared_by_torchao_converts_here_as_torchao_converts_it():
    graph_module, x = conv_bn(bias=False)
    prepared = torchao_prepare_qat(graph_module, xnnpack())
    train(prepared, x.shape)
    torchao_to_eval(prepared)
    ours = convert_pt2e(copy.deepcopy(prepared))
    assert not batch_norms(ours)
    assert_same_quantized(ours, torchao_convert(prepared), (x,), qparam_matching="graph-order")


def test_fold_reads_the_folded_weight_with_the_qparams_learned_in_training():
    graph_module, x = conv_bn()
    prepared, result = qat_flow(graph_module, symmetric(qat=True), x.shape, skip=["fold-quantize"])
    converted = result.graph_module
    (conv,) = converted.graph.find_nodes(op="call_function", target=aten.conv2d.default)
    dequantize = conv.args[1]
    quantize = dequantize.args[0]
    assert quantize.args[0].op == "get_attr"
    (norm,) = batch_norms(prepared)
    eps = norm.args[7]
    gamma, var = prepared.get_parameter("bn.weight"), prepared.get_buffer("bn.running_var")
    expected = prepared.get_parameter("layer.weight") * (gamma * torch.rsqrt(var + eps)).reshape(-1, 1, 1, 1)
    assert torch.equal(converted.get_parameter(quantize.args[0].target), expected)
    fake_quant = next(
        m
        for m in prepared.modules()
        if getattr(m, "ch_axis", None) == 0 and m.qscheme == torch.per_channel_symmetric
    )
    scale, _ = fake_quant.calculate_qparams()
    assert torch.equal(converted.get_buffer(quantize.args[1].target), scale)


def test_batch_norm_counters_are_dropped_as_torchao_does_or_for_every_folded_norm():
    shape = (2, 3, 9)
    graph_module = export(seeded(LayerNorm(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4))), torch.randn(*shape))
    _, torchao_like = qat_flow(copy.deepcopy(graph_module), xnnpack(), shape)
    assert op_multiset(torchao_like.graph_module)["aten.add_.Tensor"] == 1
    pipeline = Pipeline.default(stage_options={"fold-conv-bn": {"drop_counters": "folded"}})
    prepared = pipeline.prepare(graph_module, quantizer=xnnpack(), is_qat=True).graph_module
    train(prepared, shape)
    folded = pipeline.convert(prepared).graph_module
    assert op_multiset(folded)["aten.add_.Tensor"] == 0
    with pytest.raises(ValueError, match="drop_counters"):
        FoldConvBatchNorm(drop_counters="all")


def test_a_batch_norm_that_could_not_be_folded_is_a_violation_naming_it():
    shape = (2, 4, 6, 6)
    graph_module = export(seeded(ConvReadTwice()), torch.randn(*shape))
    prepared = prepare_qat_pt2e(graph_module, symmetric(qat=True))
    train(prepared, shape)
    with pytest.raises(ConditionViolationError) as caught:
        Pipeline.default().convert(prepared)
    assert caught.value.condition == "no_batch_norm_after_fold"
    (violation,) = caught.value.violations
    assert violation.node.name == "batch_norm" and "also feeds add" in violation.message
    with pytest.warns(UserWarning, match="no_batch_norm_after_fold"):
        result = Pipeline.default().convert(prepared, check="warn")
    assert len(batch_norms(result.graph_module)) == 1
    assert no_batch_norm_after_fold.check(result.graph_module)


def test_folding_is_on_record_node_by_node():
    graph_module, x = conv_bn()
    prepared = prepared_qat(graph_module, symmetric(qat=True))
    fused = [
        event for event in prepared.audit.select(stage="fuse-conv-bn") if event["event"] == "node.created"
    ]
    assert {tuple(event["sources"]) for event in fused} == {("conv2d", "batch_norm")}
    assert len(fused) == 10
    module = prepared.graph_module
    train(module, x.shape)
    converted = Pipeline.default().convert(module)
    events = converted.audit.select(stage="fold-conv-bn")
    erased = {event["node"] for event in events if event["event"] == "node.erased"}
    assert "batch_norm" in erased and "mul" in " ".join(erased)
    assert any("folded batch_norm into conv2d" in event.get("message", "") for event in events)


def test_fold_simulations_is_usable_on_its_own():
    graph_module, x = conv_bn()
    fuse_conv_batch_norms(graph_module)
    with torch.no_grad():
        graph_module(x)
    move_exported_model_to_eval(graph_module)
    with torch.no_grad():
        expected = graph_module(x)
    (folded,) = fold_simulations(graph_module)
    assert (folded.batch_norm, folded.layer, folded.new_bias) == ("batch_norm", "conv2d", False)
    assert not batch_norms(graph_module)
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), expected)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (2, 3, 6, 6)),
        (LayerNorm(nn.Conv1d(3, 4, 3, bias=False), nn.BatchNorm1d(4)), (2, 3, 8)),
        (LayerNorm(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (2, 4, 5, 5)),
        (LayerNorm(nn.Linear(5, 3), nn.BatchNorm1d(3)), (4, 5)),
        (LayerNorm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), (2, 3, 6, 6)),
    ],
    ids=["conv2d", "conv1d-no-bias", "grouped-conv-transpose", "linear", "no-affine"],
)
def test_the_fake_values_of_new_nodes_are_what_running_them_gives(model, shape):
    """Values shared or built without a dispatch match a fake run of each node, and the real model."""
    graph_module = export(seeded(model), torch.randn(*shape))
    (simulation,) = fuse_conv_batch_norms(graph_module)
    created = [*simulation.helpers, simulation.scaled_weight, simulation.zero_bias]
    checked = 0
    for node in filter(None, created):
        inputs = [argument.meta["val"] for argument in node.all_input_nodes]
        with inputs[0].fake_mode:
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
            expected = node.target(*args, **kwargs)
        value = node.meta["val"]
        assert (value.shape, value.stride(), value.dtype, value.device) == (
            expected.shape,
            expected.stride(),
            expected.dtype,
            expected.device,
        ), node.name
        checked += 1
    assert checked >= 7
    x = torch.randn(*shape)
    with torch.no_grad():
        assert graph_module(x).shape == simulation.batch_norm.meta["val"].shape


# train / eval ---------------------------------------------------------------------------------


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.2)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.conv(x)))


def flags(graph_module: torch.fx.GraphModule) -> list[tuple[str, tuple]]:
    return [
        (str(node.target), node.args[1:])
        for node in graph_module.graph.nodes
        if node.target in (BATCH_NORM, aten.dropout.default)
    ]


def test_train_and_eval_switch_only_the_flags():
    graph_module = export(seeded(WithDropout()), torch.randn(2, 3, 8, 8))
    move_exported_model_to_eval(graph_module)
    (norm, drop) = flags(graph_module)
    assert norm[1][4:7] == (False, 0.2, 1e-3) and drop[1] == (0.2, False)
    assert getattr(graph_module, TRAINING_ATTRIBUTE) is False
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(graph_module(x), graph_module(x))
    move_exported_model_to_train(graph_module)
    (norm, drop) = flags(graph_module)
    assert norm[1][4:7] == (True, 0.2, 1e-3) and drop[1] == (0.2, True)


def test_allow_train_eval_makes_the_module_methods_switch():
    graph_module = export(seeded(WithDropout()), torch.randn(2, 3, 8, 8))
    with pytest.raises(NotImplementedError):
        graph_module.eval()
    allow_exported_model_train_eval(graph_module)
    graph_module.eval()
    assert flags(graph_module)[0][1][4] is False
    graph_module.train()
    assert flags(graph_module)[0][1][4] is True
