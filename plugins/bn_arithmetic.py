"""The weights of a layer with the batch norm after it folded in.

torchao folds with ``torch.nn.utils.fusion.fuse_conv_bn_weights`` and
``fuse_linear_bn_weights``; using them (or, where they are wrong, the same
products in the same order) is what keeps folded weights bit-identical to
torchao's. A grouped transposed conv is the one place they are wrong: its
weight is ``(in, out / groups, *kernel)``, so the per-output-channel scale must
be laid out per group.
"""

from __future__ import annotations

import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from plugins.layers import Kind


def folded_weights(
    kind: Kind,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    groups: int = 1,
) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """The folded weight and bias, as new Parameters (the inputs are never written)."""
    if kind == "linear":
        return fuse_linear_bn_weights(
            weight,
            bias,
            mean,
            var,
            eps,
            gamma if gamma is not None else torch.ones_like(mean),
            beta if beta is not None else torch.zeros_like(mean),
        )
    transpose = kind == "conv_transpose"
    if transpose and groups != 1:
        return _grouped_transpose(weight, bias, mean, var, eps, gamma, beta, groups)
    return fuse_conv_bn_weights(weight, bias, mean, var, eps, gamma, beta, transpose=transpose)


def _grouped_transpose(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    groups: int,
) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """``fuse_conv_bn_weights``'s arithmetic for a transposed weight ``(in, out / groups, *k)``.

    Output channel ``g * (out / groups) + j`` reads column ``j`` of group ``g``'s
    rows, so the scale is laid out per group; each element is the same product.
    """
    weight_dtype = weight.dtype
    bias_dtype = bias.dtype if bias is not None else weight_dtype
    if bias is None:
        bias = torch.zeros_like(mean)
    if gamma is None:
        gamma = torch.ones_like(mean)
    if beta is None:
        beta = torch.zeros_like(mean)
    var_rsqrt = torch.rsqrt(var + eps)
    rows, per_group, *kernel = weight.shape
    grouped = weight.reshape(groups, rows // groups, per_group, *kernel)
    scale = (gamma * var_rsqrt).reshape(groups, 1, per_group, *[1] * len(kernel))
    fused_weight = (grouped * scale).reshape(weight.shape).to(dtype=weight_dtype)
    fused_bias = ((bias - mean) * var_rsqrt * gamma + beta).to(dtype=bias_dtype)
    return (
        torch.nn.Parameter(fused_weight, weight.requires_grad),
        torch.nn.Parameter(fused_bias, bias.requires_grad),
    )
