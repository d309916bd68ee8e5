"""The X86-quantized graph compiled by Inductor on CPU runs oneDNN's int8 kernels and matches the Q/DQ graph."""

from __future__ import annotations

import torch
import torch._inductor.config as inductor_config
from torch._inductor.utils import run_and_get_code

from pipeline.pt2e import quantize
from plugins.quantizers import x86_inductor


class ConvLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.linear(x.mean((2, 3)))


def test_inductor_with_freezing_lowers_to_onednn_int8_kernels_and_matches_the_qdq_graph():
    torch.manual_seed(0)
    model = ConvLinear().eval()
    inputs = (torch.randn(2, 3, 8, 8),)
    calibration = [(torch.randn(2, 3, 8, 8),) for _ in range(4)]
    quantized = quantize(model, inputs, quantizer=x86_inductor(), calibration=calibration).graph_module
    with torch.no_grad():
        expected = quantized(*inputs)
    torch._dynamo.reset()
    with inductor_config.patch(freezing=True), torch.no_grad():
        got, sources = run_and_get_code(torch.compile(quantized), *inputs)
    torch._dynamo.reset()
    code = "\n".join(sources)
    assert "onednn.qconv_pointwise" in code
    assert "onednn.qlinear_pointwise" in code
    assert "torch.ops.quantized_decomposed" not in code, "a Q/DQ pair was left to run in float"
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
