"""Quantized graphs lowered to ExecuTorch 1.5.1 with XNNPACK: every conv and linear delegated, and the
runtime computes what the Q/DQ graph computes (exactly, wherever torchao's graph lowers exactly too)."""

from __future__ import annotations

import warnings

import pytest
import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from executorch.exir import to_edge_transform_and_lower
from executorch.runtime import Runtime
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as torchao_convert
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as torchao_prepare

from pipeline.pt2e import convert_pt2e, prepare_pt2e
from plugins.quantizers import symmetric


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)) + x
        return self.head(x.mean((2, 3)))


class SmallTransformer(torch.nn.Module):
    """One pre-norm block: single-head self-attention and an MLP, with residuals."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 2 * width)
        self.down = torch.nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.down(torch.relu(self.up(self.norm2(x))))


def executorch_quantizer(per_channel: bool) -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))


QUANTIZERS = {
    "project-symmetric": lambda: symmetric(per_channel=True),
    "executorch-xnnpack": lambda: executorch_quantizer(per_channel=True),
}
MODELS = {"cnn": (SmallCNN, (1, 3, 8, 8)), "transformer": (SmallTransformer, (1, 6, 16))}
LAYERS = ("convolution", "linear", "addmm", "aten.mm", "aten.bmm")


def quantized_by(prepare, convert, model, inputs, quantizer, batches):
    prepared = prepare(torch.export.export(model, inputs).module(), quantizer)
    for batch in batches:
        prepared(*batch)
    return convert(prepared)


def lowered_output(graph_module: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(
            torch.export.export(graph_module, inputs), partitioner=[XnnpackPartitioner()]
        )
    left = [
        str(node.target)
        for node in edge.exported_program().graph_module.graph.nodes
        if node.op == "call_function" and any(layer in str(node.target) for layer in LAYERS)
    ]
    program = Runtime.get().load_program(edge.to_executorch().buffer)
    return program.load_method("forward").execute(list(inputs))[0], left


@pytest.mark.parametrize("quantizer_name", QUANTIZERS)
@pytest.mark.parametrize("model_name", MODELS)
def test_lowered_to_xnnpack_every_layer_is_delegated_and_the_runtime_agrees(model_name, quantizer_name):
    build, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = build().eval()
    inputs = (torch.randn(*shape),)
    batches = [(torch.randn(*shape),) for _ in range(4)]
    ours = quantized_by(prepare_pt2e, convert_pt2e, model, inputs, QUANTIZERS[quantizer_name](), batches)
    reference = quantized_by(
        torchao_prepare, torchao_convert, model, inputs, QUANTIZERS[quantizer_name](), batches
    )
    with torch.no_grad():
        expected = ours(*inputs)
        assert torch.equal(expected, reference(*inputs))
    got, left = lowered_output(ours, inputs)
    assert left == [], f"not delegated to XNNPACK: {left}"
    torchao_got, _ = lowered_output(reference, inputs)
    ours_gap = (got - expected).abs().max().item()
    torchao_gap = (torchao_got - reference(*inputs)).abs().max().item()
    assert ours_gap == 0.0 if torchao_gap == 0.0 else ours_gap <= torchao_gap
