"""SymmetricQuantizer: XNNPACK-style int8 quantization through an annotator registry.

Three groups: the zoo under static per-channel, static per-tensor and dynamic
configs (quantized where expected, close to float, the same annotations and
the same quantized graph as torchao's XNNPACK test quantizer except for the
documented differences); the duplicate-DQ seed cases on torch.export; and the
registry (a third-party annotator, name clashes, option errors).
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pytest
import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten
from torchao.quantization.pt2e import FakeQuantizeBase
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from zoo.compare import assert_same_quantized
from zoo.models import CASES, Batch, ZooCase
from zoo.quantizers import make_quantizer

from pipeline import PluginError, StageFailedError, hookimpl
from pipeline import pt2e as pipeline_pt2e
from pipeline.registry import Registry
from plugins import ops
from plugins.annotation import ANNOTATION_KEY, annotation_of
from plugins.quantizer import (
    BUILTIN_ANNOTATORS,
    AnnotationContext,
    AnnotationError,
    Annotator,
    SymmetricConfig,
    SymmetricQuantizer,
    Tier,
    builtin_annotators,
    collect_annotators,
    default_annotators,
    write_annotation,
)
from plugins.quantizer import hooks as quantizer_hooks
from plugins.subgraphs import quantizable_graph_modules

# The flow under test is the project's pipeline; QAT preparation stays torchao's until the
# pipeline's QAT conv-bn fusion exists. The torchao *reference* runs call torchao directly.
prepare = pipeline_pt2e.prepare_pt2e
prepare_qat = prepare_qat_pt2e
convert = pipeline_pt2e.convert_pt2e

CONFIGS: dict[str, SymmetricConfig] = {
    "xnnpack-per-channel": SymmetricConfig(per_channel=True),
    "xnnpack-per-tensor": SymmetricConfig(per_channel=False),
    "xnnpack-dynamic": SymmetricConfig(per_channel=True, dynamic=True),
}
"""Our config for each torchao reference config of the zoo (same names)."""

INTENTIONAL_DIFFERENCES: dict[str, frozenset[str]] = {
    # torchao's XNNPACK test quantizer looks cats up by source partition (`torch.cat`), which
    # non-strict torch.export records as the string "cat": it never annotates a cat. We match
    # aten.cat itself, so cat inputs and output share one set of qparams as XNNPACK intends.
    "xnnpack-per-channel": frozenset({"cat"}),
    "xnnpack-per-tensor": frozenset({"cat"}),
    # Dynamic quantization covers conv as well as linear (the project's contract: XNNPACK has
    # dynamically quantized conv kernels); torchao's test copy does linear only.
    "xnnpack-dynamic": frozenset({"conv"}),
}
"""Annotators of ours whose nodes torchao leaves alone; everything else must agree."""

MATRIX = [
    pytest.param(case_name, config_name, id=f"{case_name}-{config_name}")
    for case_name in CASES
    for config_name in CONFIGS
]

WEIGHTED_OPS = frozenset(
    {torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default}
)


# --- running the flows ------------------------------------------------------------------------


@attrs.frozen
class Run:
    """A quantized model and the annotations its prepared form carried."""

    annotations: dict[tuple[str, str], tuple[Any, ...]]
    converted: GraphModule


def _batches(case: ZooCase) -> list[Batch]:
    """Calibrate on the input the outputs are compared on, so no value falls outside the range.

    One batch keeps the whole matrix (about 100 flows) fast; the comparison with
    torchao holds for any calibration data, since both see the same.
    """
    return [case.example_inputs]


@functools.cache
def _exported(case_name: str, train: bool = False) -> GraphModule:
    case = CASES[case_name]
    model = case.factory().train(train)
    return torch.export.export(model, case.example_inputs, dynamic_shapes=case.dynamic_shapes).module()


def _flow(
    graph_module: GraphModule,
    quantizer: Any,
    batches: Iterable[Batch],
    prepare_fn: Callable[[GraphModule, Any], GraphModule],
    convert_fn: Callable[[GraphModule], GraphModule],
) -> Run:
    prepared = prepare_fn(copy.deepcopy(graph_module), quantizer)
    annotations = annotation_summary(prepared)
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return Run(annotations, convert_fn(prepared))


@functools.cache
def _ours(case_name: str, config_name: str, without: frozenset[str] = frozenset()) -> Run:
    annotators = [annotator for annotator in BUILTIN_ANNOTATORS if annotator.name not in without]
    quantizer = SymmetricQuantizer(CONFIGS[config_name], annotators=annotators)
    return _flow(_exported(case_name), quantizer, _batches(CASES[case_name]), prepare, convert)


@functools.cache
def _reference(case_name: str, config_name: str) -> Run:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = make_quantizer(config_name)
    return _flow(_exported(case_name), quantizer, _batches(CASES[case_name]), prepare_pt2e, convert_pt2e)


# --- describing annotations -------------------------------------------------------------------


def annotation_summary(graph_module: GraphModule) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(graph, node) -> (target, output spec, input specs by argument position), shared specs resolved.

    Works on a prepared model: arguments are traced back through the inserted
    observers, and a shared spec is replaced by the spec it resolves to, so two
    quantizers that reach the same qparams by different sharing paths compare equal.
    """
    summary: dict[tuple[str, str], tuple[Any, ...]] = {}
    for location, module in quantizable_graph_modules(graph_module):
        for node in module.graph.nodes:
            annotation = annotation_of(node)
            if annotation is None or not (annotation.input_qspec_map or annotation.output_qspec):
                continue
            arguments = [_before_observers(argument) for argument in node.all_input_nodes]
            inputs = tuple(
                sorted(
                    (arguments.index(argument), _describe(spec))
                    for argument, spec in annotation.input_qspec_map.items()
                    if spec is not None
                )
            )
            summary[(location, node.name)] = (str(node.target), _describe(annotation.output_qspec), inputs)
    return summary


def _before_observers(node: Node) -> Node:
    while node.op == "call_module" and str(node.target).startswith("activation_post_process_"):
        node = node.args[0]
    return node


def _describe(spec: QuantizationSpecBase | None) -> tuple[Any, ...] | None:
    seen: set[Any] = set()
    while isinstance(spec, SharedQuantizationSpec):
        assert spec.edge_or_node not in seen, f"sharing cycle through {spec.edge_or_node}"
        seen.add(spec.edge_or_node)
        target = spec.edge_or_node
        if isinstance(target, Node):
            spec = annotation_of(target).output_qspec
        else:
            producer, consumer = target
            spec = annotation_of(consumer).input_qspec_map[producer]
    if spec is None:
        return None
    if isinstance(spec, QuantizationSpec):
        observer = spec.observer_or_fake_quant_ctr
        observer_name = observer.p.func.__name__ if hasattr(observer, "p") else observer.__name__
        return (
            spec.dtype,
            spec.qscheme,
            spec.quant_min,
            spec.quant_max,
            spec.ch_axis,
            spec.is_dynamic,
            observer_name,
        )
    return (type(spec).__name__, repr(spec))


# --- (a) the zoo ------------------------------------------------------------------------------


def _pattern_output(node: Node) -> Node:
    users = list(node.users)
    if len(users) == 1 and users[0].target in (torch.ops.aten.relu.default, torch.ops.aten.relu_.default):
        return users[0]
    return node


@pytest.mark.parametrize(("case_name", "config_name"), MATRIX)
def test_every_conv_and_linear_is_quantized(case_name: str, config_name: str) -> None:
    converted = _ours(case_name, config_name).converted
    checked = 0
    for location, module in quantizable_graph_modules(converted):
        for node in module.graph.nodes:
            if node.op != "call_function" or node.target not in WEIGHTED_OPS:
                continue
            where = f"{node.name} in graph {location or '<top>'}"
            activation, weight = node.args[0], node.args[1]
            assert ops.is_dequantize(activation), f"{where}: activation is not dequantized"
            assert ops.is_dequantize(weight), f"{where}: weight is not dequantized"
            if CONFIGS[config_name].dynamic:
                scale = activation.args[0].args[1]
                assert ops.is_choose_qparams(scale.args[0]), (
                    f"{where}: activation qparams are not computed at run time"
                )
            else:
                output = _pattern_output(node)
                assert any(ops.is_quantize(user) for user in output.users), (
                    f"{where}: output is not quantized"
                )
            checked += 1
    assert checked, f"{case_name} has no conv or linear to check"


@pytest.mark.parametrize(("case_name", "config_name"), MATRIX)
def test_outputs_stay_within_a_few_quantization_steps(case_name: str, config_name: str) -> None:
    case = CASES[case_name]
    converted = _ours(case_name, config_name).converted
    with torch.no_grad():
        expected = tree_flatten(case.factory()(*case.example_inputs))[0]
        actual = tree_flatten(converted(*case.example_inputs))[0]
    output_nodes = tree_flatten(converted.graph.output_node().args[0])[0]
    for index, (node, want, got) in enumerate(zip(output_nodes, expected, actual, strict=True)):
        if ops.is_dequantize(node):
            steps = ((got - want).abs().max() / node.args[1]).item()
            assert steps <= 4, f"output {index} is {steps:.2f} quantization steps off"
        else:
            relative = ((got - want).norm() / want.norm()).item()
            assert relative <= 0.03, f"float output {index} is {relative:.1%} off"


@pytest.mark.parametrize(("case_name", "config_name"), MATRIX)
def test_annotations_match_xnnpack_except_documented_differences(case_name: str, config_name: str) -> None:
    ours = _ours(case_name, config_name).annotations
    reference = _reference(case_name, config_name).annotations
    assert reference.keys() <= ours.keys(), f"only torchao annotates {sorted(reference.keys() - ours.keys())}"
    allowed = {
        str(op)
        for annotator in builtin_annotators(*INTENTIONAL_DIFFERENCES[config_name])
        for op in annotator.ops
    }
    extra = {key: ours[key][0] for key in ours.keys() - reference.keys()}
    assert all(target in allowed for target in extra.values()), f"unexpected extra annotations {extra}"
    for key, expected in reference.items():
        assert ours[key] == expected, f"{key}: ours {ours[key]}, torchao {expected}"


@pytest.mark.parametrize(("case_name", "config_name"), MATRIX)
def test_bit_identical_to_xnnpack_on_the_shared_op_set(case_name: str, config_name: str) -> None:
    """Without the annotators torchao lacks, the quantized graph is torchao's, qparams and outputs exact."""
    differs = (
        _ours(case_name, config_name).annotations.keys()
        != _reference(case_name, config_name).annotations.keys()
    )
    without = INTENTIONAL_DIFFERENCES[config_name] if differs else frozenset()
    ours = _ours(case_name, config_name, without)
    assert ours.annotations.keys() == _reference(case_name, config_name).annotations.keys()
    with torch.no_grad():
        assert_same_quantized(
            ours.converted, _reference(case_name, config_name).converted, CASES[case_name].example_inputs
        )


def test_qat_annotates_like_xnnpack_qat_and_trains() -> None:
    """conv-bn-relu stem, conv-bn + add-relu blocks, pooled linear head, exported in training mode.

    Annotations are compared before torchao's QAT conv-bn rewrite, which both
    flows then apply alike; converting a QAT model is the converter's business
    (and torchao's conv-bn folding takes seconds), so the test stops at a
    training step through the fake-quantized graph.
    """
    case = CASES["residual_cnn"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        )
    quantizer = SymmetricQuantizer(SymmetricConfig(qat=True))
    assert quantizer.is_qat
    summaries = []
    for each in (reference_quantizer, quantizer):
        graph_module = each.transform_for_annotation(copy.deepcopy(_exported(case.name, train=True)))
        each.annotate(graph_module)
        summaries.append(annotation_summary(graph_module))
    assert summaries[1] == summaries[0]
    assert {target for target, *_ in summaries[1].values()} >= {
        "aten.batch_norm.default",
        "aten.relu.default",
    }
    prepared = prepare_qat(copy.deepcopy(_exported(case.name, train=True)), quantizer)
    prepared(*case.example_inputs).sum().backward()
    fake_quantizers = [module for module in prepared.modules() if isinstance(module, FakeQuantizeBase)]
    assert len(fake_quantizers) >= 10
    assert all(module.scale.numel() >= 1 for module in fake_quantizers)


# --- (b) the duplicate-DQ seed, on torch.export ----------------------------------------------


def _assert_each_annotated_consumer_has_its_own_dq(model: nn.Module, quantizer: SymmetricQuantizer) -> None:
    """The seed's check: after convert, a dequantize feeding an annotated node feeds nothing else."""
    example_inputs = (torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(0)),)
    graph_module = torch.export.export(model.eval(), example_inputs).module()
    prepared = prepare(graph_module, quantizer)
    prepared(*example_inputs)
    converted = convert(prepared)
    converted(*example_inputs)
    checked = 0
    for node in converted.graph.nodes:
        if node.meta.get(ANNOTATION_KEY) is None:
            continue
        for argument in node.args:
            if ops.is_dequantize(argument):
                assert len(argument.users) == 1, (
                    f"{argument.name} feeds {sorted(u.name for u in argument.users)}"
                )
                checked += 1
    assert checked, "no annotated node reads a dequantize"


def test_seed_no_need_for_duplicate_dq() -> None:
    """conv -> adaptive_avg_pool2d -> hardtanh -> view -> linear: nothing to duplicate."""
    quantizer = SymmetricQuantizer(
        SymmetricConfig(per_channel=True),
        annotators=builtin_annotators("linear", "conv", "adaptive_avg_pool2d"),
    )
    _assert_each_annotated_consumer_has_its_own_dq(CASES["seed_obs_sharing_ops"].factory(), quantizer)


def test_seed_simple_duplicate_dq() -> None:
    """conv1's output feeds conv2, an add and view+linear, all quantized: one DQ each."""
    quantizer = SymmetricQuantizer(
        SymmetricConfig(per_channel=True), annotators=builtin_annotators("linear", "conv", "add")
    )
    _assert_each_annotated_consumer_has_its_own_dq(CASES["seed_shared_dq"].factory(), quantizer)


def test_seed_no_add_quant_duplicate_dq() -> None:
    """As above with add and mul left float: only conv2 and view+linear need a DQ of their own."""
    quantizer = SymmetricQuantizer(
        SymmetricConfig(per_channel=True), annotators=builtin_annotators("linear", "conv")
    )
    _assert_each_annotated_consumer_has_its_own_dq(CASES["seed_shared_dq"].factory(), quantizer)


# --- (c) the registry, scopes and errors -------------------------------------------------------

TANH_SPEC = FixedQParamsQuantizationSpec(
    dtype=torch.int8, scale=1 / 128, zero_point=0, quant_min=-128, quant_max=127
)


def _annotate_tanh(node: Node, ctx: AnnotationContext) -> bool:
    """tanh's output lies in [-1, 1]: fixed qparams, no observer needed."""
    producer = node.args[0]
    if not isinstance(producer, Node) or not ctx.can_claim(node):
        return False
    write_annotation(node, {producer: ctx.specs.input_activation}, TANH_SPEC)
    return True


TANH = Annotator("tanh", (torch.ops.aten.tanh.default,), _annotate_tanh)


class TanhPlugin:
    @hookimpl
    def pt2e_pipeline_annotators(self) -> list[Annotator]:
        return [TANH]


class ClashingPlugin:
    @hookimpl
    def pt2e_pipeline_annotators(self) -> list[Annotator]:
        return [Annotator("linear", (torch.ops.aten.linear.default,), _annotate_tanh)]


def _tanh_nodes(converted: GraphModule) -> list[Node]:
    return [node for node in converted.graph.nodes if node.target == torch.ops.aten.tanh.default]


def test_a_third_party_annotator_from_a_plugin_is_used() -> None:
    registry = Registry.hermetic([quantizer_hooks, TanhPlugin()])
    annotators = collect_annotators(registry)
    assert {"tanh", "linear", "cat"} <= {annotator.name for annotator in annotators}
    case = CASES["dynamic_quant_linear"]
    run = _flow(
        _exported(case.name), SymmetricQuantizer(annotators=annotators), _batches(case), prepare, convert
    )
    (tanh,) = _tanh_nodes(run.converted)
    assert ops.is_dequantize(tanh.args[0])
    (quantize,) = [user for user in tanh.users if ops.is_quantize(user)]
    assert (quantize.args[1], quantize.args[2]) == (1 / 128, 0)


def test_an_explicit_annotator_list_is_hermetic() -> None:
    quantizer = SymmetricQuantizer(annotators=builtin_annotators("linear"))
    assert [annotator.name for annotator in quantizer.annotators] == ["linear"]
    graph_module = copy.deepcopy(_exported("dynamic_quant_linear"))
    quantizer.annotate(graph_module)
    (tanh,) = _tanh_nodes(graph_module)
    assert annotation_of(tanh) is None


def test_default_annotators_are_the_builtins_plus_plugins_in_a_fixed_order() -> None:
    with_plugin = default_annotators(Registry.hermetic([quantizer_hooks, TanhPlugin()]))
    assert [annotator.name for annotator in with_plugin] == sorted(
        [annotator.name for annotator in (*BUILTIN_ANNOTATORS, TANH)]
    )
    assert {annotator.name for annotator in default_annotators(Registry.hermetic([]))} == {
        annotator.name for annotator in BUILTIN_ANNOTATORS
    }
    discovered = SymmetricQuantizer().annotators
    assert set(BUILTIN_ANNOTATORS) <= set(discovered)
    assert list(discovered) == sorted(discovered, key=lambda annotator: annotator.sort_key)
    reordered = SymmetricQuantizer(annotators=reversed(BUILTIN_ANNOTATORS)).annotators
    assert reordered == BUILTIN_ANNOTATORS
    assert [annotator.name for annotator in BUILTIN_ANNOTATORS[:4]] == [
        "conv_bn_relu",
        "linear_bn_relu",
        "add_relu",
        "conv_bn",
    ]
    assert BUILTIN_ANNOTATORS[-1].tier is Tier.SHARING


def test_an_annotator_name_clash_names_both_plugins() -> None:
    registry = Registry.hermetic([quantizer_hooks, ClashingPlugin()])
    with pytest.raises(
        PluginError,
        match=r"annotator name 'linear' is declared by two plugins: plugins\.quantizer\.hooks .*and .*ClashingPlugin",
    ):
        collect_annotators(registry)
    with pytest.raises(
        PluginError,
        match=r"'linear' is declared by two plugins: plugins\.quantizer \(built-in annotators\).* and .*ClashingPlugin",
    ):
        default_annotators(Registry.hermetic([ClashingPlugin(), TanhPlugin(), quantizer_hooks]))
    with pytest.raises(ValueError, match="two annotators are named 'tanh'"):
        SymmetricQuantizer(annotators=[TANH, TANH])
    with pytest.raises(
        KeyError, match="no built-in annotator named 'tanh'; the built-ins are adaptive_avg_pool2d, add"
    ):
        builtin_annotators("linear", "tanh")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"per_channel": "yes"}, TypeError, "SymmetricConfig.per_channel must be True or False, got 'yes'"),
        ({"dynamic": 1}, TypeError, "SymmetricConfig.dynamic must be True or False, got 1"),
        (
            {"act_qmin": -200},
            ValueError,
            r"SymmetricConfig.act_qmin must lie in int8's range \[-128, 127\], got -200",
        ),
        (
            {"act_qmin": 10, "act_qmax": 5},
            ValueError,
            r"SymmetricConfig.act_qmax \(5\) must be greater than SymmetricConfig.act_qmin \(10\)",
        ),
        (
            {"weight_qmin": -100},
            ValueError,
            r"SymmetricConfig.weight_qmax \(127\) and SymmetricConfig.weight_qmin \(-100\) do not make a symmetric range",
        ),
        ({"weight_qmax": 1.5}, TypeError, "SymmetricConfig.weight_qmax must be an int, got 1.5"),
    ],
)
def test_a_bad_config_option_names_the_field(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        SymmetricConfig(**options)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"name": "Tanh Op"}, ValueError, "Annotator.name must be a lower-case name"),
        (
            {"ops": torch.ops.aten.tanh},
            TypeError,
            "Annotator.ops must be a sequence of ATen operator overloads, got <OpOverloadPacket",
        ),
        (
            {"ops": [torch.ops.aten.tanh]},
            TypeError,
            r"Annotator.ops holds the operator packet aten.tanh; name its overloads, such as aten.tanh.default",
        ),
        ({"ops": ["tanh"]}, TypeError, "Annotator.ops holds 'tanh', which is not an operator overload"),
        ({"ops": ()}, ValueError, "Annotator.ops is empty"),
        (
            {"modes": {"static"}},
            ValueError,
            r"Annotator.modes must be a non-empty subset of \['dynamic', 'ptq', 'qat'\], got \['static'\]",
        ),
        ({"tier": 5}, ValueError, r"Annotator.tier must be one of \['OPERATOR', 'SHARING'\], got 5"),
        ({"pattern_size": 0}, ValueError, "Annotator.pattern_size must be an int >= 1, got 0"),
        ({"function": "tanh"}, TypeError, "Annotator.function must be callable"),
    ],
)
def test_a_bad_annotator_field_is_named(fields: dict[str, Any], error: type[Exception], message: str) -> None:
    arguments = {"name": "tanh", "ops": (torch.ops.aten.tanh.default,), "function": _annotate_tanh, **fields}
    with pytest.raises(error, match=message):
        Annotator(**arguments)


def test_module_overrides_name_beats_type_beats_global() -> None:
    from zoo.models import _ResidualBlock

    per_tensor, dynamic = SymmetricConfig(per_channel=False), SymmetricConfig(dynamic=True)
    quantizer = (
        SymmetricQuantizer(SymmetricConfig())
        .set_module_type(_ResidualBlock, per_tensor)
        .set_module_name("block2", None)
        .set_module_name("head", dynamic)
    )
    graph_module = copy.deepcopy(_exported("residual_cnn"))
    quantizer.annotate(graph_module)
    weight_schemes = {}
    for node in graph_module.graph.nodes:
        if node.target in WEIGHTED_OPS:
            annotation = annotation_of(node)
            module = next(reversed(node.meta["nn_module_stack"].values()))[0]
            weight_schemes[module] = (
                None if annotation is None else annotation.input_qspec_map[node.args[1]].qscheme
            )
            if module == "head":
                assert annotation.input_qspec_map[node.args[0]].is_dynamic
                assert annotation.output_qspec is None
    assert weight_schemes == {
        "stem.conv": torch.per_channel_symmetric,
        "block1.conv1": torch.per_tensor_symmetric,
        "block1.conv2": torch.per_tensor_symmetric,
        "block2.conv1": None,
        "block2.conv2": None,
        "head": torch.per_channel_symmetric,
    }


def test_scope_and_config_errors() -> None:
    quantizer = SymmetricQuantizer(SymmetricConfig())
    with pytest.raises(
        ValueError, match="set_module_name expects a submodule path such as 'blocks.0', got ''"
    ):
        quantizer.set_module_name("", SymmetricConfig())
    with pytest.raises(
        TypeError, match="set_module_type expects a module class such as torch.nn.Linear, got 'Linear'"
    ):
        quantizer.set_module_type("Linear", SymmetricConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="module 'head' has qat=True but other scopes have qat=False"):
        quantizer.set_module_name("head", SymmetricConfig(qat=True))
    with pytest.raises(TypeError, match="the global config must be a SymmetricConfig or None"):
        SymmetricQuantizer({"per_channel": True})  # type: ignore[arg-type]
    assert not quantizer.set_global(SymmetricConfig(qat=True)).set_global(None).is_qat


def test_scalar_operands_are_lifted_only_for_float_add_and_mul() -> None:
    graph_module = copy.deepcopy(_exported("seed_different_qconfig"))
    SymmetricQuantizer().transform_for_annotation(graph_module)
    (scalar_add,) = [node for node in graph_module.graph.nodes if node.name == "add_1"]
    constant = scalar_add.args[1]
    assert constant.op == "get_attr" and torch.equal(
        getattr(graph_module, constant.target), torch.tensor(2.0)
    )
    untouched = copy.deepcopy(_exported("seed_different_qconfig"))
    SymmetricQuantizer(annotators=builtin_annotators("conv")).transform_for_annotation(untouched)
    assert not any(node.op == "get_attr" and "scalar" in str(node.target) for node in untouched.graph.nodes)


def _mis_share(node: Node, ctx: AnnotationContext) -> bool:
    """Shares the output of an op nobody quantizes: a bug prepare would hit deep inside."""
    producer = node.args[0]
    write_annotation(node, {producer: SharedQuantizationSpec(producer)}, ctx.specs.output_activation)
    return True


def test_validate_names_the_node_with_a_malformed_annotation() -> None:
    broken = Annotator("mis_share", (torch.ops.aten.tanh.default,), _mis_share)
    quantizer = SymmetricQuantizer(annotators=[broken])
    with pytest.raises(
        StageFailedError,
        match=r"stage 'annotate' .* failed at tanh \(call_function aten.tanh.default\)[\s\S]*input linear_1 shares qparams with the output of linear_1, which is not quantized",
    ) as raised:
        prepare(copy.deepcopy(_exported("dynamic_quant_linear")), quantizer)
    assert isinstance(raised.value.__cause__, AnnotationError)
    assert raised.value.__cause__.node.name == "tanh"
    graph_module = copy.deepcopy(_exported("mlp"))
    SymmetricQuantizer().annotate(graph_module)
    linear, *_, last_linear = [
        node for node in graph_module.graph.nodes if node.target == torch.ops.aten.linear.default
    ]
    annotation_of(linear).input_qspec_map[last_linear] = CONFIGS["xnnpack-per-tensor"].specs.weight
    with pytest.raises(
        AnnotationError,
        match=r"node linear \(aten.linear.default\) has an input spec for linear_2, which is not one of its arguments",
    ):
        SymmetricQuantizer().validate(graph_module)
