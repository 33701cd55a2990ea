"""Rules for the normalization layers' affine parameters: LayerNorm, RMSNorm,
GroupNorm, and BatchNorm in eval mode (running statistics)."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModuleError, batch_norm_message
from ._common import _need_batched
from ._registry import _RULE_PARAMS, RuleContext, register_norm_rule


def _affine_norms(layer, g: Tensor, xhat: Tensor, channel_shape: Sequence[int], ctx: RuleContext) -> Dict[str, Tensor]:
    """γ, β of an elementwise affine after normalization. ``g`` and ``xhat`` are
    arranged (B, R, *channel_shape); R indexes the positions summed over."""
    b = g.shape[0]
    g = g.reshape(b, -1, *channel_shape)
    out = {}
    if "weight" in ctx.params:
        out["weight"] = (g * xhat.reshape(g.shape)).sum(1).reshape(b, -1).square().sum(1)
    if "bias" in ctx.params:
        out["bias"] = g.sum(1).reshape(b, -1).square().sum(1)
    return out


@register_norm_rule(nn.LayerNorm)
def _layer_norm_rule(layer: nn.LayerNorm, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    x = inputs[0]
    shape = tuple(layer.normalized_shape)
    _need_batched(x, len(shape) + 1, layer, ctx)
    xhat = F.layer_norm(x, shape, None, None, layer.eps)
    return _affine_norms(layer, g, xhat, shape, ctx)


if hasattr(nn, "RMSNorm"):  # torch >= 2.4

    @register_norm_rule(nn.RMSNorm)
    def _rms_norm_rule(layer, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
        x = inputs[0]
        shape = tuple(layer.normalized_shape)
        _need_batched(x, len(shape) + 1, layer, ctx)
        xhat = F.rms_norm(x, shape, None, layer.eps)
        return _affine_norms(layer, g, xhat, shape, ctx)


def _channels_last(t: Tensor) -> Tensor:
    """(B, C, *S) -> (B, ΠS, C)."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


@register_norm_rule(nn.GroupNorm)
def _group_norm_rule(layer: nn.GroupNorm, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    x = inputs[0]
    _need_batched(x, 2, layer, ctx)
    xhat = F.group_norm(x, layer.num_groups, None, None, layer.eps)
    return _affine_norms(layer, _channels_last(g), _channels_last(xhat), (x.shape[1],), ctx)


@register_norm_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def _batch_norm_eval_rule(layer: nn.modules.batchnorm._BatchNorm, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    # Train-mode BatchNorm is refused before its forward runs (capture.py); this
    # rule sees only the running-statistics (eval) case, which is per example.
    if layer.training or layer.running_mean is None:
        raise UnsupportedModuleError(batch_norm_message(layer, ctx.name))
    x = inputs[0]
    _need_batched(x, 2, layer, ctx)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    mean = layer.running_mean.to(ctx.dtype).reshape(shape)
    assert layer.running_var is not None  # buffers kept together (track_running_stats)
    var = layer.running_var.to(ctx.dtype).reshape(shape)
    xhat = (x - mean) / torch.sqrt(var + layer.eps)
    return _affine_norms(layer, _channels_last(g), _channels_last(xhat), (x.shape[1],), ctx)


_RULE_PARAMS.update(
    {
        _layer_norm_rule: frozenset({"weight", "bias"}),
        _group_norm_rule: frozenset({"weight", "bias"}),
        _batch_norm_eval_rule: frozenset({"weight", "bias"}),
    }
)
if hasattr(nn, "RMSNorm"):
    _RULE_PARAMS[_rms_norm_rule] = frozenset({"weight"})
