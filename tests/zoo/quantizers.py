"""Named torchao quantizer configurations used as references.

Each config is rebuilt on every request because quantizers carry mutable
per-module settings, and the same instance must never leak between tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torchao.quantization.pt2e.quantizer import Quantizer
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)
from torchao.testing.pt2e._xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)

from .models import ZooCase


@dataclass(frozen=True)
class QuantizerConfig:
    """A reference quantizer recipe: a name, how to build it, whether it is dynamic.

    XNNPACK's dynamic recipe uses per-channel weights, the usual dynamic-linear setup.
    """

    name: str
    build: Callable[[], Quantizer]
    is_dynamic: bool


def _x86(is_dynamic: bool) -> Quantizer:
    return X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=is_dynamic)
    )


def _xnnpack(is_per_channel: bool, is_dynamic: bool) -> Quantizer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "XNNPACKQuantizer is deprecated")
        quantizer = XNNPACKQuantizer()
    return quantizer.set_global(
        get_symmetric_quantization_config(is_per_channel=is_per_channel, is_dynamic=is_dynamic)
    )


CONFIGS: dict[str, QuantizerConfig] = {
    config.name: config
    for config in (
        QuantizerConfig("x86-static", partial(_x86, is_dynamic=False), is_dynamic=False),
        QuantizerConfig("x86-dynamic", partial(_x86, is_dynamic=True), is_dynamic=True),
        QuantizerConfig(
            "xnnpack-per-channel",
            partial(_xnnpack, is_per_channel=True, is_dynamic=False),
            is_dynamic=False,
        ),
        QuantizerConfig(
            "xnnpack-per-tensor",
            partial(_xnnpack, is_per_channel=False, is_dynamic=False),
            is_dynamic=False,
        ),
        QuantizerConfig(
            "xnnpack-dynamic",
            partial(_xnnpack, is_per_channel=True, is_dynamic=True),
            is_dynamic=True,
        ),
    )
}


def make_quantizer(config_name: str) -> Quantizer:
    """Build a fresh quantizer for the named config."""
    return CONFIGS[config_name].build()


_X86_HOP_BODY = (
    "X86InductorQuantizer finds linears through source partitions, which need "
    "nn_module_stack metadata that {} subgraph nodes do not carry"
)
_X86_LEAVES_UNTOUCHED = {
    "conv1d": "X86InductorQuantizer annotates conv2d only, not conv1d",
    "hop_while_loop": _X86_HOP_BODY.format("while_loop body"),
    "hop_scan": _X86_HOP_BODY.format("scan combine"),
}


def not_applicable_reason(config_name: str, case: ZooCase) -> str | None:
    """Why torchao leaves `case` unquantized under `config_name`, or None if it doesn't.

    Established by running every pair through torchao: these are exactly the
    pairs whose converted graph has no Q/DQ node.  They still make cheap
    negative tests (our flow must leave them untouched too), but they prove
    nothing about quantization itself.
    """
    if config_name == "xnnpack-dynamic" and "linear" not in case.tags:
        return "XNNPACK's dynamic config only annotates linear layers"
    if config_name.startswith("x86-") and case.name in _X86_LEAVES_UNTOUCHED:
        return _X86_LEAVES_UNTOUCHED[case.name]
    return None


def applies_to(config_name: str, case: ZooCase) -> bool:
    """Whether torchao inserts any quantization into `case` under `config_name`."""
    return not_applicable_reason(config_name, case) is None


def applicable_configs(case: ZooCase) -> list[str]:
    """Names of the configs that apply to `case`, in CONFIGS order."""
    return [name for name in CONFIGS if applies_to(name, case)]
