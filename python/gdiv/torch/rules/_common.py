"""Helpers shared by the rules: row norms, batch chunks under a workspace
budget, the Gram / materialize choice for sums of outer products, the
batch-dimension check."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModuleError
from ._registry import SEQUENCE_METHODS, RuleContext

# row_sq_norms: rows longer than _NORM_DIRECT elements are normed per block of
# _NORM_BLOCK elements.
_NORM_DIRECT = 1 << 14
_NORM_BLOCK = 1 << 11


def row_sq_norms(t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """(N,) squared Euclidean norms of the rows of ``t`` (N, ...), squared and
    summed in ``dtype`` (default: t's dtype).

    ``torch.linalg.vector_norm`` is one pass with no temporary: on large
    tensors an order of magnitude faster than ``t.square().sum(1)`` (a
    (256, 669706) float32 matrix: 23 ms against 283 ms). Its float32
    accumulation loses precision as rows grow (relative error of the squared
    norm 3e-7 at 784 elements, 7e-7 at 16k, 1.7e-5 at 670k, where
    ``square().sum`` stays at 1.5e-7), so rows longer than _NORM_DIRECT are
    normed per block of _NORM_BLOCK elements and the blocks' squares summed
    in ``dtype`` (2e-8 at 670k)."""
    n = t.shape[0]
    if t.dim() != 2:
        t = t.reshape(n, -1)
    dtype = dtype or t.dtype
    d = t.shape[1]
    if d <= _NORM_DIRECT:
        return torch.linalg.vector_norm(t, dim=1).to(dtype).square()
    full = d - d % _NORM_BLOCK
    blocks = torch.linalg.vector_norm(t[:, :full].reshape(n, -1, _NORM_BLOCK), dim=2)
    sq = blocks.to(dtype).square().sum(1)
    if full < d:
        sq += torch.linalg.vector_norm(t[:, full:], dim=1).to(dtype).square()
    return sq


def row_sq_norms64(t: Tensor) -> Tensor:
    """(B,) float64 squared norms of the rows of t (B, ...): ``vector_norm``
    in t's dtype (no temporary; ``t.square().sum(1)`` is an order of
    magnitude slower on large tensors), squared and summed in float64."""
    return row_sq_norms(t, torch.float64)


def _chunks(n: int, per_item_elems: int, itemsize: int, workspace_bytes: int) -> List[slice]:
    """Slices of range(n), each of at most workspace_bytes // (per_item_elems ·
    itemsize) items (at least 1), as few as that allows and of equal sizes
    (±1)."""
    step = max(1, int(workspace_bytes // max(1, per_item_elems * itemsize)))
    if step >= n:
        return [slice(0, n)]
    count = -(-n // step)
    bounds = [n * k // count for k in range(count + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(count)]


def sq_norm_of_outer_sums(a: Tensor, g: Tensor, ctx: RuleContext, method: Optional[str] = None) -> Tensor:
    """For each n: ‖Σ_t g[n, t] a[n, t]ᵀ‖²_F, with a (N, T, d_in), g (N, T, d_out).

    T = 1 uses the rank-one identity; T > 1 uses the Gram trick or forms the
    matrix, by ``method`` (default ``ctx.sequence_method``; auto: whichever
    needs fewer flops).
    """
    n, t, d_in = a.shape
    d_out = g.shape[2]
    if t == 1:
        return row_sq_norms(g) * row_sq_norms(a)
    method = method or ctx.sequence_method
    if method == "auto":
        method = "gram" if t * (d_in + d_out) <= d_in * d_out else "materialize"
    out = a.new_empty(n)
    if method == "gram":
        for sl in _chunks(n, 2 * t * t, a.element_size(), ctx.workspace_bytes):
            ga = torch.bmm(g[sl], g[sl].transpose(1, 2))  # (b, T, T)
            aa = torch.bmm(a[sl], a[sl].transpose(1, 2))
            out[sl] = (ga * aa).sum((1, 2))
    elif method == "materialize":
        for sl in _chunks(n, d_in * d_out, a.element_size(), ctx.workspace_bytes):
            w = torch.bmm(g[sl].transpose(1, 2), a[sl])  # (b, d_out, d_in)
            out[sl] = row_sq_norms(w)
    else:  # validated by the caller; keep the error for direct use
        raise ValueError(f"sequence_method must be one of {SEQUENCE_METHODS}, got {method!r}")
    return out


def _need_batched(x: Tensor, min_dim: int, layer: nn.Module, ctx: RuleContext) -> None:
    if x.dim() < min_dim:
        raise UnsupportedModuleError(
            f"gdiv.torch: module '{ctx.name}' ({type(layer).__name__}) got an input of shape "
            f"{tuple(x.shape)}; per-example norms need a batch dimension "
            f"(an input of at least {min_dim} dimensions)"
        )
