"""Per-layer rules: per-example squared gradient norms from activations.

A rule computes, for one layer call, the per-example squared norm of the
gradient of each of the layer's trainable parameters, from the layer's input
activations ``A`` (captured by a forward hook) and the gradient ``G`` of the
summed loss with respect to the layer's output (captured by a tensor hook on
the output). Nothing of size ``B × P`` is ever formed, except where a rule
says so (the "materialize" branch below, one layer at a time, in chunks).

Rules are registered in a table keyed by module type, after Opacus'
``@register_grad_sampler``::

    @register_norm_rule(nn.Linear)
    def linear_rule(layer, inputs, grad_output, ctx) -> dict[str, Tensor]: ...

and receive:

    layer        the module,
    inputs       its positional inputs (detached; floating tensors in
                 ``ctx.dtype``; the batch dimension moved to dim 0),
    grad_output  the gradient of the summed loss w.r.t. its single tensor
                 output (``ctx.dtype``, batch at dim 0),
    ctx          a :class:`RuleContext`,

and return ``{parameter name: (B,) tensor}`` for the names in ``ctx.params``
(the layer's trainable parameters). The caller sums the entries; scaling for
the loss reduction is the caller's business (see ``norms.PerExampleNorms``).

A rule registered for a class also serves its subclasses **unless the
subclass overrides ``forward``** (then the rule might not describe what the
subclass computes, and the generic ``torch.func`` fallback is used instead).

Formulas (per example i; t, s index positions: sequence steps, or conv output
positions after im2col; A_it ∈ R^{d_in}, G_it ∈ R^{d_out}):

    Linear, one position:   ‖∇W‖² = ‖G_i‖² ‖A_i‖²        (rank one)
                            ‖∇b‖² = ‖G_i‖²
    Linear / conv, T > 1:   ∇W = Σ_t G_it A_itᵀ
        Gram:               ‖∇W‖²_F = Σ_{t,s} (G_it·G_is)(A_it·A_is)
                            cost ~ T²(d_in + d_out), memory T² per example
        materialize:        form ∇W (d_out × d_in) per example
                            cost ~ T d_in d_out, memory d_in d_out per example
        auto picks Gram iff T (d_in + d_out) ≤ d_in d_out (fewer flops).
                            ‖∇b‖² = ‖Σ_t G_it‖²
    Conv, groups g:         the sum above over groups, with d_in = C_in/g · Πk,
                            d_out = C_out/g.
    Embedding:              ‖∇E‖² = Σ_v ‖Σ_{t: idx_it = v} G_it‖², v ≠ padding_idx
    LayerNorm / RMSNorm /   x̂ = the normalized input (recomputed from A),
    GroupNorm / BatchNorm   ∇γ = Σ_{positions} G_i ⊙ x̂_i, ∇β = Σ_{positions} G_i
    (eval mode only for BatchNorm: in train mode it couples the examples of a
    batch and per-example gradients do not exist; see ``norms``.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NormsError",
    "UnsupportedModuleError",
    "CaptureError",
    "RuleContext",
    "NormRule",
    "SEQUENCE_METHODS",
    "register_norm_rule",
    "find_norm_rule",
    "registered_norm_rules",
]


# ------------------------------------------------------------------ errors ---


class NormsError(RuntimeError):
    """Base class of the errors raised by ``gdiv.torch`` per-example capture."""


class UnsupportedModuleError(NormsError):
    """A module whose per-example gradients cannot be computed (no rule and no
    fallback, the fallback failed, BatchNorm in train mode, ...). The message
    names the module by type and qualified name."""


class CaptureError(NormsError):
    """Norms were asked for in a state where none are available or they would
    be wrong (no backward yet, eval-mode backward, backward twice, a
    parameter that received a gradient outside its module's forward, ...)."""


# ----------------------------------------------------------------- the table ---

SEQUENCE_METHODS = ("auto", "gram", "materialize")


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """What a rule needs besides the tensors.

    Attributes:
        params: names (as in ``layer.named_parameters(recurse=False)``) of the
            trainable parameters to compute; others may be skipped.
        sequence_method: "auto", "gram" or "materialize" (see the module doc).
        workspace_bytes: soft cap on temporary memory; rules process the
            batch in chunks to stay under it (a chunk is at least 1 example).
        dtype: the compute dtype (float32, or float64 for float64 models).
        name: the layer's qualified name, for error messages.
    """

    params: FrozenSet[str]
    sequence_method: str = "auto"
    workspace_bytes: int = 256 << 20
    dtype: torch.dtype = torch.float32
    name: str = ""


NormRule = Callable[[nn.Module, Tuple[Tensor, ...], Tensor, RuleContext], Dict[str, Tensor]]

_RULES: Dict[Type[nn.Module], NormRule] = {}


def register_norm_rule(*module_types: Type[nn.Module]) -> Callable[[NormRule], NormRule]:
    """Register ``fn`` as the per-example squared-norm rule of ``module_types``.

    Example:
        >>> @register_norm_rule(MyScale)
        ... def scale_rule(layer, inputs, grad_output, ctx):
        ...     x, g = inputs[0], grad_output           # (B, d), (B, d)
        ...     return {"weight": (g * x).square().sum(1)}

    A later registration for the same type replaces the earlier one.
    """
    if not module_types:
        raise TypeError("register_norm_rule needs at least one module type")
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"register_norm_rule: {t!r} is not an nn.Module subclass")

    def deco(fn: NormRule) -> NormRule:
        for t in module_types:
            _RULES[t] = fn
        return fn

    return deco


def find_norm_rule(module: nn.Module) -> Optional[NormRule]:
    """The rule for ``module``: its type's, else the nearest registered base
    class whose ``forward`` the module's class does not override; else None."""
    cls = type(module)
    if cls in _RULES:
        return _RULES[cls]
    for base in cls.__mro__[1:]:
        if base in _RULES and cls.forward is base.forward:
            return _RULES[base]
    return None


def registered_norm_rules() -> Dict[Type[nn.Module], NormRule]:
    """A copy of the rule table."""
    return dict(_RULES)


# ------------------------------------------------------------- shared helpers ---


def _chunks(n: int, per_item_elems: int, itemsize: int, workspace_bytes: int) -> List[slice]:
    step = max(1, int(workspace_bytes // max(1, per_item_elems * itemsize)))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def sq_norm_of_outer_sums(a: Tensor, g: Tensor, ctx: RuleContext) -> Tensor:
    """For each n: ‖Σ_t g[n, t] a[n, t]ᵀ‖²_F, with a (N, T, d_in), g (N, T, d_out).

    T = 1 uses the rank-one identity; T > 1 uses the Gram trick or forms the
    matrix, by ``ctx.sequence_method`` (auto: whichever needs fewer flops).
    """
    n, t, d_in = a.shape
    d_out = g.shape[2]
    if t == 1:
        return g.square().sum((1, 2)) * a.square().sum((1, 2))
    method = ctx.sequence_method
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
            out[sl] = w.square().sum((1, 2))
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


# ------------------------------------------------------------------- Linear ---


@register_norm_rule(nn.Linear)
def _linear_rule(layer: nn.Linear, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    a = inputs[0]
    _need_batched(a, 2, layer, ctx)
    b = a.shape[0]
    a = a.reshape(b, -1, a.shape[-1])  # (B, T, d_in); T = 1 for 2-D inputs
    g = g.reshape(b, -1, g.shape[-1])
    out = {}
    if "weight" in ctx.params:
        out["weight"] = sq_norm_of_outer_sums(a, g, ctx)
    if "bias" in ctx.params:
        out["bias"] = g.sum(1).square().sum(1)
    return out


# --------------------------------------------------------------------- Conv ---


def conv_padding(layer: nn.modules.conv._ConvNd) -> List[Tuple[int, int]]:
    """(left, right) padding per spatial dim, as the layer's forward applies it
    (``padding="same"`` puts the odd extra element on the right, like torch)."""
    n = len(layer.kernel_size)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return [(0, 0)] * n
        pads = []
        for d, k in zip(layer.dilation, layer.kernel_size):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(p, p) for p in layer.padding]


def im2col(x: Tensor, layer: nn.modules.conv._ConvNd) -> Tensor:
    """Unfold (B, C, S_1..S_n) into (B, L, C·k_1···k_n), L = number of output
    positions, columns ordered like ``weight.reshape(C_out, -1)``.

    Works for any n (1-D, 2-D, 3-D) with stride, dilation, padding (numbers,
    "same", "valid") and every ``padding_mode``, through ``Tensor.unfold``.
    """
    n = x.dim() - 2
    pads = conv_padding(layer)
    if any(p for pair in pads for p in pair):
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last dim first
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, flat, mode=mode)
    for i in range(n):
        k, s, d = layer.kernel_size[i], layer.stride[i], layer.dilation[i]
        x = x.unfold(2 + i, d * (k - 1) + 1, s)  # window appended as the last dim
        if d > 1:
            x = x[..., ::d]
    # (B, C, L_1..L_n, k_1..k_n) -> (B, L_1..L_n, C, k_1..k_n)
    perm = [0] + list(range(2, 2 + n)) + [1] + list(range(2 + n, 2 + 2 * n))
    x = x.permute(perm)
    b = x.shape[0]
    positions = math.prod(x.shape[1 : 1 + n])
    return x.reshape(b, positions, -1)


@register_norm_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_rule(layer: nn.modules.conv._ConvNd, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    x = inputs[0]
    n_spatial = len(layer.kernel_size)
    _need_batched(x, n_spatial + 2, layer, ctx)
    b = x.shape[0]
    c_out = g.shape[1]
    gp = g.reshape(b, c_out, -1).transpose(1, 2)  # (B, L, C_out)
    out = {}
    if "weight" in ctx.params:
        cols = im2col(x, layer)  # (B, L, C_in·K)
        if cols.shape[1] != gp.shape[1]:  # pragma: no cover - a bug, not a user error
            raise AssertionError(
                f"gdiv.torch: im2col of '{ctx.name}' gives {cols.shape[1]} positions, output has {gp.shape[1]}"
            )
        groups = layer.groups
        positions = cols.shape[1]
        a = cols.reshape(b, positions, groups, -1).transpose(1, 2).reshape(b * groups, positions, -1)
        gg = gp.reshape(b, positions, groups, -1).transpose(1, 2).reshape(b * groups, positions, -1)
        out["weight"] = sq_norm_of_outer_sums(a, gg, ctx).reshape(b, groups).sum(1)
    if "bias" in ctx.params:
        out["bias"] = gp.sum(1).square().sum(1)
    return out


# ---------------------------------------------------------------- Embedding ---


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


# ---------------------------------------------------------- normalization ---


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
    # Train-mode BatchNorm is refused before its forward runs (norms.py); this
    # rule sees only the running-statistics (eval) case, which is per example.
    if layer.training or layer.running_mean is None:
        raise UnsupportedModuleError(batch_norm_message(layer, ctx.name))
    x = inputs[0]
    _need_batched(x, 2, layer, ctx)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    mean = layer.running_mean.to(ctx.dtype).reshape(shape)
    var = layer.running_var.to(ctx.dtype).reshape(shape)
    xhat = (x - mean) / torch.sqrt(var + layer.eps)
    return _affine_norms(layer, _channels_last(g), _channels_last(xhat), (x.shape[1],), ctx)


def batch_norm_message(layer: nn.Module, name: str) -> str:
    return (
        f"gdiv.torch: module '{name}' ({type(layer).__name__}) is in train mode and normalizes with "
        "batch statistics, which couple the examples of a batch: per-example gradients are not "
        "defined (for this layer and every layer before it). Use GroupNorm or LayerNorm, or put "
        "the BatchNorm layers in eval mode (running statistics; e.g. `m.eval()` for each BatchNorm "
        "after `model.train()`), or remove the per-example hooks for this model."
    )
