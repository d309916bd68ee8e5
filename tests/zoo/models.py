"""Small deterministic models that exercise the PT2E quantization flow.

Every case is tiny on purpose: the differential tests run each case through
torchao and through our flow under several quantizer configs, so the whole
zoo has to stay cheap.  Weights come from a fixed per-case seed and batch-norm
running statistics are randomised, so conv/bn folding is not a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._higher_order_ops.scan import scan
from torch._higher_order_ops.while_loop import while_loop

Batch = tuple[torch.Tensor, ...]
BatchMaker = Callable[[torch.Generator, int], Batch]


@dataclass(frozen=True, eq=False)
class ZooCase:
    """One model of the zoo with everything needed to export and calibrate it.

    `make_batch(generator, index)` draws the `index`-th input batch; it is the
    single source of inputs so that example inputs and calibration batches
    are reproducible from a seed alone.
    """

    name: str
    factory: Callable[[], nn.Module]
    make_batch: BatchMaker
    tags: frozenset[str]
    dynamic_shapes: Any | None = None
    example_seed: int = 0
    example_inputs: Batch = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "example_inputs", self.calibration_batches(1, self.example_seed)[0])

    def calibration_batches(self, n: int, seed: int) -> list[Batch]:
        """Return `n` input batches drawn deterministically from `seed`."""
        generator = torch.Generator().manual_seed(seed)
        return [self.make_batch(generator, index) for index in range(n)]

    def __repr__(self) -> str:
        return f"ZooCase({self.name!r})"


def _randn(*shape: int) -> BatchMaker:
    """Batch maker for models taking a single normally distributed tensor."""
    return lambda generator, _index: (torch.randn(shape, generator=generator),)


def _seeded(module_cls: type[nn.Module], seed: int) -> Callable[[], nn.Module]:
    """Factory building `module_cls` in eval mode with weights fixed by `seed`.

    The global RNG is forked so building a model never perturbs other tests.
    """

    def factory() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = module_cls()
            _randomize_batchnorm(model)
        return model.eval()

    return factory


def _randomize_batchnorm(model: nn.Module) -> None:
    """Give batch norms non-trivial statistics so folding changes the weights."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class ResidualCNN(nn.Module):
    """ResNet-like: conv-bn-relu stem, two skip-add blocks, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnRelu()
        self.block1 = _ResidualBlock(8)
        self.block2 = _ResidualBlock(8)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style: depthwise conv (groups=C) then pointwise conv, ReLU6/Hardtanh."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stem_act = nn.ReLU6()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.dw_act = nn.ReLU6()
        self.pointwise = nn.Conv2d(8, 16, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(16)
        self.pw_act = nn.Hardtanh(0.0, 6.0)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.dw_act(self.dw_bn(self.depthwise(x)))
        x = self.pw_act(self.pw_bn(self.pointwise(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block with attention spelled out as linear/matmul/softmax."""

    dim = 16
    heads = 2

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(self.dim)
        self.q = nn.Linear(self.dim, self.dim)
        self.k = nn.Linear(self.dim, self.dim)
        self.v = nn.Linear(self.dim, self.dim)
        self.proj = nn.Linear(self.dim, self.dim)
        self.norm2 = nn.LayerNorm(self.dim)
        self.fc1 = nn.Linear(self.dim, 2 * self.dim)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(2 * self.dim, self.dim)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = t.shape
        return t.view(batch, tokens, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        h = self.norm1(x)
        q, k, v = (self._split_heads(proj(h)) for proj in (self.q, self.k, self.v))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (self.dim // self.heads) ** -0.5
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, tokens, self.dim))
        return x + self.fc2(self.gelu(self.fc1(self.norm2(x))))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class DynamicQuantLinear(nn.Module):
    """Linear-only sequence model (3-D activations, bias and no-bias layers).

    Targets dynamic activation quantization, which only ever annotates linear.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32, bias=False)
        self.fc3 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class DynamicBatchConvLinear(nn.Module):
    """Conv feature extractor with a linear head, exported with a symbolic batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(x, 1))


class Conv1dBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class MaxPoolCatMul(nn.Module):
    """Two pooled conv branches concatenated, then gated by an elementwise mul."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = nn.functional.max_pool2d(self.left(x), 2)
        right = nn.functional.max_pool2d(self.right(x), 2)
        merged = torch.cat([left, right], dim=1)
        return merged * self.gate(merged)


class SeedObsSharingOps(nn.Module):
    """`Conv2dWithObsSharingOps` from the duplicate-DQ seed test.

    conv -> adaptive_avg_pool2d -> hardtanh -> view -> linear, where the
    pool/hardtanh/view outputs share the conv output's observer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.hardtanh = nn.Hardtanh()
        self.adaptive_avg_pool2d = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adaptive_avg_pool2d(self.conv(x))
        return self.linear(self.hardtanh(x).view(-1, 3))


class SeedSharedDQ(nn.Module):
    """`Conv2dWithSharedDQ` from the duplicate-DQ seed test.

    One conv output feeds a view+linear, a second conv, an add and a scalar
    mul, so its dequantize node has several users and must be duplicated.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.conv1(x)
        w = self.linear(x.view(-1, 3))
        y = self.conv2(x)
        return w, x + y, x * 2


class SeedDifferentQconfig(nn.Module):
    """`ModuleForDifferentQconfig` from the duplicate-DQ seed test.

    Like the shared-DQ model but with a pooled output and a scalar add.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.adaptive_avg_pool2d = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.conv1(x)
        w = self.adaptive_avg_pool2d(x)
        y = self.conv2(x)
        return w, x + y, x + 2


class WhileLoopLinear(nn.Module):
    """Applies the same linear+tanh three times inside `while_loop`.

    Exports to `higher_order.while_loop`; torchao prepares and converts the
    body subgraph recursively.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def cond_fn(step: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return step < 3

        def body_fn(step: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return step + 1, torch.tanh(self.fc(h))

        _, h = while_loop(cond_fn, body_fn, (torch.tensor(0), x))
        return h


class ScanRNN(nn.Module):
    """Elman-style recurrence over the leading dim with `scan`.

    Exports to `higher_order.scan`; torchao recurses into the combine graph.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def step(h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h_next = torch.relu(self.fc(x) + h)
            return h_next, h_next.clone()

        return scan(step, torch.zeros(xs.shape[1], 8), xs)


class CondBranches(nn.Module):
    """Data-dependent choice between two linears via `torch.cond`.

    Exports to `higher_order.cond`; torchao does not recurse into cond
    branches, so both branches stay floating point.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.positive = nn.Linear(8, 8)
        self.negative = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return torch.cond(h.sum() > 0, self.positive, self.negative, (h,))


def _varying_batch(*trailing: int, sizes: tuple[int, ...] = (4, 2, 7, 3)) -> BatchMaker:
    """Batch maker cycling through batch sizes to exercise a symbolic batch dim."""
    return lambda generator, index: (
        torch.randn((sizes[index % len(sizes)], *trailing), generator=generator),
    )


_BATCH = torch.export.Dim("batch", min=2, max=64)

_CASES = (
    ZooCase(
        "residual_cnn",
        _seeded(ResidualCNN, 1),
        _randn(1, 3, 12, 12),
        frozenset({"conv", "bn", "residual", "pool", "linear"}),
    ),
    ZooCase(
        "depthwise_separable",
        _seeded(DepthwiseSeparable, 2),
        _randn(1, 3, 16, 16),
        frozenset({"conv", "bn", "depthwise", "hardtanh", "pool", "linear"}),
    ),
    ZooCase(
        "conv_bn_relu",
        _seeded(ConvBnRelu, 3),
        _randn(1, 3, 8, 8),
        frozenset({"conv", "bn"}),
    ),
    ZooCase(
        "transformer_block",
        _seeded(TransformerBlock, 4),
        _randn(2, 6, TransformerBlock.dim),
        frozenset({"linear", "matmul", "attention", "layernorm", "residual"}),
    ),
    ZooCase("mlp", _seeded(MLP, 5), _randn(4, 16), frozenset({"linear"})),
    ZooCase(
        "seed_obs_sharing_ops",
        _seeded(SeedObsSharingOps, 6),
        _randn(1, 3, 5, 7),
        frozenset({"conv", "pool", "hardtanh", "view", "linear", "seed"}),
    ),
    ZooCase(
        "seed_shared_dq",
        _seeded(SeedSharedDQ, 7),
        _randn(1, 3, 5, 7),
        frozenset({"conv", "view", "linear", "shared-dq", "multi-output", "seed"}),
    ),
    ZooCase(
        "seed_different_qconfig",
        _seeded(SeedDifferentQconfig, 8),
        _randn(1, 3, 5, 7),
        frozenset({"conv", "pool", "shared-dq", "multi-output", "seed"}),
    ),
    ZooCase(
        "dynamic_quant_linear",
        _seeded(DynamicQuantLinear, 9),
        _randn(2, 5, 16),
        frozenset({"linear", "dynamic-quant"}),
    ),
    ZooCase(
        "dynamic_batch_conv_linear",
        _seeded(DynamicBatchConvLinear, 10),
        _varying_batch(3, 8, 8),
        frozenset({"conv", "bn", "linear", "dynamic-batch"}),
        dynamic_shapes=({0: _BATCH},),
    ),
    ZooCase(
        "conv1d",
        _seeded(Conv1dBlock, 11),
        _randn(1, 4, 16),
        frozenset({"conv", "conv1d", "bn"}),
    ),
    ZooCase(
        "maxpool_cat_mul",
        _seeded(MaxPoolCatMul, 12),
        _randn(1, 3, 8, 8),
        frozenset({"conv", "maxpool", "cat", "mul"}),
    ),
    ZooCase(
        "hop_while_loop",
        _seeded(WhileLoopLinear, 13),
        _randn(2, 8),
        frozenset({"hop", "while_loop", "linear"}),
    ),
    ZooCase(
        "hop_scan",
        _seeded(ScanRNN, 14),
        _randn(4, 2, 8),
        frozenset({"hop", "scan", "linear"}),
    ),
    ZooCase(
        "hop_cond",
        _seeded(CondBranches, 15),
        _randn(2, 8),
        frozenset({"hop", "cond", "linear"}),
    ),
)

CASES: dict[str, ZooCase] = {case.name: case for case in _CASES}


def cases_with_tag(tag: str) -> list[ZooCase]:
    """Return the zoo cases carrying `tag`, in zoo order."""
    return [case for case in _CASES if tag in case.tags]
