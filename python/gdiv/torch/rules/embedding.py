"""The rule for ``nn.Embedding`` (rows summed per example and token, padding
row skipped; ``scale_grad_by_freq`` refused)."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModuleError
from ._common import _need_batched
from ._registry import _RULE_PARAMS, RuleContext, register_norm_rule


@register_norm_rule(nn.Embedding)
def _embedding_rule(layer: nn.Embedding, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    if layer.scale_grad_by_freq:
        raise UnsupportedModuleError(
            f"gdiv.torch: module '{ctx.name}' (Embedding) has scale_grad_by_freq=True, which scales "
            "gradients by token counts over the whole batch, so per-example gradients are not defined; "
            "use scale_grad_by_freq=False"
        )
    idx = inputs[0]
    _need_batched(idx, 1, layer, ctx)
    if "weight" not in ctx.params:
        return {}
    b = idx.shape[0]
    idx = idx.reshape(b, -1)
    dim = g.shape[-1]
    g = g.reshape(-1, dim)
    vocab = layer.num_embeddings
    example = torch.arange(b, device=idx.device).unsqueeze(1).expand_as(idx)
    keys = (example * vocab + idx).reshape(-1)
    if layer.padding_idx is not None:  # its row never receives a gradient
        keep = idx.reshape(-1) != layer.padding_idx
        keys, g = keys[keep], g[keep]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    rows = g.new_zeros(uniq.shape[0], dim).index_add_(0, inverse, g)  # Σ_t over equal (i, v)
    return {"weight": g.new_zeros(b).index_add_(0, uniq // vocab, rows.square().sum(1))}


_RULE_PARAMS[_embedding_rule] = frozenset({"weight"})
