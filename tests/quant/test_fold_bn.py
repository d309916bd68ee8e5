"""fold-bn: the same graph and tensors as torchao's _fuse_conv_bn_/_fuse_linear_bn_, and right where torchao is not."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from support.toyflow import ToyPlugin, captured, unannotated
from torch import nn
from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_
from zoo.compare import op_multiset

from pipeline import Pipeline, StageError, StageFailedError
from pipeline.copying import private_copy
from plugins.fold_bn import KEPT_FOR_TRAINING, FoldBatchNorm, Folded, bn_folded, fold_batch_norms

BATCH_NORM = torch.ops.aten.batch_norm.default


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics, so that a fold that goes wrong shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model.eval()


def export(model: nn.Module, *inputs: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(model, inputs).module()


def torchao_fold(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    reference = copy.deepcopy(graph_module)
    _fuse_conv_bn_(reference)
    _fuse_linear_bn_(reference)
    return reference


def our_fold(graph_module: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[Folded]]:
    ours = copy.deepcopy(graph_module)
    return ours, fold_batch_norms(ours)


def structure(graph_module: torch.fx.GraphModule) -> list[tuple]:
    """Every node's name, op, target, arguments, users in order, meta keys, and get_attr value shape."""
    rows = []
    for node in graph_module.graph.nodes:
        value = node.meta.get("val")
        rows.append(
            (
                node.name,
                node.op,
                str(node.target),
                str(node.args),
                str(node.kwargs),
                [user.name for user in node.users],
                sorted(node.meta),
                (tuple(value.shape), value.dtype) if node.op == "get_attr" and value is not None else None,
            )
        )
    return rows


def tensors(graph_module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*graph_module.named_parameters(), *graph_module.named_buffers()]


def assert_same_as_torchao(graph_module: torch.fx.GraphModule, *inputs: torch.Tensor) -> list[Folded]:
    reference = torchao_fold(graph_module)
    ours, folded = our_fold(graph_module)
    assert op_multiset(ours) == op_multiset(reference)
    assert structure(ours) == structure(reference)
    ours_tensors, reference_tensors = tensors(ours), tensors(reference)
    assert [name for name, _ in ours_tensors] == [name for name, _ in reference_tensors]
    for (name, mine), (_, theirs) in zip(ours_tensors, reference_tensors, strict=True):
        assert type(mine) is type(theirs), name
        assert mine.dtype == theirs.dtype and mine.requires_grad == theirs.requires_grad, name
        assert torch.equal(mine, theirs), name
    with torch.no_grad():
        assert torch.equal(ours(*inputs), reference(*inputs))
    return folded


def assert_unchanged_tensors(graph_module: torch.fx.GraphModule, before: dict[str, torch.Tensor]) -> None:
    after = graph_module.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for name, tensor in after.items():
        assert torch.equal(tensor, before[name]), name


class ConvBn(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module, relu: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = conv, bn, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return torch.relu(y) if self.relu else y


CONVS = {
    "conv1d": (lambda bias: nn.Conv1d(3, 4, 3, bias=bias), nn.BatchNorm1d, (2, 3, 9)),
    "conv2d": (lambda bias: nn.Conv2d(3, 4, 3, bias=bias), nn.BatchNorm2d, (2, 3, 7, 7)),
    "conv3d": (lambda bias: nn.Conv3d(3, 4, 3, bias=bias), nn.BatchNorm3d, (1, 3, 5, 5, 5)),
    "conv_transpose1d": (lambda bias: nn.ConvTranspose1d(3, 4, 3, bias=bias), nn.BatchNorm1d, (2, 3, 9)),
    "conv_transpose2d": (
        lambda bias: nn.ConvTranspose2d(3, 4, 3, stride=2, bias=bias),
        nn.BatchNorm2d,
        (2, 3, 5, 5),
    ),
}


@pytest.mark.parametrize("relu", [False, True], ids=["conv-bn", "conv-bn-relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("kind", sorted(CONVS))
def test_conv_folds_like_torchao(kind, bias, relu):
    make_conv, make_bn, shape = CONVS[kind]
    x = torch.randn(shape)
    graph_module = export(seeded(ConvBn(make_conv(bias), make_bn(4), relu)), x)
    folded = assert_same_as_torchao(graph_module, x)
    assert [(f.kind, f.new_bias, f.bias) for f in folded] == [
        (
            "conv_transpose" if "transpose" in kind else "conv",
            not bias,
            "conv.bias" if bias else "conv.weight_bias",
        )
    ]


@pytest.mark.parametrize(
    "bn",
    [nn.BatchNorm2d(4, eps=1e-2), nn.BatchNorm2d(4, affine=False)],
    ids=["eps", "affine-false"],
)
def test_batch_norm_options_fold_like_torchao(bn):
    x = torch.randn(2, 3, 6, 6)
    assert_same_as_torchao(export(seeded(ConvBn(nn.Conv2d(3, 4, 3, bias=False), bn, True)), x), x)


class LinearBn(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 6, bias=bias)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.linear(x)))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_folds_like_torchao(bias):
    x = torch.randn(4, 5)
    folded = assert_same_as_torchao(export(seeded(LinearBn(bias)), x), x)
    assert [(f.kind, f.layer, f.bias) for f in folded] == [
        ("linear", "linear", "linear.bias" if bias else "linear.weight_bias")
    ]


class Mixed(nn.Module):
    """A conv and a linear block, a batch norm torchao cannot fold, and a parameter nothing reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.after_add = nn.BatchNorm2d(4)
        self.linear = nn.Linear(4, 3)
        self.bn1d = nn.BatchNorm1d(3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.after_add(torch.relu(self.bn(self.conv(x))) + 1.0)
        return self.bn1d(self.linear(y.mean((2, 3))))


def test_a_mixed_graph_folds_like_torchao_and_drops_the_same_dead_reads():
    x = torch.randn(2, 3, 6, 6)
    graph_module = export(seeded(Mixed()), x)
    folded = assert_same_as_torchao(graph_module, x)
    assert [f.batch_norm for f in folded] == ["batch_norm", "batch_norm_2"]
    ours, _ = our_fold(graph_module)
    remaining = {node.name for node in ours.graph.nodes}
    assert "after_add_weight" in remaining and "batch_norm_1" in remaining
    assert "unused_weight" not in remaining and "bn_num_batches_tracked" not in remaining


def test_the_decomposed_no_training_batch_norm_folds_like_torchao():
    x = torch.randn(2, 3, 6, 6)
    model = seeded(ConvBn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), True))
    graph_module = torch.export.export(model, (x,)).run_decompositions({}).module()
    target = torch.ops.aten._native_batch_norm_legit_no_training.default
    assert graph_module.graph.find_nodes(op="call_function", target=target)
    assert len(assert_same_as_torchao(graph_module, x)) == 1


def test_a_graph_without_batch_norm_is_left_alone():
    x = torch.randn(4, 5)
    graph_module = export(seeded(nn.Sequential(nn.Linear(5, 5), nn.ReLU())), x)
    ours, folded = our_fold(graph_module)
    assert folded == [] and structure(ours) == structure(torchao_fold(graph_module))


def test_the_callers_tensors_are_never_written():
    x = torch.randn(2, 3, 7, 7)
    graph_module = export(seeded(ConvBn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), True)), x)
    before = {name: (t, t.clone(), t._version) for name, t in graph_module.state_dict(keep_vars=True).items()}
    shared = private_copy(graph_module)
    assert shared.conv.weight is graph_module.conv.weight
    fold_batch_norms(shared)
    assert shared.conv.weight is not graph_module.conv.weight
    for name, tensor in graph_module.state_dict(keep_vars=True).items():
        same, value, version = before[name]
        assert tensor is same and tensor._version == version and torch.equal(tensor, value), name


class TwoUsers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


class Unbatched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.mark.parametrize(
    ("model", "shape", "reason"),
    [
        (TwoUsers, (2, 3, 6, 6), "also feeds add"),
        (SharedConv, (2, 3, 6, 6), "weight 'conv.weight' of conv2d"),
        (Unbatched, (3, 6), "unbatched"),
    ],
    ids=["conv-output-has-another-user", "two-bns-share-one-conv-weight", "unbatched-conv"],
)
def test_folds_that_would_change_other_results_are_declined(model, shape, reason):
    x = torch.randn(shape)
    graph_module = export(seeded(model()), x)
    with torch.no_grad():
        expected = graph_module(x)
        assert not torch.equal(torchao_fold(graph_module)(x), expected)
        skipped = []
        ours = copy.deepcopy(graph_module)
        assert fold_batch_norms(ours, on_skip=skipped.append) == []
        assert torch.equal(ours(x), expected)
    assert skipped and all(reason in skip.reason for skip in skipped)
    assert len(ours.graph.find_nodes(op="call_function", target=BATCH_NORM)) == len(skipped)
    assert bn_folded.check(ours) == []


def test_two_calls_of_one_conv_export_as_one_shared_weight_read():
    x = torch.randn(1, 3, 6, 6)
    graph_module = export(seeded(SharedConv()), x)
    (weight,) = graph_module.graph.find_nodes(op="get_attr", target="conv.weight")
    assert len(weight.users) == 2


class Chained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.bn1(self.conv(x)))


class GroupedTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(4, 6, 3, groups=2)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LinearNoAffine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


class BufferWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(4, 3, 3, 3))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, self.w))


@pytest.mark.parametrize(
    ("model", "shape", "folds"),
    [
        (Chained, (2, 3, 6, 6), 2),
        (GroupedTranspose, (2, 4, 5, 5), 1),
        (LinearNoAffine, (4, 5), 1),
        (BufferWeight, (2, 3, 6, 6), 1),
    ],
    ids=["bn-after-bn", "grouped-conv-transpose", "linear-bn-affine-false", "buffer-weight"],
)
def test_folds_torchao_gets_wrong_are_right(model, shape, folds):
    x = torch.randn(shape)
    eager = seeded(model())
    graph_module = export(eager, x)
    ours, folded = our_fold(graph_module)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), eager(x), rtol=1e-5, atol=1e-5)
        try:
            wrong = not torch.allclose(torchao_fold(graph_module)(x), eager(x), rtol=1e-5, atol=1e-5)
        except (RuntimeError, TypeError, KeyError):
            wrong = True
    assert wrong
    assert len(folded) == folds
    assert not ours.graph.find_nodes(op="call_function", target=BATCH_NORM)


def test_a_folded_buffer_weight_stays_a_buffer():
    x = torch.randn(1, 3, 6, 6)
    ours, _ = our_fold(export(seeded(BufferWeight()), x))
    assert "w" in dict(ours.named_buffers()) and "w_bias" in dict(ours.named_parameters())


def test_an_existing_attribute_named_like_the_new_bias_is_not_overwritten():
    x = torch.randn(1, 3, 6, 6)
    model = seeded(ConvBn(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), False))
    model.conv.register_parameter("weight_bias", nn.Parameter(torch.full((4,), 7.0)))
    graph_module = export(model, x)
    ours, folded = our_fold(graph_module)
    assert folded[0].bias == "conv.weight_bias_1"
    assert torch.equal(ours.conv.weight_bias, torch.full((4,), 7.0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), rtol=1e-5, atol=1e-5)


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


def test_a_linear_on_a_3d_input_is_left_alone_like_torchao():
    x = torch.randn(2, 3, 5)
    graph_module = export(seeded(Wide()), x)
    with pytest.warns(UserWarning, match="Not fusing linear"):
        reference = torchao_fold(graph_module)
    ours, folded = our_fold(graph_module)
    assert folded == [] and structure(ours) == structure(reference)


def test_a_batch_norm_in_training_mode_is_not_folded():
    x = torch.randn(2, 3, 6, 6)
    model = seeded(ConvBn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), False)).train()
    graph_module = export(model, x)
    skipped = []
    ours = copy.deepcopy(graph_module)
    assert fold_batch_norms(ours, on_skip=skipped.append) == []
    assert [skip.batch_norm.name for skip in skipped] == ["batch_norm"]
    assert "training mode" in skipped[0].reason


class InputWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, w))


def test_a_weight_that_is_a_graph_input_is_a_clear_error():
    inputs = (torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3))
    graph_module = export(seeded(InputWeight()), *inputs)
    with pytest.raises(ValueError, match="Expected get_attr node, got placeholder"):
        torchao_fold(graph_module)
    with pytest.raises(StageError, match=r"conv weight is the graph input 'w'") as raised:
        fold_batch_norms(copy.deepcopy(graph_module))
    assert raised.value.node.name == "conv2d"
    assert "cannot fold batch_norm into conv2d" in str(raised.value)


def test_the_condition_names_each_batch_norm_left_to_fold():
    x = torch.randn(2, 3, 6, 6)
    graph_module = export(seeded(Mixed()), x)
    violations = bn_folded.check(graph_module)
    assert [(v.node.name, v.graph) for v in violations] == [("batch_norm", ""), ("batch_norm_2", "")]
    assert "after conv conv2d" in violations[0].message
    assert bn_folded.check(our_fold(graph_module)[0]) == []
    assert bn_folded.check(None) == []


def fold_pipeline(**options) -> Pipeline:
    plugin = ToyPlugin(stages=(FoldBatchNorm(),), conditions=(captured, unannotated, bn_folded))
    return Pipeline(plugins=[plugin], assumes=("captured", "unannotated"), **options)


def test_the_stage_folds_on_a_private_copy_and_audits_every_node():
    x = torch.randn(2, 3, 7, 7)
    graph_module = export(seeded(ConvBn(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), True)), x)
    before = graph_module.state_dict(keep_vars=True)
    values = {name: tensor.clone() for name, tensor in before.items()}
    nodes = [node.name for node in graph_module.graph.nodes]
    result = fold_pipeline().run(graph_module)
    assert [node.name for node in graph_module.graph.nodes] == nodes
    after = graph_module.state_dict(keep_vars=True)
    assert all(after[name] is tensor for name, tensor in before.items())
    assert_unchanged_tensors(graph_module, values)
    reference = torchao_fold(graph_module)
    assert structure(result.graph_module) == structure(reference)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), reference(x))

    audit = result.audit
    erased = {event["node"]: event for event in audit.select(stage="fold-bn", action="erased")}
    assert erased["batch_norm"]["target"] == "aten.batch_norm.default"
    assert erased["batch_norm"]["replaced_by"] == "conv2d"
    assert {"bn_weight", "bn_bias", "bn_running_mean", "bn_running_var", "bn_num_batches_tracked"} <= set(
        erased
    )
    (created,) = audit.select(stage="fold-bn", action="created")
    assert created["node"] == "conv_weight_bias" and created["target"] == "conv.weight_bias"
    assert created["sources"] == ["conv2d", "batch_norm"]
    origin = audit.origin("conv_weight_bias")
    assert origin.stage == "fold-bn" and origin.sources == ("conv2d", "batch_norm")
    (rewired,) = audit.select(stage="fold-bn", action="rewired", node="conv2d")
    assert "conv_weight_bias" in str(rewired["args_after"])
    notes = [event["message"] for event in audit.select(stage="fold-bn", action="stage.note")]
    assert notes == ["folded batch_norm into conv conv2d"]


def test_the_stage_notes_the_batch_norms_it_leaves():
    x = torch.randn(2, 3, 6, 6)
    result = fold_pipeline().run(export(seeded(TwoUsers()), x))
    (note,) = result.audit.select(stage="fold-bn", action="stage.note")
    assert note["node"] == "batch_norm" and "also feeds add" in note["message"]


def test_the_stage_only_marks_the_batch_norms_it_keeps_for_qat():
    x = torch.randn(2, 3, 7, 7)
    graph_module = export(seeded(ConvBn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), True)), x)
    result = fold_pipeline().run(graph_module, is_qat=True)
    kept = [node.name for node in result.graph_module.graph.nodes if KEPT_FOR_TRAINING in node.meta]
    assert kept == ["batch_norm"]
    for node in result.graph_module.graph.nodes:
        node.meta.pop(KEPT_FOR_TRAINING, None)
    assert structure(result.graph_module) == structure(private_copy(graph_module))


def test_a_qat_run_without_batch_norms_to_keep_changes_nothing():
    graph_module = export(seeded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())), torch.randn(2, 3, 7, 7))
    result = fold_pipeline().run(graph_module, is_qat=True)
    assert result.report["fold-bn"].changed is False


def test_the_stage_reports_a_graph_input_weight_and_leaves_the_caller_alone():
    inputs = (torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3))
    graph_module = export(seeded(InputWeight()), *inputs)
    nodes = [node.name for node in graph_module.graph.nodes]
    with pytest.raises(StageFailedError, match="graph input 'w'") as raised:
        fold_pipeline().run(graph_module)
    assert raised.value.stage == "fold-bn" and isinstance(raised.value.__cause__, StageError)
    assert [node.name for node in graph_module.graph.nodes] == nodes


class LoopBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def cond(i, y):
            return i < 3

        def body(i, y):
            return i + 1, self.bn(self.conv(y))

        return torch._higher_order_ops.while_loop(cond, body, (torch.tensor(0), x))[1]


def test_a_conv_bn_in_a_loop_body_is_a_clear_error_as_in_torchao():
    graph_module = export(seeded(LoopBody()), torch.randn(1, 3, 5, 5))
    body = graph_module.while_loop_body_graph_0
    with pytest.raises(ValueError, match="Expected get_attr node, got placeholder"):
        torchao_fold(body)
    with pytest.raises(StageError, match="in a loop body, weights arrive as inputs"):
        fold_batch_norms(copy.deepcopy(graph_module))
    assert bn_folded.check(graph_module) == []


def test_a_reader_of_the_conv_outputs_metadata_does_not_block_the_fold():
    x = torch.randn(2, 3, 7, 7)
    graph_module = export(seeded(ConvBn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), True)), x)
    (conv,) = graph_module.graph.find_nodes(op="call_function", target=torch.ops.aten.conv2d.default)
    with graph_module.graph.inserting_after(conv):
        graph_module.graph.call_function(
            torch.ops.aten._assert_tensor_metadata.default, (conv,), {"dtype": torch.float32}
        )
    graph_module.recompile()
    assert len(assert_same_as_torchao(graph_module, x)) == 1
