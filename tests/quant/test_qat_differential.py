"""The QAT flow against torchao 0.18: the same training, then the same converted graph.

Every conv-bn(-relu) flavour torchao fuses (conv1d, conv2d, conv_transpose1d,
conv_transpose2d, with and without conv bias), a residual CNN (exported in
train and in eval mode) and a MobileNet-style CNN, under X86's QAT config,
torchao's XNNPACK test quantizer and the project's symmetric quantizer (per
channel and per tensor).  Both flows get copies of one exported module, the
same seed and the same batches; the prepared models must agree bit for bit at
every training step and in eval mode, and the converted models must have the
same ops, the same qparams and bit-identical outputs.

Where torchao is no reference (``zoo.qat.torchao_gap_reason``: it keeps the
batch_norm, or folds with the wrong constants), our converted model must
have no batch_norm left, quantize exactly the weights the quantizer
annotates, and stay within one output quantization step of our own
fake-quantized model.  The pairs whose conv torchao fuses but cannot fold
still have to train exactly as torchao does, since prepare is the same there.

The default tier runs a representative subset; ``tox -e slow`` runs the rest.
torchao's pattern exports are memoized (``zoo.qat.cached_pattern_exports``,
proved equivalent by ``test_cached_torchao_flow_is_torchao_flow``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchao.quantization.pt2e import move_exported_model_to_eval as torchao_move_to_eval
from torchao.quantization.pt2e import qat_utils
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e as torchao_prepare_qat_pt2e
from zoo.compare import assert_same_quantized, op_multiset
from zoo.qat import (
    GAP_CASES,
    MATRIX_CASES,
    PATTERN_CACHE,
    QAT_CONFIGS,
    Batch,
    QATCase,
    QATRun,
    annotated_weight_ops,
    assert_matches_fake_quant,
    assert_same_training,
    cached_pattern_exports,
    float_behaviour_differences,
    has_batch_norm,
    make_qat_quantizer,
    our_qat,
    pattern_key,
    quantized_weight_ops,
    quantizer_rejects_reason,
    run_qat,
    torchao_gap_reason,
    torchao_qat,
    unfoldable_reason,
)

STEPS = 3

DEFAULT_TIER = {
    *(
        (f"conv2d_{bias}_bn_relu", config)
        for bias in ("bias", "nobias")
        for config in ("x86", "xnnpack-per-channel", "symmetric-per-channel")
    ),
    ("conv1d_bias_bn", "xnnpack-per-tensor"),
    ("conv_transpose2d_bias_bn_relu", "symmetric-per-channel"),
    ("residual_cnn", "x86"),
    ("residual_cnn_eval_export", "x86"),
    ("conv2d_bn_eps_momentum", "symmetric-per-channel"),
    ("conv2d_padding_same", "x86"),
    ("linear_bn1d", "xnnpack-per-tensor"),
}
"""(case, config) pairs of the default tier: about 40 s on two cores with the pattern cache."""


def pair(case: QATCase, config: str) -> object:
    marks = [] if (case.name, config) in DEFAULT_TIER else [pytest.mark.slow]
    return pytest.param(case, config, id=f"{case.name}-{config}", marks=marks)


COMPARED = [
    pair(case, config)
    for case in MATRIX_CASES.values()
    for config in QAT_CONFIGS
    if torchao_gap_reason(config, case) is None
]
TORCHAO_KEEPS_BATCH_NORM = [
    pair(case, config)
    for case in MATRIX_CASES.values()
    for config in QAT_CONFIGS
    if torchao_gap_reason(config, case) is not None
]
GAP_MODELS = [
    pair(case, config)
    for case in GAP_CASES.values()
    for config in QAT_CONFIGS
    if quantizer_rejects_reason(config, case) is None and unfoldable_reason(config, case) is None
]
UNFOLDABLE = [
    pair(case, config)
    for case in GAP_CASES.values()
    for config in QAT_CONFIGS
    if unfoldable_reason(config, case) is not None
]
REJECTED = [
    pair(case, config)
    for case in GAP_CASES.values()
    for config in QAT_CONFIGS
    if quantizer_rejects_reason(config, case) is not None
]


def comparison_inputs(case: QATCase, data: list) -> list[Batch]:
    return [case.example_inputs, *(batch.inputs for batch in data)]


def assert_folded_where_torchao_is_not(
    ours: QATRun, exported: torch.fx.GraphModule, config: str, inputs: list[Batch]
) -> None:
    """No batch_norm left, the annotated weights quantized, and the fake-quant numerics kept."""
    assert not has_batch_norm(ours.converted), (
        f"our converted graph still has a batch_norm; ops: {dict(op_multiset(ours.converted))}"
    )
    expected = annotated_weight_ops(exported, make_qat_quantizer(config))
    assert quantized_weight_ops(ours.converted) == expected, (
        f"quantized conv/linear weights {dict(quantized_weight_ops(ours.converted))}, "
        f"but {config} annotates {dict(expected)}"
    )
    assert_matches_fake_quant(ours, inputs)


@pytest.mark.parametrize(("case", "config"), COMPARED)
def test_qat_bit_identical_to_torchao(case: QATCase, config: str) -> None:
    exported = case.export()
    data = case.training_data(STEPS)
    reference = torchao_qat(exported, make_qat_quantizer(config), STEPS, data)
    assert not has_batch_norm(reference.converted), (
        "torchao kept a batch_norm: record the pair in zoo.qat's gap table"
    )
    ours = our_qat(exported, make_qat_quantizer(config), STEPS, data)
    inputs = comparison_inputs(case, data)
    assert_same_training(ours, reference, inputs)
    for batch in inputs:
        assert_same_quantized(ours.converted, reference.converted, batch, qparam_matching="structure")


@pytest.mark.parametrize(("case", "config"), TORCHAO_KEEPS_BATCH_NORM)
def test_qat_folds_where_torchao_keeps_batch_norm(case: QATCase, config: str) -> None:
    exported = case.export()
    data = case.training_data(STEPS)
    reference = torchao_qat(exported, make_qat_quantizer(config), STEPS, data)
    assert has_batch_norm(reference.converted), (
        f"torchao folded the pair; zoo.qat's gap table is stale ({torchao_gap_reason(config, case)})"
    )
    ours = our_qat(exported, make_qat_quantizer(config), STEPS, data)
    inputs = comparison_inputs(case, data)
    assert_same_training(ours, reference, inputs)
    assert_folded_where_torchao_is_not(ours, exported, config, inputs)


@pytest.mark.parametrize(("case", "config"), GAP_MODELS)
def test_qat_folds_models_torchao_does_not_handle(case: QATCase, config: str) -> None:
    exported = case.export()
    data = case.training_data(STEPS)
    ours = our_qat(exported, make_qat_quantizer(config), STEPS, data)
    assert_folded_where_torchao_is_not(ours, exported, config, comparison_inputs(case, data))


@pytest.mark.parametrize(("case", "config"), UNFOLDABLE)
def test_a_batch_norm_after_a_quantized_output_is_refused_then_kept_as_torchao_keeps_it(
    case: QATCase, config: str
) -> None:
    """Warned at prepare, a violation naming it at convert; with checks warning, torchao's graph."""
    from pipeline import Pipeline
    from pipeline.errors import CheckWarning, ConditionViolationError
    from pipeline.pt2e import prepare_qat_pt2e
    from plugins.fuse_conv_bn import UnfusedBatchNormWarning
    from plugins.train_eval import move_exported_model_to_eval

    exported = case.export()
    with pytest.warns(UnfusedBatchNormWarning, match="quantizes the output of linear") as warned:
        prepared = prepare_qat_pt2e(copy.deepcopy(exported), make_qat_quantizer(config))
    (message,) = [str(w.message) for w in warned if w.category is UnfusedBatchNormWarning]
    assert "self.bn(self.linear(x))" in message
    with pytest.raises(ConditionViolationError, match="no_batch_norm_after_fold") as raised:
        Pipeline.default().convert(prepared)
    assert "batch_norm after linear is not folded" in str(raised.value)

    def convert_warning(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        with pytest.warns(CheckWarning, match="batch_norm after linear is not folded"):
            return Pipeline.default().convert(model, check="warn").graph_module

    data = case.training_data(STEPS)
    reference = torchao_qat(exported, make_qat_quantizer(config), STEPS, data)
    with cached_pattern_exports(), pytest.warns(UnfusedBatchNormWarning):
        ours = run_qat(
            exported,
            make_qat_quantizer(config),
            STEPS,
            data,
            prepare=prepare_qat_pt2e,
            move_to_eval=move_exported_model_to_eval,
            convert=convert_warning,
        )
    inputs = comparison_inputs(case, data)
    assert_same_training(ours, reference, inputs)
    for batch in inputs:
        assert_same_quantized(ours.converted, reference.converted, batch, qparam_matching="structure")


@pytest.mark.parametrize(("case", "config"), GAP_MODELS)
def test_prepared_model_without_fake_quant_is_the_float_model(case: QATCase, config: str) -> None:
    """The conv-bn simulation keeps the model's eps and momentum (torchao forces 1e-5 and 0.1)."""
    from pipeline.pt2e import prepare_qat_pt2e
    from plugins.train_eval import move_exported_model_to_eval

    with cached_pattern_exports():
        prepared = prepare_qat_pt2e(case.export(), make_qat_quantizer(config))
    assert float_behaviour_differences(prepared, case, move_exported_model_to_eval) == []


def test_torchao_simulation_forces_its_own_eps_and_momentum() -> None:
    """The float check above is sharp enough to see torchao's hard-coded bn constants."""
    case = GAP_CASES["conv2d_bn_eps_momentum"]
    with cached_pattern_exports():
        prepared = torchao_prepare_qat_pt2e(case.export(), make_qat_quantizer("xnnpack-per-channel"))
    lines = float_behaviour_differences(prepared, case, torchao_move_to_eval)
    assert [line.split(":")[0] for line in lines] == ["train mode", "eval mode"]


@pytest.mark.parametrize(("case", "config"), REJECTED)
def test_quantizer_rejection_surfaces_from_prepare(case: QATCase, config: str) -> None:
    from pipeline.pt2e import prepare_qat_pt2e

    message = "conv2d is not an aten conv2d operator"
    with pytest.raises(ValueError, match=message):
        torchao_prepare_qat_pt2e(case.export(), make_qat_quantizer(config))
    with pytest.raises(Exception) as caught:  # noqa: PT011 (the pipeline may wrap the quantizer's error)
        prepare_qat_pt2e(case.export(), make_qat_quantizer(config))
    chain, error = [], caught.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    assert any(message in text for text in chain), chain


# --------------------------------------------------------------------------- the pattern cache


def _conv_bn_inputs(rank: int) -> tuple[torch.Tensor, ...]:
    spatial = (3,) * rank
    return (torch.randn(1, 1, *spatial), torch.randn(1, 1, *(1,) * rank), *(torch.randn(1) for _ in range(5)))


def test_pattern_key_separates_what_shapes_the_pattern() -> None:
    conv2d = pattern_key(qat_utils._get_conv_bn_pattern(F.conv2d), _conv_bn_inputs(2), False, {})
    assert conv2d == pattern_key(qat_utils._get_conv_bn_pattern(F.conv2d), _conv_bn_inputs(2), False, {})
    assert conv2d != pattern_key(qat_utils._get_conv_bn_pattern(F.conv1d), _conv_bn_inputs(1), False, {})
    assert conv2d != pattern_key(qat_utils._get_conv_bn_pattern(F.conv2d), _conv_bn_inputs(2), True, {})
    assert conv2d != pattern_key(qat_utils._get_qat_conv_bn_pattern(F.conv2d), _conv_bn_inputs(2), False, {})
    assert conv2d != pattern_key(
        qat_utils._get_conv_bn_pattern(F.conv2d),
        (torch.randn(1, 1, 4, 4), *_conv_bn_inputs(2)[1:]),
        False,
        {},
    )
    variants = {
        pattern_key(
            qat_utils._get_quantized_qat_conv_bn_pattern(per_channel, bias, quantized, F.conv2d, training),
            _conv_bn_inputs(2),
            False,
            qat_utils._get_quantized_conv_bn_example_inputs_kwargs(per_channel, bias, quantized, False),
        )
        for per_channel in (True, False)
        for bias in (True, False)
        for quantized in (True, False)
        for training in (True, False)
    }
    assert len(variants) == 16


def test_pattern_cache_hands_out_fresh_copies() -> None:
    """A caller that edits its pattern (torchao runs DCE on them) must not edit the cached one."""
    original = qat_utils._get_aten_graph_module_for_pattern
    pattern = qat_utils._get_conv_bn_pattern(F.conv1d)
    with cached_pattern_exports() as cache:
        first = qat_utils._get_aten_graph_module_for_pattern(pattern, _conv_bn_inputs(1), False)
        batch_norm = next(node for node in first.graph.nodes if node.name == "batch_norm")
        batch_norm.replace_all_uses_with(batch_norm.args[0])
        first.graph.erase_node(batch_norm)
        hits = cache.hits
        second = qat_utils._get_aten_graph_module_for_pattern(pattern, _conv_bn_inputs(1), False)
    assert cache.hits == hits + 1
    assert [node.name for node in second.graph.nodes] == [
        *(f"args_{i}" for i in range(7)),
        "conv1d",
        "batch_norm",
        "output",
    ]
    assert qat_utils._get_aten_graph_module_for_pattern is original


CACHE_PROOF_CASES = [
    pytest.param("conv2d_bias_bn_relu", "x86", id="conv2d_bias_bn_relu-x86-folded"),
    pytest.param("conv1d_nobias_bn", "x86", id="conv1d_nobias_bn-x86-kept"),
    pytest.param("mobilenet_style", "xnnpack-per-tensor", id="mobilenet_style-xnnpack-per-tensor"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "config"), CACHE_PROOF_CASES)
def test_cached_torchao_flow_is_torchao_flow(name: str, config: str) -> None:
    """Memoized pattern exports change nothing: same training, same graphs node for node."""
    case = MATRIX_CASES[name]
    exported = case.export()
    data = case.training_data(STEPS)
    hits = PATTERN_CACHE.hits
    cached = torchao_qat(exported, make_qat_quantizer(config), STEPS, data)
    assert PATTERN_CACHE.hits > hits
    uncached = torchao_qat(copy.deepcopy(exported), make_qat_quantizer(config), STEPS, data, cached=False)
    inputs = comparison_inputs(case, data)
    assert_same_training(cached, uncached, inputs)
    assert cached.fake_quant.code == uncached.fake_quant.code
    assert cached.converted.code == uncached.converted.code
    for batch in inputs:
        assert_same_quantized(cached.converted, uncached.converted, batch, qparam_matching="structure")
