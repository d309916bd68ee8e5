"""A quantized program saved as .pt2 loads with torch.export.load in a fresh process and computes the same.

The fresh process imports torch and torch's definition of the ``quantized_decomposed``
operators only: neither pt2e-pipeline nor torchao is needed to run what it wrote.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from pipeline.pt2e import quantize
from plugins.quantizers import symmetric, x86_inductor


class ConvLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.linear(x.mean((2, 3)))


LOAD_AND_RUN = textwrap.dedent(
    """
    import sys
    import torch
    import torch.ao.quantization.fx._decomposed  # the quantized_decomposed operators, torch's own
    program = torch.export.load(sys.argv[1])
    inputs = torch.load(sys.argv[2], weights_only=True)
    targets = sorted({str(node.target) for node in program.graph.nodes if node.op == "call_function"})
    torch.save({"output": program.module()(*inputs), "targets": targets}, sys.argv[3])
    """
)


def test_a_saved_quantized_program_runs_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = ConvLinear().eval()
    inputs = (torch.randn(2, 3, 8, 8),)
    for name, quantizer in (("symmetric", symmetric()), ("x86", x86_inductor())):
        quantized = quantize(model, inputs, quantizer=quantizer, calibration=[inputs]).graph_module
        program_path, inputs_path, result_path = (
            tmp_path / f"{name}.{suffix}" for suffix in ("pt2", "in", "out")
        )
        torch.export.save(torch.export.export(quantized, inputs), program_path)
        torch.save(inputs, inputs_path)
        subprocess.run(
            [sys.executable, "-c", LOAD_AND_RUN, str(program_path), str(inputs_path), str(result_path)],
            check=True,
            capture_output=True,
        )
        result = torch.load(result_path, weights_only=True)
        with torch.no_grad():
            assert torch.equal(result["output"], quantized(*inputs)), name
        assert "quantized_decomposed.quantize_per_tensor.default" in result["targets"], name
        assert "aten.batch_norm.default" not in result["targets"], name
