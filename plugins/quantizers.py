"""The quantizers offered by name: the project's own, torchao's X86 Inductor quantizer, and
ExecuTorch's XNNPACK quantizer when ExecuTorch is installed.

Each factory takes the options a command line can pass (``--option per_channel=false``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pipeline import Factory


def symmetric(per_channel: bool = True, dynamic: bool = False, qat: bool = False) -> Any:
    """The project's symmetric int8 quantizer (XNNPACK style)."""
    from plugins.quantizer import SymmetricConfig, SymmetricQuantizer

    return SymmetricQuantizer(SymmetricConfig(per_channel=per_channel, dynamic=dynamic, qat=qat))


def x86_inductor(dynamic: bool = False, qat: bool = False) -> Any:
    """torchao's quantizer for Inductor's oneDNN int8 kernels on x86."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=qat, is_dynamic=dynamic)
    return X86InductorQuantizer().set_global(config)


def xnnpack(per_channel: bool = True, dynamic: bool = False, qat: bool = False) -> Any:
    """ExecuTorch's XNNPACKQuantizer with its symmetric configuration."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic, is_qat=qat)
    return XNNPACKQuantizer().set_global(config)


QUANTIZERS = (
    Factory(
        "symmetric",
        symmetric,
        "pt2e-pipeline's symmetric int8 quantizer (XNNPACK style): int8 weights, int8 activations",
        {
            "per_channel": "quantize weights per output channel (default true) or per tensor",
            "dynamic": "quantize activations at run time (linear and conv only)",
            "qat": "fake-quantize for quantization-aware training",
        },
    ),
    Factory(
        "x86-inductor",
        x86_inductor,
        "torchao's X86InductorQuantizer: uint8 activations, int8 per-channel weights, for Inductor",
        {
            "dynamic": "quantize activations at run time",
            "qat": "fake-quantize for quantization-aware training",
        },
    ),
)

if importlib.util.find_spec("executorch") is not None:
    QUANTIZERS += (
        Factory(
            "xnnpack",
            xnnpack,
            "ExecuTorch's XNNPACKQuantizer (symmetric config): int8 weights and activations, for XNNPACK",
            {
                "per_channel": "quantize weights per output channel (default true) or per tensor",
                "dynamic": "quantize activations at run time",
                "qat": "fake-quantize for quantization-aware training",
            },
        ),
    )
