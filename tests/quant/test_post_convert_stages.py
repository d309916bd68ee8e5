"""duplicate-dq, port-metadata, fold-quantize: torchao's DuplicateDQPass, PortNodeMetaForQDQ and constant_fold, bit for bit.

Both sides start from the same raw Q/DQ graph: torchao's ``prepare_pt2e``,
calibration, then ``_convert_to_reference_decomposed_fx`` (loop bodies first,
as ``convert_pt2e`` does), i.e. the graph before the three passes. Ours runs
the three stages through the engine, which works on a private copy; torchao's
passes then run on the raw graph itself (bodies first, as ``convert_pt2e``).
Not on a deepcopy: a deepcopy shares the annotation objects, whose
``input_qspec_map`` keys stay the original graph's nodes, so
``PortNodeMetaForQDQ`` would find no input of the copy and write the
dynamic-quantization metadata into the original graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.infra.pass_manager import PassManager
from torchao.quantization.granularity import PerTensor
from torchao.quantization.pt2e._affine_quantization import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
)
from torchao.quantization.pt2e.constant_fold import constant_fold
from torchao.quantization.pt2e.convert import _convert_to_reference_decomposed_fx
from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer
from torchao.quantization.pt2e.quantizer.duplicate_dq_pass import DuplicateDQPass
from torchao.quantization.pt2e.quantizer.port_metadata_pass import PortNodeMetaForQDQ
from torchao.quantization.quant_primitives import MappingType
from torchao.testing.pt2e._xnnpack_quantizer import get_symmetric_quantization_config
from torchao.testing.pt2e._xnnpack_quantizer_utils import OP_TO_ANNOTATOR
from zoo.compare import assert_same_quantized, is_qdq_node, qdq_key, quantized_differences, walk_nodes
from zoo.models import CASES, SeedObsSharingOps, SeedSharedDQ, ZooCase
from zoo.quantizers import applicable_configs, make_quantizer

from pipeline import Pipeline, RunResult, Violation, condition, hookimpl
from pipeline.copying import private_copy
from plugins import ops
from plugins.duplicate_dq import DUPLICATED_OPS, DuplicateDequantize, dq_duplicated
from plugins.fold_quantize import UNKNOWN, ConstantCones, FoldQuantize, unreferenced_tensors, weights_folded
from plugins.port_metadata import PortMetadata, qdq_metadata_ported
from plugins.subgraphs import loop_bodies, quantizable_graph_modules

Batch = tuple[torch.Tensor, ...]


@condition("quantized", "stand-in: the graphs under test come from torchao's convert")
def quantized(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    return [] if graph_module is not None else [Violation("there is no graph")]


@attrs.frozen
class PostConvertPlugin:
    """The three stages under test and their conditions, nothing else."""

    @hookimpl
    def pt2e_pipeline_stages(self) -> Sequence[Any]:
        return [DuplicateDequantize(), PortMetadata(), FoldQuantize()]

    @hookimpl
    def pt2e_pipeline_conditions(self) -> Sequence[Any]:
        return [quantized, dq_duplicated, qdq_metadata_ported, weights_folded]


PIPELINE = Pipeline(plugins=[PostConvertPlugin()], assumes=("quantized",))


def raw_converted(
    model: nn.Module, quantizer: Quantizer, batches: Sequence[Batch], dynamic_shapes: Any = None
) -> torch.fx.GraphModule:
    """torchao's graph right before DuplicateDQPass: prepare, calibrate, reference-decomposed convert."""
    exported = torch.export.export(model, batches[0], dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return _to_reference(prepared)


def _to_reference(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    for name, body in list(loop_bodies(graph_module)):
        setattr(graph_module, name, _to_reference(body))
    return _convert_to_reference_decomposed_fx(graph_module)


def torchao_finish(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """convert_pt2e's steps after the reference conversion, in place, loop bodies first."""
    for name, body in list(loop_bodies(graph_module)):
        setattr(graph_module, name, torchao_finish(body))
    graph_module = PassManager([DuplicateDQPass()])(graph_module).graph_module
    graph_module = PassManager([PortNodeMetaForQDQ()])(graph_module).graph_module
    constant_fold(graph_module, _quant_node_constraint)
    return graph_module


@attrs.frozen
class Converted:
    ours: RunResult
    reference: torch.fx.GraphModule


def run_both(raw: torch.fx.GraphModule) -> Converted:
    ours = PIPELINE.run(raw, phases=("convert",))
    return Converted(ours, torchao_finish(raw))


@functools.cache
def zoo_converted(case_name: str, config: str) -> Converted:
    case = CASES[case_name]
    batches = case.calibration_batches(2, seed=1)
    raw = raw_converted(case.factory(), make_quantizer(config), batches, case.dynamic_shapes)
    return run_both(raw)


PAIRS = [
    pytest.param(case, config, id=f"{case.name}-{config}")
    for case in CASES.values()
    for config in applicable_configs(case)
]


def qdq_nodes(graph_module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for _, _, node in walk_nodes(graph_module) if is_qdq_node(node)]


def ported(graph_module: torch.fx.GraphModule, keys: Sequence[str]) -> dict[Any, list[tuple[Any, ...]]]:
    """Each Q/DQ node's metadata under ``keys``, grouped by what the node connects."""
    found: dict[Any, list[tuple[Any, ...]]] = {}
    for location, owner, node in walk_nodes(graph_module):
        if is_qdq_node(node):
            values = tuple(node.meta.get(key) for key in keys)
            found.setdefault(qdq_key(location, owner, node), []).append(values)
    return found


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    unique = {id(tensor): tensor for tensor in tensors}
    return sum(tensor.numel() * tensor.element_size() for tensor in unique.values())


def held_tensors(graph_module: torch.nn.Module) -> list[torch.Tensor]:
    held = []
    for module in graph_module.modules():
        for value in (*module._parameters.values(), *module._buffers.values(), *vars(module).values()):
            if isinstance(value, torch.Tensor):
                held.append(value)
    return held


def fetch(module: torch.nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


# --- the zoo against torchao ----------------------------------------------------------------------


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_matches_torchao(case: ZooCase, config: str) -> None:
    converted = zoo_converted(case.name, config)
    assert_same_quantized(converted.ours.graph_module, converted.reference, case.example_inputs)


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_ports_torchao_metadata_and_the_module_stack(case: ZooCase, config: str) -> None:
    converted = zoo_converted(case.name, config)
    ours = converted.ours.graph_module
    keys = ("stack_trace", "quantization_tag")
    assert ported(ours, keys) == ported(converted.reference, keys)
    for node in qdq_nodes(ours):
        if "stack_trace" in node.meta:
            assert isinstance(node.meta.get("nn_module_stack"), dict), node.name
    assert qdq_metadata_ported.check(ours) == []


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_holds_no_fp32_copy_of_a_folded_weight(case: ZooCase, config: str) -> None:
    converted = zoo_converted(case.name, config)
    ours, reference = converted.ours.graph_module, converted.reference
    left_behind = []
    for path, module in quantizable_graph_modules(ours):
        assert unreferenced_tensors(module) == [], path
    for path, module in quantizable_graph_modules(reference):
        for dotted in unreferenced_tensors(module):
            left_behind.append(fetch(module, dotted))
            assert not hasattr(fetch(ours, path) if path else ours, dotted)
    expected = tensor_bytes(held_tensors(reference)) - tensor_bytes(left_behind)
    assert tensor_bytes(held_tensors(ours)) == expected
    assert weights_folded.check(ours) == []


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_weight_dequantize_sits_right_before_its_consumer(case: ZooCase, config: str) -> None:
    for _, module in quantizable_graph_modules(zoo_converted(case.name, config).ours.graph_module):
        order = {node: index for index, node in enumerate(module.graph.nodes)}
        nodes = list(module.graph.nodes)
        for buffer in module.graph.find_nodes(op="get_attr"):
            if not str(buffer.target).startswith("_frozen_param"):
                continue
            for dequantize in buffer.users:
                first = min(dequantize.users, key=order.__getitem__)
                between = nodes[order[dequantize] + 1 : order[first]]
                assert all(_is_weight_read(node) for node in between), (dequantize.name, between)
            first = min(buffer.users, key=order.__getitem__)
            assert all(node.op == "get_attr" for node in nodes[order[buffer] + 1 : order[first]])


def _is_weight_read(node: torch.fx.Node) -> bool:
    return node.op == "get_attr" or (
        ops.is_dequantize(node) and all(item.op == "get_attr" for item in node.all_input_nodes)
    )


def test_torchao_keeps_weight_dequantize_nodes_at_the_top_and_ours_does_not() -> None:
    converted = zoo_converted("residual_cnn", "xnnpack-per-channel")

    def distance(graph_module: torch.fx.GraphModule) -> int:
        order = {node: index for index, node in enumerate(graph_module.graph.nodes)}
        return max(
            min(order[user] for user in node.users) - order[node]
            for node in graph_module.graph.nodes
            if ops.is_dequantize(node) and node.args[0].op == "get_attr"
        )

    assert distance(converted.ours.graph_module) == 1
    assert distance(converted.reference) > 10


# --- duplicate-dq ---------------------------------------------------------------------------------


class SeedBackendQuantizer(Quantizer):
    """The seed test's BackendAQuantizer: XNNPACK's per-channel annotators for the given ops only."""

    def __init__(self, operators: Sequence[str]) -> None:
        super().__init__()
        self.operators = operators

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        config = get_symmetric_quantization_config(is_per_channel=True)
        for operator in self.operators:
            OP_TO_ANNOTATOR[operator](model, config)
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        pass


SEED_CASES = {
    "no_need_for_duplicate_dq": (SeedObsSharingOps, ("linear", "conv", "adaptive_avg_pool2d")),
    "simple_duplicate_dq": (SeedSharedDQ, ("linear", "conv", "add")),
    "no_add_quant_duplicate_dq": (SeedSharedDQ, ("linear", "conv")),
}


@pytest.mark.parametrize("name", SEED_CASES)
def test_seed_duplicate_dq_cases(name: str) -> None:
    model_class, operators = SEED_CASES[name]
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 5, 7),)
    raw = raw_converted(model_class().eval(), SeedBackendQuantizer(operators), [example])
    converted = run_both(raw)
    ours = converted.ours.graph_module
    for node in ours.graph.nodes:
        if node.meta.get("quantization_annotation") is None:
            continue
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and ops.is_call(arg, DUPLICATED_OPS):
                assert len(arg.users) == 1, (node.name, arg.name)
    assert_same_quantized(ours, converted.reference, example)


def _statuses(result: RunResult) -> dict[str, tuple[str, str | None]]:
    return {stage.name: (stage.status, stage.reason) for stage in result.report.stages}


def test_duplicate_dq_is_skipped_when_no_dequantize_is_shared_and_nothing_is_unused() -> None:
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 5, 7),)
    raw = raw_converted(
        SeedObsSharingOps().eval(), SeedBackendQuantizer(SEED_CASES["no_need_for_duplicate_dq"][1]), [example]
    )
    converted = run_both(raw)
    assert _statuses(converted.ours)["duplicate-dq"] == (
        "skipped",
        "no dequantize node has more than one user, and no node is unused",
    )
    assert _statuses(converted.ours)["fold-quantize"][0] == "ran"
    assert_same_quantized(converted.ours.graph_module, converted.reference, example)


def test_duplicate_dq_still_runs_to_erase_unused_nodes_as_torchaos_pass_does() -> None:
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 5, 7),)
    raw = raw_converted(
        SeedObsSharingOps().eval(), SeedBackendQuantizer(SEED_CASES["no_need_for_duplicate_dq"][1]), [example]
    )
    placeholder = next(iter(raw.graph.find_nodes(op="placeholder")))
    with raw.graph.inserting_after(placeholder):
        raw.graph.call_function(torch.ops.aten.relu.default, (placeholder,))
    raw.recompile()
    converted = run_both(raw)
    assert _statuses(converted.ours)["duplicate-dq"] == ("ran", None)
    assert not converted.ours.graph_module.graph.find_nodes(
        op="call_function", target=torch.ops.aten.relu.default
    )
    assert_same_quantized(converted.ours.graph_module, converted.reference, example)


def test_duplicated_dequantize_nodes_come_from_the_original_and_carry_their_consumer() -> None:
    converted = zoo_converted("seed_shared_dq", "xnnpack-per-channel")
    ours, audit = converted.ours.graph_module, converted.ours.audit
    assert audit is not None
    shared = next(node for node in ours.graph.nodes if node.name == "quantize_per_tensor_default_1")
    consumers = {next(iter(duplicate.users)).name: duplicate for duplicate in shared.users}
    assert sorted(consumers) == ["add", "conv2d_1", "mul", "view"]
    for consumer, dequantize in consumers.items():
        origin = audit.origin(dequantize.name)
        assert (origin.stage, origin.sources) == ("duplicate-dq", ("dequantize_per_tensor_default_1",))
        user = next(node for node in ours.graph.nodes if node.name == consumer)
        assert dequantize.meta["nn_module_stack"] == user.meta["nn_module_stack"]
        assert dequantize.meta["stack_trace"] == user.meta["stack_trace"]


def test_dynamic_dequantize_stays_shared() -> None:
    ours = zoo_converted("transformer_block", "xnnpack-dynamic").ours.graph_module
    shared = [
        node
        for node in ours.graph.nodes
        if node.target == ops.DEQUANTIZE_PER_TENSOR_TENSOR and len(node.users) > 1
    ]
    assert [sorted(user.name for user in node.users) for node in shared] == [
        ["linear", "linear_1", "linear_2"]
    ]
    assert dq_duplicated.check(ours) == []


class SharedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.conv2(y) + y


class AffineQuantizer(Quantizer):
    """Quantizes conv1's output, read by conv2 and add, with torchao's affine observers."""

    def __init__(self, dynamic: bool) -> None:
        super().__init__()
        observer = AffineQuantizedPlaceholderObserver if dynamic else AffineQuantizedMinMaxObserver
        options = {"is_dynamic": True} if dynamic else {}
        self.dynamic = dynamic
        self.spec = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_affine,
            is_dynamic=dynamic,
            observer_or_fake_quant_ctr=observer.with_args(
                mapping_type=MappingType.ASYMMETRIC,
                target_dtype=torch.int8,
                granularity=PerTensor(),
                eps=torch.finfo(torch.float32).eps,
                scale_dtype=torch.float32,
                zero_point_dtype=torch.int32,
                **options,
            ),
        )

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        graph = model.graph
        first, second = graph.find_nodes(op="call_function", target=torch.ops.aten.conv2d.default)
        (add,) = graph.find_nodes(op="call_function", target=torch.ops.aten.add.Tensor)
        if not self.dynamic:
            first.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=self.spec)
        for consumer in (second, add):
            consumer.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={first: self.spec}
            )
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        pass


def affine_converted(dynamic: bool) -> tuple[Converted, Batch]:
    torch.manual_seed(0)
    batches = [(torch.randn(1, 3, 8, 8),), (torch.randn(1, 3, 8, 8),)]
    raw = raw_converted(SharedActivation().eval(), AffineQuantizer(dynamic), batches)
    return run_both(raw), batches[0]


def _affine_dequantize_users(graph_module: torch.fx.GraphModule) -> list[list[str]]:
    return [
        sorted(user.name for user in node.users)
        for node in graph_module.graph.nodes
        if ops.is_call(node, frozenset({ops.DEQUANTIZE_AFFINE}))
    ]


def test_dequantize_affine_is_duplicated_where_torchao_forgets_it() -> None:
    converted, example = affine_converted(dynamic=False)
    ours, reference = converted.ours.graph_module, converted.reference
    assert _affine_dequantize_users(reference) == [["add", "conv2d_1"]]
    assert sorted(_affine_dequantize_users(ours)) == [["add"], ["conv2d_1"]]
    assert dq_duplicated.check(ours) == []
    assert [violation.node.name for violation in dq_duplicated.check(reference)] == ["dequantize_affine"]
    with torch.no_grad():
        assert torch.equal(ours(*example), reference(*example))
    differences = quantized_differences(ours, reference, example)
    assert differences[0] == "operator counts differ (call_function, HOP subgraphs included):"
    assert "dequantize_affine: ours 2, reference 1 (+1)" in differences[1]
    assert not any("Q/DQ" in line or "output" in line for line in differences)


def test_dynamic_dequantize_affine_stays_shared() -> None:
    converted, example = affine_converted(dynamic=True)
    ours = converted.ours.graph_module
    assert _affine_dequantize_users(ours) == [["add", "conv2d_1"]]
    assert dq_duplicated.check(ours) == []
    assert_same_quantized(ours, converted.reference, example)


# --- fold-quantize --------------------------------------------------------------------------------


class ComputedWeight(nn.Module):
    """A linear whose weight is computed from a parameter held in a submodule (dotted name)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Module()
        self.proj.weight = nn.Parameter(torch.randn(8, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.linear(x, self.proj.weight.t().flip(0)))


@pytest.mark.parametrize("config", ["xnnpack-per-channel", "xnnpack-per-tensor"])
def test_folds_a_weight_computed_by_pure_ops_and_drops_its_module(config: str) -> None:
    torch.manual_seed(0)
    batches = [(torch.randn(3, 8),), (torch.randn(3, 8),)]
    converted = run_both(raw_converted(ComputedWeight().eval(), make_quantizer(config), batches))
    ours, reference = converted.ours.graph_module, converted.reference
    assert_same_quantized(ours, reference, batches[0])
    assert hasattr(reference, "proj") and hasattr(reference.head, "weight")
    assert not hasattr(ours, "proj") and not hasattr(ours.head, "weight")
    assert hasattr(ours.head, "bias")
    targets = {node.target for node in ours.graph.nodes if node.op == "call_function"}
    assert torch.ops.aten.t.default not in targets and torch.ops.aten.flip.default not in targets


def test_folded_weight_comes_from_its_quantize_node_and_weight() -> None:
    converted = zoo_converted("mlp", "xnnpack-per-channel")
    audit = converted.ours.audit
    assert audit is not None
    origin = audit.origin("_frozen_param0")
    assert origin.stage == "fold-quantize"
    assert origin.sources == ("quantize_per_channel_default", "fc1_weight")
    node = next(n for n in converted.ours.graph_module.graph.nodes if n.name == "_frozen_param0")
    assert (node.op, node.target) == ("get_attr", "_frozen_param0")
    assert audit.history("quantize_per_channel_default")[-1]["event"] == "node.erased"


def test_constant_cones_evaluate_only_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES["residual_cnn"]
    raw = raw_converted(case.factory(), make_quantizer("x86-static"), case.calibration_batches(1, seed=1))
    evaluated: list[torch.fx.Node] = []
    original: Callable[..., Any] = ConstantCones._run

    def recording(self: ConstantCones, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        evaluated.append(node)
        return original(self, node, args, kwargs)

    monkeypatch.setattr(ConstantCones, "_run", recording)
    cones = ConstantCones(raw)
    quantizers = [node for node in raw.graph.nodes if ops.is_quantize(node)]
    folded = [node for node in quantizers if cones.folds(node)]
    weights = [node for node in quantizers if node.args[0].op == "get_attr"]
    assert folded == weights and len(weights) == 6
    assert all(node.op == "get_attr" or node in weights for node in evaluated)
    assert len(evaluated) == len(set(evaluated))
    activations = [node for node in quantizers if node not in weights]
    assert all(cones.values[node] is UNKNOWN for node in activations)


# --- conditions -----------------------------------------------------------------------------------


@functools.cache
def raw_seed_shared_dq() -> torch.fx.GraphModule:
    case = CASES["seed_shared_dq"]
    batches = case.calibration_batches(2, seed=1)
    return raw_converted(case.factory(), make_quantizer("xnnpack-per-channel"), batches)


def test_conditions_name_what_the_raw_graph_lacks() -> None:
    raw = raw_seed_shared_dq()
    assert [v.node.name for v in dq_duplicated.check(raw)] == ["dequantize_per_tensor_default_1"]
    assert [v.node.name for v in weights_folded.check(raw)] == [
        "quantize_per_channel_default",
        "quantize_per_channel_default_1",
        "quantize_per_channel_default_2",
        "quantize_per_tensor_default_6",
    ]
    unported = {v.node.name for v in qdq_metadata_ported.check(raw)}
    assert {"dequantize_per_tensor_default_1", "quantize_per_tensor_default_1"} <= unported


def test_weights_folded_names_tensors_nobody_reads() -> None:
    ours = private_copy(PIPELINE.run(raw_seed_shared_dq(), phases=("convert",)).graph_module)
    assert weights_folded.check(ours) == []
    ours.register_buffer("stale", torch.zeros(2))
    ours.conv1.register_parameter("old_weight", nn.Parameter(torch.zeros(3)))
    messages = [violation.message for violation in weights_folded.check(ours)]
    assert messages == [
        "tensor attribute 'stale' is read by no node (a weight left behind?)",
        "tensor attribute 'conv1.old_weight' is read by no node (a weight left behind?)",
    ]


def test_metadata_condition_catches_a_wrong_module_stack() -> None:
    ours = private_copy(PIPELINE.run(raw_seed_shared_dq(), phases=("convert",)).graph_module)
    dequantize = next(node for node in ours.graph.nodes if node.name == "dequantize_per_tensor_default_2")
    dequantize.meta["nn_module_stack"] = {}
    (violation,) = qdq_metadata_ported.check(ours)
    assert violation.node is dequantize
    assert violation.message == "nn_module_stack differs from that of linear, which the rules port onto it"


# --- compare.py's order-independent matching ------------------------------------------------------


def test_key_matching_ignores_moves_but_catches_a_perturbed_scale() -> None:
    case = CASES["seed_shared_dq"]
    converted = zoo_converted(case.name, "xnnpack-per-channel")
    ours, reference = converted.ours.graph_module, converted.reference
    assert quantized_differences(ours, reference, case.example_inputs) == []
    moved = quantized_differences(ours, reference, case.example_inputs, qparam_matching="graph-order")
    assert moved[0] == "Q/DQ parameters differ (graph order):"

    literal = private_copy(ours)
    node = next(n for n in literal.graph.nodes if n.name == "dequantize_per_tensor_default_4")
    node.args = (node.args[0], node.args[1] * 1.001, *node.args[2:])
    literal.recompile()
    with pytest.raises(AssertionError, match=r"(?s)matched by what they connect.*\* scale"):
        assert_same_quantized(literal, reference, case.example_inputs)

    buffer = private_copy(ours)
    buffer._scale_1 = buffer._scale_1 * 1.001
    report = quantized_differences(buffer, reference, case.example_inputs)
    assert report[0] == "Q/DQ parameters differ (matched by what they connect):"
    assert any(line.startswith("    * scale") for line in report)
