"""QAT models, reference quantizer configs, and the torchao QAT flow our flow is compared against.

A QAT comparison runs both flows on deep copies of one exported module:
prepare (torchao's ``prepare_qat_pt2e`` or ours), the same seeded training
steps (SGD, lr 0.01, no momentum, MSE to seeded targets), the move to eval
mode, then convert.  Training is deterministic on CPU, so two prepared
models with identical graphs and parameters produce bit-identical losses and
outputs at every step; any difference in the fused conv-bn simulation shows
up there before convert is even reached.

Models are exported in train mode by default, as QAT normally is (the batch
norms then compute batch statistics and ``add_`` their
``num_batches_tracked``); ``QATCase.export_train=False`` exports in eval mode.

Where torchao's converted graph still holds a ``batch_norm`` (it fused the
pair in prepare but cannot fold it at convert, or never fused it), or folds
with constants that are not the model's, there is nothing to be
bit-identical with: ``torchao_gap_reason`` names those pairs and the gap
models, and the tests check our result against our own fake-quantized
model instead (``fake_quant`` in ``QATRun``).

Pattern-export cache
--------------------
torchao builds its QAT patterns by ``torch.export``-ing small functions on
every call of ``_get_aten_graph_module_for_pattern``: 12 exports in
``prepare_qat_pt2e``, 96 in ``convert_pt2e``, 6 in
``move_exported_model_to_eval`` and 12 in the XNNPACK test quantizer's
conv-bn annotators, about 0.11 s each, so a single torchao QAT run costs
about 15 s whatever the model.  ``cached_pattern_exports`` memoizes that
function and hands out a ``copy.deepcopy`` of the cached GraphModule on
every call.  This leaves torchao's behaviour unchanged because:

* the exported graph is a function of the pattern's code and the values it
  closes over (``conv_fn``, ``has_bias``, ``is_per_channel``, the bn eps,
  the dropout ``inplace`` flag, ...), of the example inputs' and kwargs'
  shapes, dtypes, devices and ``requires_grad``, of ``is_cuda`` and of the
  ambient grad mode and default dtype; the key holds all of them.  Example
  tensor *values* do not enter the graph (the patterns have no
  data-dependent control flow and capture no tensor constants), which is
  also why torchao can afford fresh ``torch.randn`` inputs per call.  A
  pattern whose closure holds anything the key cannot represent exactly
  (a tensor, an unhashable object) is exported as usual, uncached;
* callers own and may mutate the pattern they receive (the subgraph
  rewriter reads it, torchao runs DCE on it), so every call gets a fresh
  deep copy, which keeps node names, targets, arguments and meta
  (``FakeTensor`` vals included);
* exporting a pattern does not consume the global RNG, so skipping the
  export does not shift any random stream.

The function is looked up in three namespaces, all patched:
``qat_utils`` and ``_xnnpack_quantizer_utils`` import it by name at module
import, while ``export_utils`` (``move_exported_model_to_eval``) imports it
from ``pt2e.utils`` inside each call, so patching ``pt2e.utils`` covers it.
``test_qat_differential.py`` proves the equivalence by comparing cached and
uncached torchao runs with ``assert_same_quantized``.
"""

from __future__ import annotations

import copy
import functools
import operator
import types
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import FakeQuantizeBase
from torchao.quantization.pt2e import move_exported_model_to_eval as torchao_move_to_eval
from torchao.quantization.pt2e import qat_utils as torchao_qat_utils
from torchao.quantization.pt2e import utils as torchao_pt2e_utils
from torchao.quantization.pt2e.export_utils import WrapperModule
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as torchao_convert_pt2e
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e as torchao_prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import Quantizer
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)
from torchao.testing.pt2e import _xnnpack_quantizer_utils as torchao_xnnpack_utils
from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

from .compare import is_qdq_node, op_multiset

Batch = tuple[torch.Tensor, ...]

BATCH_NORM = "aten.batch_norm.default"


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ConvKind:
    """A conv flavour: its module, the batch norm that follows it, and an input shape for it."""

    name: str
    conv: type[nn.Module]
    batch_norm: type[nn.Module]
    input_shape: tuple[int, ...]


CONV_KINDS: dict[str, ConvKind] = {
    kind.name: kind
    for kind in (
        ConvKind("conv1d", nn.Conv1d, nn.BatchNorm1d, (2, 3, 8)),
        ConvKind("conv2d", nn.Conv2d, nn.BatchNorm2d, (2, 3, 6, 6)),
        ConvKind("conv_transpose1d", nn.ConvTranspose1d, nn.BatchNorm1d, (2, 3, 8)),
        ConvKind("conv_transpose2d", nn.ConvTranspose2d, nn.BatchNorm2d, (2, 3, 6, 6)),
        ConvKind("conv3d", nn.Conv3d, nn.BatchNorm3d, (2, 3, 4, 4, 4)),
    )
}
"""The four conv types torchao fuses, then conv3d, which it does not."""


class ConvBn(nn.Module):
    """conv -> batch_norm [-> relu]: the unit torchao's QAT fusion rewrites."""

    def __init__(self, conv: nn.Module, batch_norm: nn.Module, relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.bn = batch_norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return torch.relu(y) if self.relu else y


class LinearBn(nn.Module):
    """linear -> BatchNorm1d -> relu on 2-D input: prepare_qat_pt2e has no linear-bn fusion."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.linear(x)))


class _ResidualBlock(nn.Module):
    """conv3x3 -> bn -> relu, plus the skip (as benchmarks/ptq.py's ResidualCNN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x


class ResidualCNN(nn.Module):
    """Stem conv, residual conv-bn-relu blocks, global pool, linear head."""

    def __init__(self, blocks: int = 2, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResidualBlock(channels) for _ in range(blocks)))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MobileNetStyle(nn.Module):
    """Stem conv-bn-relu, two depthwise-separable blocks (the first with a linear-bottleneck skip), head.

    Depthwise convs (groups = channels) and bias-free conv-bn pairs are the
    MobileNet ingredients; one ReLU6 (exported as hardtanh) is not a relu, so
    that pair is a conv-bn followed by an unrelated op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.dw1 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw1_bn = nn.BatchNorm2d(8)
        self.pw1 = nn.Conv2d(8, 8, 1, bias=False)
        self.pw1_bn = nn.BatchNorm2d(8)
        self.dw2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.dw2_bn = nn.BatchNorm2d(8)
        self.pw2 = nn.Conv2d(8, 16, 1)
        self.pw2_bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU6()
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.pw1_bn(self.pw1(torch.relu(self.dw1_bn(self.dw1(x))))) + x
        x = self.act(self.dw2_bn(self.dw2(x)))
        x = torch.relu(self.pw2_bn(self.pw2(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomize_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so the fold changes the weights."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)


def seeded(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """Factory for `build()` with weights and batch-norm state fixed by `seed`, in train mode.

    The global RNG is forked so that building a model never perturbs a test.
    """

    def factory() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
        randomize_batch_norms(model, torch.Generator().manual_seed(seed + 10_000))
        return model.train()

    return factory


@dataclass(frozen=True, eq=False)
class QATCase:
    """One model for the QAT comparison, with everything needed to export and train it.

    `conv` names the conv kind of a single conv-bn model (it keys the
    per-quantizer gap table).  `torchao_gap` says why torchao's flow is no
    reference for this model under any quantizer (None when torchao folds it
    wherever the quantizer annotates the conv).  `seed` fixes the example
    inputs; the factory carries the weight seed.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    conv: str | None = None
    torchao_gap: str | None = None
    export_train: bool = True
    seed: int = 0
    example_inputs: Batch = field(init=False)

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.seed + 20_000)
        object.__setattr__(self, "example_inputs", (torch.randn(self.input_shape, generator=generator),))

    @functools.cached_property
    def output_shape(self) -> torch.Size:
        """Shape of the model output, from a throwaway eval-mode instance."""
        with torch.no_grad():
            return self.factory().eval()(*self.example_inputs).shape

    def training_data(self, steps: int, seed: int = 1) -> list[TrainingBatch]:
        """`steps` seeded (inputs, target) batches, the same for both flows."""
        generator = torch.Generator().manual_seed(seed)
        return [
            TrainingBatch(
                inputs=(torch.randn(self.input_shape, generator=generator),),
                target=torch.randn(self.output_shape, generator=generator),
            )
            for _ in range(steps)
        ]

    def export(self) -> GraphModule:
        """Export a fresh instance in train mode (or eval mode) and return the unlifted module."""
        model = self.factory()
        model.train(self.export_train)
        return torch.export.export(model, self.example_inputs).module()

    def __repr__(self) -> str:
        return f"QATCase({self.name!r})"


@dataclass(frozen=True)
class TrainingBatch:
    inputs: Batch
    target: torch.Tensor


def _conv_bn_case(kind: ConvKind, bias: bool, relu: bool, seed: int) -> QATCase:
    def build() -> nn.Module:
        conv = kind.conv(3, 4, 3, padding=1, bias=bias)
        return ConvBn(conv, kind.batch_norm(4), relu)

    name = f"{kind.name}_{'bias' if bias else 'nobias'}_{'bn_relu' if relu else 'bn'}"
    return QATCase(name, seeded(build, seed), kind.input_shape, conv=kind.name, seed=seed)


def _matrix_cases() -> list[QATCase]:
    cases = []
    for kind_name in ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"):
        for bias in (True, False):
            for relu in (False, True):
                cases.append(_conv_bn_case(CONV_KINDS[kind_name], bias, relu, seed=len(cases)))
    cases.append(QATCase("residual_cnn", seeded(ResidualCNN, 100), (2, 3, 8, 8), seed=100))
    cases.append(
        QATCase(
            "residual_cnn_eval_export", seeded(ResidualCNN, 101), (2, 3, 8, 8), export_train=False, seed=101
        )
    )
    cases.append(QATCase("mobilenet_style", seeded(MobileNetStyle, 102), (2, 3, 8, 8), seed=102))
    return cases


def _gap_cases() -> list[QATCase]:
    def same_padding() -> nn.Module:
        return ConvBn(nn.Conv2d(3, 4, 3, padding="same"), nn.BatchNorm2d(4), relu=True)

    def conv3d() -> nn.Module:
        return ConvBn(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), relu=True)

    def custom_eps_momentum() -> nn.Module:
        return ConvBn(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3, momentum=0.3), relu=True)

    return [
        QATCase(
            "conv2d_padding_same",
            seeded(same_padding, 200),
            (2, 3, 6, 6),
            conv="conv2d",
            torchao_gap="padding='same' exports to aten.conv2d.padding, which torchao's conv-bn patterns do not match",
        ),
        QATCase(
            "conv3d_bn",
            seeded(conv3d, 201),
            CONV_KINDS["conv3d"].input_shape,
            conv="conv3d",
            torchao_gap="torchao fuses conv1d/conv2d/conv_transpose1d/conv_transpose2d with bn, not conv3d",
        ),
        QATCase(
            "linear_bn1d",
            seeded(LinearBn, 202),
            (4, 6),
            torchao_gap="prepare_qat_pt2e has no linear-bn fusion (PTQ's _fuse_linear_bn_ is not called)",
        ),
        QATCase(
            "conv2d_bn_eps_momentum",
            seeded(custom_eps_momentum, 203),
            (2, 3, 6, 6),
            conv="conv2d",
            torchao_gap="torchao simulates, trains and folds with eps 1e-5 and momentum 0.1, not the bn's own 1e-3/0.3",
        ),
    ]


MATRIX_CASES: dict[str, QATCase] = {case.name: case for case in _matrix_cases()}
"""Conv-bn(-relu) for the four fused conv types with and without conv bias, and two small CNNs."""

GAP_CASES: dict[str, QATCase] = {case.name: case for case in _gap_cases()}
"""Models whose batch norm torchao's QAT flow never folds, whatever the quantizer."""


# --------------------------------------------------------------------------- quantizer configs


@dataclass(frozen=True)
class QATConfig:
    """A QAT quantizer recipe, rebuilt per use: quantizers carry mutable per-module settings."""

    name: str
    build: Callable[[], Quantizer]


def _x86() -> Quantizer:
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))


def _xnnpack(is_per_channel: bool) -> Quantizer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "XNNPACKQuantizer is deprecated")
        quantizer = XNNPACKQuantizer()
    return quantizer.set_global(get_symmetric_quantization_config(is_per_channel=is_per_channel, is_qat=True))


def _symmetric(per_channel: bool) -> Quantizer:
    from plugins.quantizers import symmetric

    return symmetric(per_channel=per_channel, qat=True)


QAT_CONFIGS: dict[str, QATConfig] = {
    config.name: config
    for config in (
        QATConfig("x86", _x86),
        QATConfig("xnnpack-per-channel", functools.partial(_xnnpack, True)),
        QATConfig("xnnpack-per-tensor", functools.partial(_xnnpack, False)),
        QATConfig("symmetric-per-channel", functools.partial(_symmetric, True)),
        QATConfig("symmetric-per-tensor", functools.partial(_symmetric, False)),
    )
}
"""X86 (per-channel weights only), torchao's XNNPACK test quantizer and the project's own quantizer."""


def make_qat_quantizer(config_name: str) -> Quantizer:
    """Build a fresh quantizer for the named QAT config."""
    return QAT_CONFIGS[config_name].build()


# --------------------------------------------------------------------------- which pairs torchao folds

_X86_CONV2D_ONLY = (
    "X86InductorQuantizer's QAT annotators cover conv2d only: the {} is fused in prepare but has no "
    "weight q/dq, so convert cannot fold it and keeps the simulation and the batch_norm"
)
_NO_CONV_TRANSPOSE = (
    "the symmetric quantizer does not annotate conv_transpose (its weight spec's ch_axis=0 is wrong "
    "there), so torchao cannot fold the fused pair and keeps the simulation and the batch_norm"
)

_TORCHAO_KEEPS_BATCH_NORM: dict[tuple[str, str], str] = {
    **{
        ("x86", kind): _X86_CONV2D_ONLY.format(kind)
        for kind in ("conv1d", "conv_transpose1d", "conv_transpose2d")
    },
    **{
        (config, kind): _NO_CONV_TRANSPOSE
        for config in ("symmetric-per-channel", "symmetric-per-tensor")
        for kind in ("conv_transpose1d", "conv_transpose2d")
    },
}
"""(config, conv kind) pairs whose torchao-converted graph keeps a batch_norm; found by running torchao."""

_QUANTIZER_REJECTS: dict[tuple[str, str], str] = {
    ("x86", "conv2d_padding_same"): (
        "X86InductorQuantizer.annotate raises 'conv2d is not an aten conv2d operator' on aten.conv2d.padding"
    ),
}
"""(config, case) pairs whose quantizer raises while annotating: no flow gets past prepare."""


_LAYER_OUTPUT_QUANTIZED: dict[tuple[str, str], str] = {
    (config, "linear_bn1d"): (
        "torchao's XNNPACK test quantizer has no linear-bn pattern and quantizes the linear's output, "
        "so the batch norm reads a dequantized tensor and cannot be folded into the linear"
    )
    for config in ("xnnpack-per-channel", "xnnpack-per-tensor")
}
"""(config, case) pairs our flow must refuse to fold: the quantizer quantizes the layer's output."""


def unfoldable_reason(config_name: str, case: QATCase) -> str | None:
    """Why no flow may fold `case`'s batch norm under `config_name`, or None."""
    return _LAYER_OUTPUT_QUANTIZED.get((config_name, case.name))


def torchao_gap_reason(config_name: str, case: QATCase) -> str | None:
    """Why torchao's result for `case` under `config_name` is no reference, or None.

    The reason is that torchao keeps a batch_norm in the converted graph
    (every pair of the table, and every gap model but one), or, for the
    custom eps/momentum model, that it folds with constants that are not the
    model's.  None means the pair is compared with torchao op for op;
    otherwise our result is checked against our own fake-quantized model.
    """
    if case.torchao_gap is not None:
        return case.torchao_gap
    if case.conv is None:
        return None
    return _TORCHAO_KEEPS_BATCH_NORM.get((config_name, case.conv))


def quantizer_rejects_reason(config_name: str, case: QATCase) -> str | None:
    """Why `config_name`'s quantizer cannot annotate `case` at all, or None."""
    return _QUANTIZER_REJECTS.get((config_name, case.name))


# --------------------------------------------------------------------------- pattern-export cache


@dataclass
class PatternCache:
    """Exported torchao patterns by key, with hit and miss counts (see the module docstring)."""

    entries: dict[Hashable, GraphModule] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    uncacheable: int = 0


PATTERN_CACHE = PatternCache()
"""Shared by the whole test session: the patterns do not depend on the model."""

_PATTERN_NAMESPACES = (torchao_pt2e_utils, torchao_qat_utils, torchao_xnnpack_utils)
_PATTERN_FUNCTION = "_get_aten_graph_module_for_pattern"


class _Uncacheable(Exception):
    """A pattern input the cache key cannot represent exactly."""


def _freeze(value: Any) -> Hashable:
    """An exact, hashable stand-in for a value a pattern closes over or receives."""
    if value is None or isinstance(value, (bool, int, str, torch.dtype, torch.device)):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_freeze(item) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((key, _freeze(item)) for key, item in value.items())))
    if isinstance(value, types.FunctionType):
        return _function_key(value)
    if isinstance(value, (types.BuiltinFunctionType, torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return ("builtin", value)
    raise _Uncacheable(type(value).__name__)


def _function_key(function: types.FunctionType) -> Hashable:
    closure = tuple(_freeze(cell.cell_contents) for cell in function.__closure__ or ())
    return (
        "function",
        function.__module__,
        function.__code__,
        closure,
        _freeze(function.__defaults__),
        _freeze(function.__kwdefaults__),
    )


def pattern_key(
    pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict[str, Any]
) -> Hashable:
    """Everything that decides the graph `_get_aten_graph_module_for_pattern` exports.

    Raises `_Uncacheable` when some part cannot be keyed exactly.
    """
    if isinstance(pattern, WrapperModule):
        callee = ("wrapper", pattern.training, _freeze(pattern.fn))
    elif isinstance(pattern, types.FunctionType):
        callee = _freeze(pattern)
    else:
        raise _Uncacheable(type(pattern).__name__)
    return (
        callee,
        _freeze(tuple(example_inputs)),
        bool(is_cuda),
        _freeze(kwargs),
        torch.is_grad_enabled(),
        torch.get_default_dtype(),
    )


@contextmanager
def cached_pattern_exports(cache: PatternCache = PATTERN_CACHE) -> Iterator[PatternCache]:
    """Memoize torchao's pattern exports inside the block; each call still gets its own deep copy."""
    original = torchao_pt2e_utils._get_aten_graph_module_for_pattern

    def cached(
        pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any
    ) -> GraphModule:
        try:
            key = pattern_key(pattern, example_inputs, is_cuda, kwargs)
        except _Uncacheable:
            cache.uncacheable += 1
            return original(pattern, example_inputs, is_cuda, **kwargs)
        if key in cache.entries:
            cache.hits += 1
        else:
            cache.misses += 1
            cache.entries[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)
            return copy.deepcopy(cache.entries[key])

    saved = [(namespace, getattr(namespace, _PATTERN_FUNCTION)) for namespace in _PATTERN_NAMESPACES]
    for namespace, _ in saved:
        setattr(namespace, _PATTERN_FUNCTION, cached)
    try:
        yield cache
    finally:
        for namespace, function in saved:
            setattr(namespace, _PATTERN_FUNCTION, function)


# --------------------------------------------------------------------------- the flows


@dataclass(frozen=True, eq=False)
class QATRun:
    """What one QAT flow produced.

    `losses` and `outputs` are the loss and the prepared model's output at
    each training step.  `fake_quant` is a copy of the prepared model taken
    after the move to eval mode, with every fake-quantize's observer
    disabled: it computes the trained fake-quant numerics (with the
    scale/zero point the last training step left) without moving the
    statistics convert reads.  `converted` is the result of convert.
    """

    losses: list[torch.Tensor]
    outputs: list[torch.Tensor]
    fake_quant: GraphModule
    converted: GraphModule


def train(
    prepared: GraphModule, steps: int, data: list[TrainingBatch]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`steps` SGD steps (lr 0.01, no momentum) on MSE to the targets; returns losses and outputs per step."""
    if len(data) < steps:
        raise ValueError(f"{steps} training steps need {steps} batches, got {len(data)}")
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.01)
    losses, outputs = [], []
    for batch in data[:steps]:
        optimizer.zero_grad()
        output = prepared(*batch.inputs)
        loss = F.mse_loss(output, batch.target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().clone())
        outputs.append(output.detach().clone())
    return losses, outputs


def frozen_fake_quant(prepared: GraphModule) -> GraphModule:
    """A copy of `prepared` whose fake-quantizes keep their current qparams when run."""
    frozen = copy.deepcopy(prepared)
    for module in frozen.modules():
        if isinstance(module, FakeQuantizeBase):
            module.disable_observer()
    return frozen


def run_qat(
    graph_module: GraphModule,
    quantizer: Quantizer,
    steps: int,
    data: list[TrainingBatch],
    *,
    prepare: Callable[[GraphModule, Quantizer], GraphModule],
    move_to_eval: Callable[[GraphModule], Any],
    convert: Callable[[GraphModule], GraphModule],
    seed: int = 0,
) -> QATRun:
    """prepare -> train -> move to eval -> convert on a deep copy of `graph_module`."""
    torch.manual_seed(seed)
    prepared = prepare(copy.deepcopy(graph_module), quantizer)
    losses, outputs = train(prepared, steps, data)
    move_to_eval(prepared)
    fake_quant = frozen_fake_quant(prepared)
    return QATRun(losses, outputs, fake_quant, convert(prepared))


def torchao_qat(
    graph_module: GraphModule,
    quantizer: Quantizer,
    steps: int,
    data: list[TrainingBatch],
    *,
    cached: bool = True,
) -> QATRun:
    """torchao 0.18's QAT flow; `cached=False` runs it with torchao's own pattern exports."""
    flow = functools.partial(
        run_qat,
        graph_module,
        quantizer,
        steps,
        data,
        prepare=torchao_prepare_qat_pt2e,
        move_to_eval=torchao_move_to_eval,
        convert=torchao_convert_pt2e,
    )
    if not cached:
        return flow()
    with cached_pattern_exports():
        return flow()


def our_qat(graph_module: GraphModule, quantizer: Quantizer, steps: int, data: list[TrainingBatch]) -> QATRun:
    """The same flow through ``pipeline.pt2e`` and ``plugins.train_eval``.

    Imported on call so that the torchao side still collects and runs while
    our QAT stages are being written.  The pattern cache is on here too: the
    only torchao pattern exports on our side are the XNNPACK test
    quantizer's own annotators, which the cache leaves unchanged.
    """
    from pipeline.pt2e import convert_pt2e, prepare_qat_pt2e
    from plugins.train_eval import move_exported_model_to_eval

    with cached_pattern_exports():
        return run_qat(
            graph_module,
            quantizer,
            steps,
            data,
            prepare=prepare_qat_pt2e,
            move_to_eval=move_exported_model_to_eval,
            convert=convert_pt2e,
        )


# --------------------------------------------------------------------------- graph inspection

_WEIGHTED_OPS = frozenset(
    {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear"}
)
_STEP_PRESERVING = frozenset({"relu", "relu_", "dequantize_per_tensor"})
"""Ops between the last quantize and the output that cannot widen a one-step difference."""


def _op_name(node: Node) -> str | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    return node.target._opname


def weighted_op_names(node: Node) -> str | None:
    """'conv2d', 'linear', ... for a conv or linear node, else None."""
    name = _op_name(node)
    return name if name in _WEIGHTED_OPS else None


def annotated_weight_ops(graph_module: GraphModule, quantizer: Quantizer) -> Counter[str]:
    """Conv/linear ops whose weight `quantizer` annotates, by op name (annotates a copy)."""
    with cached_pattern_exports():
        annotated = quantizer.transform_for_annotation(copy.deepcopy(graph_module))
        quantizer.annotate(annotated)
    found: Counter[str] = Counter()
    for node in annotated.graph.nodes:
        name = weighted_op_names(node)
        annotation = node.meta.get("quantization_annotation")
        if name and annotation is not None and annotation.input_qspec_map.get(node.args[1]) is not None:
            found[name] += 1
    return found


def quantized_weight_ops(graph_module: GraphModule) -> Counter[str]:
    """Conv/linear ops whose weight comes out of a dequantize, by op name."""
    found: Counter[str] = Counter()
    for node in graph_module.graph.nodes:
        name = weighted_op_names(node)
        weight = node.args[1] if name else None
        if (
            isinstance(weight, Node)
            and is_qdq_node(weight)
            and weight.target._opname.startswith("dequantize")
        ):
            found[name] += 1
    return found


def output_quantization_step(graph_module: GraphModule) -> float | None:
    """The scale of the quantize that last touches the (single) output, or None if there is none.

    Walks back from the output through dequantize and relu only: a float op
    in between (a linear head, a batch_norm) would rescale the error, and
    then no quantization step bounds the output.
    """
    (output,) = (node for node in graph_module.graph.nodes if node.op == "output")
    node = output.args[0]
    while isinstance(node, (tuple, list)) and len(node) == 1:
        node = node[0]
    while isinstance(node, Node):
        name = _op_name(node)
        if name == "quantize_per_tensor":
            return float(node.args[1])
        if name not in _STEP_PRESERVING:
            return None
        node = node.args[0]
    return None


def has_batch_norm(graph_module: GraphModule) -> bool:
    return op_multiset(graph_module)[BATCH_NORM] > 0


# --------------------------------------------------------------------------- assertions


def describe_difference(
    ours: torch.Tensor, reference: torch.Tensor, names: tuple[str, str] = ("ours", "reference")
) -> str:
    """How many elements differ, the largest gap and the first differing element."""
    mine, theirs = names
    if ours.shape != reference.shape or ours.dtype != reference.dtype:
        return f"{mine} {tuple(ours.shape)} {ours.dtype}, {theirs} {tuple(reference.shape)} {reference.dtype}"
    differs = ours != reference
    first = tuple(int(i) for i in differs.nonzero()[0])
    gap = (ours.double() - reference.double()).abs().max().item()
    return (
        f"{int(differs.sum())} of {ours.numel()} elements differ, max |diff| {gap!r}; first at {first}: "
        f"{mine} {ours[first].item()!r}, {theirs} {reference[first].item()!r}"
    )


def training_differences(ours: QATRun, reference: QATRun, inputs: list[Batch]) -> list[str]:
    """Where the two prepared models parted during training or in eval mode (empty if nowhere).

    Compares the loss and output of every step, then the eval-mode fake-quant
    outputs on `inputs` (which also checks the move to eval mode).
    """
    lines = []
    if len(ours.losses) != len(reference.losses):
        lines.append(f"ours trained {len(ours.losses)} steps, reference {len(reference.losses)}")
    for step, (mine, theirs) in enumerate(zip(ours.losses, reference.losses, strict=False)):
        if not torch.equal(mine, theirs):
            lines.append(f"step {step}: loss ours {mine.item()!r}, reference {theirs.item()!r}")
    for step, (mine, theirs) in enumerate(zip(ours.outputs, reference.outputs, strict=False)):
        if not torch.equal(mine, theirs):
            lines.append(f"step {step}: prepared output: {describe_difference(mine, theirs)}")
    for index, batch in enumerate(inputs):
        with torch.no_grad():
            mine, theirs = ours.fake_quant(*batch), reference.fake_quant(*batch)
        if not torch.equal(mine, theirs):
            lines.append(f"eval-mode prepared output on input {index}: {describe_difference(mine, theirs)}")
    return lines


def assert_same_training(ours: QATRun, reference: QATRun, inputs: list[Batch]) -> None:
    """Assert both prepared models trained bit-identically and agree in eval mode."""
    lines = training_differences(ours, reference, inputs)
    if lines:
        raise AssertionError("prepared models differ from the torchao reference\n  " + "\n  ".join(lines))


def largest_weight_step(graph_module: GraphModule) -> float:
    """The largest scale among the dequantized conv/linear weights (0.0 if none is quantized)."""
    largest = 0.0
    for node in graph_module.graph.nodes:
        weight = node.args[1] if weighted_op_names(node) else None
        if not (isinstance(weight, Node) and is_qdq_node(weight)):
            continue
        scale = weight.args[1]
        if isinstance(scale, Node):
            scale = operator.attrgetter(scale.target)(graph_module)
        largest = max(largest, float(torch.as_tensor(scale).max()))
    return largest


def fake_quant_tolerance(converted: GraphModule, batch: Batch) -> tuple[float, str]:
    """How far a correct fold may move one output element from the fake-quant model, and why.

    With a quantized output, one output quantization step: the scale of the
    quantize op feeding the output (`output_quantization_step`).  Folding
    with `fuse_conv_bn_weights` instead of the simulation's formula may flip
    the rounding of a weight or of an output, and a flipped output rounding
    moves it by exactly one step (torchao's own single conv-bn results are
    at most one step from their fake-quant model).  With a float output, one
    flipped weight rounding: the largest weight scale times the largest
    input magnitude, which bounds one flip for the single-layer gap models
    (their layer reads the model input).  Float32 rounding comes on top.
    """
    step = output_quantization_step(converted)
    if step is not None:
        return step * (1 + 1e-4), f"one output quantization step ({step!r})"
    flip = largest_weight_step(converted) * max(float(x.abs().max()) for x in batch)
    return flip + 1e-5, f"one weight rounding flip ({flip!r}) plus float32 rounding"


def assert_matches_fake_quant(run: QATRun, inputs: list[Batch]) -> None:
    """Assert the converted model stays within `fake_quant_tolerance` of the fake-quant model."""
    for index, batch in enumerate(inputs):
        with torch.no_grad():
            converted, fake_quant = run.converted(*batch), run.fake_quant(*batch)
        bound, meaning = fake_quant_tolerance(run.converted, batch)
        gap = (converted.double() - fake_quant.double()).abs().max().item()
        assert gap <= bound, (
            f"input {index}: converted output is {gap!r} from the fake-quant model, more than "
            f"{meaning}; {describe_difference(converted, fake_quant, ('converted', 'fake-quant'))}"
        )


def float_behaviour_differences(
    prepared: GraphModule, case: QATCase, move_to_eval: Callable[[GraphModule], Any]
) -> list[str]:
    """How a prepared model with fake quantization switched off departs from the eager float model.

    One train-mode forward (batch statistics, running-stat update with the
    bn's momentum), then the move to eval mode and one eval forward (running
    statistics and the bn's eps).  A simulation or fold that hard-codes
    torchao's eps 1e-5 / momentum 0.1 shows up here; the simulation's
    rounding does not exceed float32 tolerance.
    """
    for module in prepared.modules():
        if isinstance(module, FakeQuantizeBase):
            module.disable_observer()
            module.disable_fake_quant()
    eager = case.factory()
    (batch,) = case.training_data(1, seed=3)
    lines = []
    with torch.no_grad():
        for mode, inputs in (("train", batch.inputs), ("eval", case.example_inputs)):
            if mode == "eval":
                move_to_eval(prepared)
                eager.eval()
            mine, theirs = prepared(*inputs), eager(*inputs)
            if not torch.allclose(mine, theirs, rtol=1e-5, atol=1e-6):
                lines.append(f"{mode} mode: {describe_difference(mine, theirs, ('prepared', 'eager'))}")
    return lines
