"""The rule for ``nn.Linear`` (rank one per position, Gram or materialized on
sequences), and its faster unit total."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ._common import _need_batched, row_sq_norms, sq_norm_of_outer_sums
from ._registry import _RULE_PARAMS, FUSED_TOTALS, RuleContext, register_norm_rule


@register_norm_rule(nn.Linear)
def _linear_rule(layer: nn.Linear, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    a = inputs[0]
    _need_batched(a, 2, layer, ctx)
    out = {}
    if a.dim() == 2:  # one position per example (the common case): rank one
        gsq = row_sq_norms(g)
        if "weight" in ctx.params:
            out["weight"] = gsq * row_sq_norms(a)
        if "bias" in ctx.params:
            out["bias"] = gsq
        return out
    b = a.shape[0]
    a = a.reshape(b, -1, a.shape[-1])  # (B, T, d_in)
    g = g.reshape(b, -1, g.shape[-1])
    if "weight" in ctx.params:
        out["weight"] = sq_norm_of_outer_sums(a, g, ctx)
    if "bias" in ctx.params:
        out["bias"] = row_sq_norms(g.sum(1))
    return out


def _linear_total(layer: nn.Linear, inputs, g: Tensor, ctx: RuleContext) -> Optional[Tensor]:
    """:func:`_linear_rule`'s entries summed, (B,) float64, in fewer ops, for
    2-D inputs (one position per example): ‖G_i‖² ‖A_i‖² (weight) + ‖G_i‖²
    (bias). None for other inputs (then the rule runs)."""
    a = inputs[0]
    if a.dim() != 2:
        return None
    g_sq = row_sq_norms(g)
    if "weight" not in ctx.params:
        total = g_sq
    elif "bias" in ctx.params:
        total = torch.addcmul(g_sq, g_sq, row_sq_norms(a))
    else:
        total = g_sq.mul_(row_sq_norms(a))
    return total.to(torch.float64)


FUSED_TOTALS[_linear_rule] = _linear_total
_RULE_PARAMS[_linear_rule] = frozenset({"weight", "bias"})
