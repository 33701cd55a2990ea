"""Per-layer rules: per-example squared gradient norms from activations.

A rule computes, for one layer call, the per-example squared norm of the
gradient of each of the layer's trainable parameters, from the layer's input
activations ``A`` (captured by a forward hook) and the gradient ``G`` of the
summed loss with respect to the layer's output (captured by a hook on
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
                            d_out = C_out/g. "materialize" forms the per-example
                            weight gradients without im2col, by one grouped
                            convolution backward with the batch folded into the
                            channels (groups B·g), or, for layers with at most 4
                            input channels per group (first layers, where oneDNN's
                            grouped kernels are slow), by im2col (one strided
                            copy, plus a row of ones that yields the bias
                            gradients) and a batched matrix product; in chunks
                            of the batch whose temporaries are no larger than
                            the layer's input or output gradient (see
                            conv_per_example). Gram uses the same im2col. The
                            fused path (_fused) also sums the per-example
                            gradients into the batch gradient.
    Embedding:              ‖∇E‖² = Σ_v ‖Σ_{t: idx_it = v} G_it‖², v ≠ padding_idx
    LayerNorm / RMSNorm /   x̂ = the normalized input (recomputed from A),
    GroupNorm / BatchNorm   ∇γ = Σ_{positions} G_i ⊙ x̂_i, ∇β = Σ_{positions} G_i
    (eval mode only for BatchNorm: in train mode it couples the examples of a
    batch and per-example gradients do not exist; see ``norms``.)

Sums of squares over rows use ``torch.linalg.vector_norm`` (one pass, no
temporary; per block on long rows, see ``row_sq_norms``), then square the norm.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Type, Union

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


# The parameters each built-in rule computes. A module of such a type that
# owns other parameters (torch.nn.utils.prune's weight_orig, the old
# weight_norm's weight_g / weight_v: the weight is computed from them in a
# forward pre-hook) gets the torch.func fallback instead (find_norm_rule).
_RULE_PARAMS: Dict[NormRule, FrozenSet[str]] = {}


def find_norm_rule(module: nn.Module) -> Optional[NormRule]:
    """The rule for ``module``: its type's, else the nearest registered base
    class whose ``forward`` the module's class does not override; else None."""
    cls = type(module)
    cls = cls.__dict__.get("_gdiv_unfused", cls)  # a class swapped in by _fused: its base's rule
    rule = _RULES.get(cls)
    if rule is None:
        for base in cls.__mro__[1:]:
            if base in _RULES and cls.forward is base.forward:
                rule = _RULES[base]
                break
    known = _RULE_PARAMS.get(rule) if rule is not None else None
    if known is not None and not set(module._parameters) <= known:
        return None
    return rule


def registered_norm_rules() -> Dict[Type[nn.Module], NormRule]:
    """A copy of the rule table."""
    return dict(_RULES)


# ------------------------------------------------------------- shared helpers ---


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


# ------------------------------------------------------------------- Linear ---


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


# Internal: rule -> a faster function for callers that only need the sum of
# the rule's entries (the unit's total): fn(layer, inputs, grad_output, ctx)
# -> (B,) float64, or None for the cases it does not cover (then the rule
# runs). Keyed by the rule function: a rule the user registers for nn.Linear
# replaces the built-in one in the table, and with it this.
FUSED_TOTALS: Dict[NormRule, Callable[..., Optional[Tensor]]] = {_linear_rule: _linear_total}


# --------------------------------------------------------------------- Conv ---


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """What the convolution helpers below read of a conv layer, as tuples
    (:func:`conv_geometry`; a layer's attributes may be plain ints, which
    PyTorch's forward accepts). ``padding`` is a tuple of numbers or "same" /
    "valid", as on the layer. The fused path (``_fused``) makes one for the
    ``aten.convolution`` it runs on an input it may have padded itself
    (symmetric zero padding, numbers)."""

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Union[str, Tuple[int, ...]]
    dilation: Tuple[int, ...]
    groups: int
    padding_mode: str = "zeros"


def conv_geometry(layer) -> ConvGeometry:
    """The layer's arguments as a :class:`ConvGeometry` (itself if it is one)."""
    if isinstance(layer, ConvGeometry):
        return layer
    n = layer.weight.dim() - 2

    def tup(v) -> Tuple[int, ...]:
        return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * n

    return ConvGeometry(
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel_size=tup(layer.kernel_size),
        stride=tup(layer.stride),
        padding=layer.padding if isinstance(layer.padding, str) else tup(layer.padding),
        dilation=tup(layer.dilation),
        groups=layer.groups,
        padding_mode=layer.padding_mode,
    )


def _weight_shape(layer) -> Tuple[int, ...]:
    """(C_out, C_in/groups, k_1..k_n) of a conv layer or a ConvGeometry."""
    return (layer.out_channels, layer.in_channels // layer.groups) + tuple(layer.kernel_size)


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


def _pad_input(x: Tensor, layer: nn.modules.conv._ConvNd, keep_symmetric_zeros: bool) -> Tuple[Tensor, List[int]]:
    """The input padded as the layer's forward pads it, and the (symmetric,
    zero) padding still to apply. With ``keep_symmetric_zeros``, symmetric
    zero padding is left to the caller (a convolution applies it without a
    copy); otherwise all padding is applied here with ``F.pad``."""
    pad, mode, padding = _pad_args(layer, keep_symmetric_zeros)
    return (x if pad is None else F.pad(x, pad, mode=mode)), list(padding)


def _pad_args(layer, keep_symmetric_zeros: bool) -> Tuple[Optional[Tuple[int, ...]], str, Tuple[int, ...]]:
    """How :func:`_pad_input` pads: (F.pad's ``pad`` argument or None for no
    F.pad, its ``mode``, the symmetric zero padding left to the caller)."""
    pads = conv_padding(layer)
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    none = (0,) * len(pads)
    if not any(p for pair in pads for p in pair):
        return None, mode, none
    if keep_symmetric_zeros and layer.padding_mode == "zeros" and all(left == right for left, right in pads):
        return None, mode, tuple(left for left, _ in pads)
    return tuple(p for pair in reversed(pads) for p in pair), mode, none  # F.pad: last dim first


def _unfold_padded(x: Tensor, layer: nn.modules.conv._ConvNd) -> Tensor:
    """:func:`unfold_conv_input` of an input already padded: one strided view
    (B, C, k_1..k_n, L_1..L_n), copied once by the reshape."""
    view = _unfold_view(x, layer)
    return view.reshape(x.shape[0], -1, math.prod(view.shape[2 + (x.dim() - 2) :]))


def _unfold_view(x: Tensor, layer) -> Tensor:
    """The im2col of an input already padded as a strided view (no copy):
    (B, C, k_1..k_n, L_1..L_n)."""
    n = x.dim() - 2
    st = x.stride()
    out = [
        (x.shape[2 + i] - d * (k - 1) - 1) // s + 1
        for i, (k, s, d) in enumerate(zip(layer.kernel_size, layer.stride, layer.dilation))
    ]
    view = x.as_strided(
        tuple(x.shape[:2]) + tuple(layer.kernel_size) + tuple(out),
        (st[0], st[1])
        + tuple(st[2 + i] * layer.dilation[i] for i in range(n))
        + tuple(st[2 + i] * layer.stride[i] for i in range(n)),
        x.storage_offset(),
    )
    return view


def unfold_conv_input(x: Tensor, layer: nn.modules.conv._ConvNd) -> Tensor:
    """Unfold (B, C, S_1..S_n) into (B, C·k_1···k_n, L), L = number of output
    positions (``F.unfold``'s layout), rows ordered like
    ``weight.reshape(C_out, -1)``'s columns.

    Any n (1-D, 2-D, 3-D), stride, dilation, padding (numbers, "same",
    "valid") and ``padding_mode``: after padding, one strided view of the
    input, copied once."""
    layer = conv_geometry(layer)
    return _unfold_padded(_pad_input(x, layer, keep_symmetric_zeros=False)[0], layer)


def im2col(x: Tensor, layer: nn.modules.conv._ConvNd) -> Tensor:
    """(B, L, C·k_1···k_n): :func:`unfold_conv_input` transposed (a view)."""
    return unfold_conv_input(x, layer).transpose(1, 2)


def _shape_only(shape: Tuple[int, ...], *donors: Tensor) -> Tensor:
    """A contiguous tensor of ``shape`` whose values do not matter, for an
    argument an op reads only the shape of: a view of the first contiguous
    donor that is large enough (no allocation), else an uninitialized one.

    (The weight of a convolution backward that computes the weight gradient
    alone. An expanded 0-stride tensor looks cheaper but is not: the
    convolution copies its weight with ``.contiguous()``, a full-size copy —
    at batch 256 of a 16->32 3x3 layer, 6.0 ms against 2.7 ms.)"""
    n = math.prod(shape)
    for d in donors:
        if d.is_contiguous() and d.numel() >= n:
            return d.reshape(-1)[:n].view(shape)
    return donors[0].new_empty(shape)


def _conv_grads_grouped(layer: nn.modules.conv._ConvNd, x: Tensor, g: Tensor, padding: Sequence[int]) -> Tensor:
    """Per-example weight gradients (B, C_out, C_in/groups, k_1..k_n) by one
    grouped convolution backward, from the input ``x`` as :func:`_pad_input`
    leaves it and the zero ``padding`` still to apply. The batch is folded
    into the channels, input (1, B·C_in, S), output gradient (1, B·C_out, L),
    groups B·groups, so that the weight gradient of group (i, j) is example
    i's gradient of group j: the layer's own weight-gradient products, kept
    apart per example; memory B × the weight's size, no im2col. oneDNN runs
    it about as fast as the layer's own weight gradient when a group has
    several input channels (it is slow with 1-4)."""
    gw, _ = _conv_grads_grouped_bias(layer, x, g, padding, False)
    return gw.reshape((g.shape[0], g.shape[1]) + tuple(gw.shape[1:]))


def _conv_grads_grouped_bias(
    layer, x: Tensor, g: Tensor, padding: Sequence[int], bias: bool, weight_shape: Optional[Tuple[int, ...]] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`_conv_grads_grouped` as (B·C_out, C_in/groups, k_1..k_n), and with
    ``bias`` the per-example bias gradients (B·C_out,) from the same call."""
    b, c_out = g.shape[0], g.shape[1]
    weight_shape = weight_shape or _weight_shape(layer)
    weight = _shape_only((b * c_out,) + weight_shape[1:], g, x)  # only its shape is read
    _, gw, gb = torch.ops.aten.convolution_backward(
        g.reshape((1, b * c_out) + tuple(g.shape[2:])),
        x.reshape((1, b * x.shape[1]) + tuple(x.shape[2:])),
        weight,
        [b * c_out] if bias else None,
        list(layer.stride),
        list(padding),
        list(layer.dilation),
        False,
        [0] * len(padding),
        b * layer.groups,
        [False, True, bias],
    )
    return gw, gb


def _conv_grads_unfold(layer: nn.modules.conv._ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradients, transposed per group: (B·groups,
    C_in/groups·K, C_out/groups), from the fully padded input ``x``, by im2col
    and one batched matrix product. Memory B · C_in·K · L for the columns:
    for layers with few input channels per group (first layers), where it
    beats the grouped convolution."""
    b, groups = x.shape[0], layer.groups
    cols = _unfold_padded(x, layer)  # (B, C_in·K, L)
    positions = cols.shape[2]
    return torch.bmm(cols.reshape(b * groups, -1, positions), g.reshape(b * groups, -1, positions).transpose(1, 2))


# Layers with at most this many input channels per group get their
# per-example weight gradients by im2col + bmm, the others by a grouped
# convolution backward (measured on the CPU, oneDNN: im2col + bmm is 2-4x
# faster with 1-4 input channels per group, 2-3x slower with 16 or more).
_UNFOLD_MAX_CHANNELS = 4
# Fewest examples per call when the memory rule would allow fewer (bounds the
# number of calls).
_MIN_CONV_CHUNK = 8


def _uses_unfold(layer: nn.modules.conv._ConvNd) -> bool:
    return layer.in_channels // layer.groups <= _UNFOLD_MAX_CHANNELS


def per_example_conv_grads(layer: nn.modules.conv._ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """Per-example gradients of a convolution's weight, (B, C_out, C_in/groups,
    k_1..k_n), from its input ``x`` (B, C_in, S_1..S_n) and output gradient
    ``g`` (B, C_out, L_1..L_n): im2col + bmm for layers with few input channels
    per group, else a grouped convolution backward (see the two helpers)."""
    layer = conv_geometry(layer)
    if not _uses_unfold(layer):
        xp, padding = _pad_input(x, layer, keep_symmetric_zeros=True)
        return _conv_grads_grouped(layer, xp, g, padding)
    b, groups = x.shape[0], layer.groups
    w = _conv_grads_unfold(layer, _pad_input(x, layer, keep_symmetric_zeros=False)[0], g)
    w = w.reshape(b, groups, w.shape[1], w.shape[2]).transpose(2, 3)
    return w.reshape((b,) + _weight_shape(layer))


def conv_method(layer: nn.modules.conv._ConvNd, g: Tensor, ctx: RuleContext) -> str:
    """"gram" (im2col, then the Gram trick) or "materialize" (per-example
    weight gradients) for this call: ``ctx.sequence_method``, or for "auto"
    whichever needs fewer flops per example and group, T² (d_in + d_out)
    against T d_in d_out (T output positions, d_in = C_in/groups · Πk,
    d_out = C_out/groups)."""
    if ctx.sequence_method != "auto":
        return ctx.sequence_method
    groups = layer.groups
    t = math.prod(g.shape[2:])
    d_in = layer.in_channels // groups * math.prod(layer.kernel_size)
    d_out = layer.out_channels // groups
    return "gram" if t * (d_in + d_out) <= d_in * d_out else "materialize"


def _conv_budget(x_numel: int, g_numel: int, per_example: int, itemsize: int, workspace_bytes: int) -> int:
    """Bytes of temporaries per chunk for the materializing conv paths: no
    more than the larger of the layer's input and its output gradient ``g``
    (so that they do not raise the step's peak memory: the backward has freed
    at least one tensor of g's size, the activation the next layer saved, and
    allocates one of the input's size, the input gradient, right after), at
    least _MIN_CONV_CHUNK examples' worth, at most ``workspace_bytes``."""
    return min(workspace_bytes, max(x_numel, g_numel, _MIN_CONV_CHUNK * per_example) * itemsize)


@dataclasses.dataclass(frozen=True)
class _ConvPlan:
    """What :func:`conv_per_example` does for one call, worked out once per
    (geometry, shapes, dtype, budget) by :func:`_conv_plan` (cached: a
    training loop repeats the same few calls, and this bookkeeping costs as
    much as a small layer's kernels)."""

    unfold: bool  # im2col + bmm, else one grouped convolution backward
    chunks: Tuple[Tuple[int, int], ...]  # (start, stop) over the batch
    weight_shape: Tuple[int, ...]
    pad: Optional[Tuple[int, ...]]  # F.pad's argument, None: no F.pad
    pad_mode: str
    padding: Tuple[int, ...]  # zero padding the grouped convolution still applies
    # im2col (unfold):
    k_in: int = 0  # C_in/groups · Πk: the weight rows per group (then the bias row)
    rows: int = 0  # k_in (+ 1 with a bias)
    positions: int = 0  # output positions L
    split: Tuple[int, ...] = ()  # (n, groups, C_in/groups, k..., L...) with n = -1


@functools.lru_cache(maxsize=256)
def _conv_plan(
    layer: ConvGeometry,
    x_shape: Tuple[int, ...],
    g_shape: Tuple[int, ...],
    itemsize: int,
    bias: bool,
    workspace_bytes: int,
) -> _ConvPlan:
    b, c_out, groups = x_shape[0], layer.out_channels, layer.groups
    spatial = tuple(g_shape[2:])
    positions = math.prod(spatial)
    weight_shape = _weight_shape(layer)
    unfold = _uses_unfold(layer)
    # the grouped convolution applies symmetric zero padding itself (no copy)
    pad, pad_mode, padding = _pad_args(layer, keep_symmetric_zeros=not unfold)
    x_numel, g_numel = math.prod(x_shape), math.prod(g_shape)
    if unfold:
        k_in = weight_shape[1] * math.prod(layer.kernel_size)
        rows = k_in + bias
        per_example = groups * rows * (positions + c_out // groups)
    else:
        per_example = math.prod(weight_shape) + c_out
    step = _chunks(b, per_example, itemsize, _conv_budget(x_numel, g_numel, per_example, itemsize, workspace_bytes))
    plan = _ConvPlan(
        unfold=unfold,
        chunks=tuple((sl.start, sl.stop) for sl in step),
        weight_shape=weight_shape,
        pad=pad,
        pad_mode=pad_mode,
        padding=padding,
    )
    if unfold:
        plan = dataclasses.replace(
            plan,
            k_in=k_in,
            rows=rows,
            positions=positions,
            split=(-1, groups, weight_shape[1]) + tuple(layer.kernel_size) + spatial,
        )
    return plan


def conv_per_example(
    layer, x: Tensor, g: Tensor, ctx: RuleContext, bias: bool, sums: bool, total: bool = False
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Materialize a convolution's per-example weight gradients (and with
    ``bias`` its per-example bias gradients) in chunks of the batch under
    :func:`_conv_budget`, and return

        ‖∇W_i‖² (B,), ‖∇b_i‖² (B,) or None   in g's dtype; with ``total``,
                                             ‖∇W_i‖² + ‖∇b_i‖² (B,) float64
                                             and None,
        Σ_i ∇W_i (the weight's layout), Σ_i ∇b_i or None   with ``sums``
                                             (the batch gradients), else None.

    ``layer`` is the conv module, with ``x`` its input as its forward received
    it (padding is applied here as the forward applies it), or a
    :class:`ConvGeometry`, with ``x`` as ``aten.convolution`` received it
    (the fused path, ``_fused``). Layers with at most _UNFOLD_MAX_CHANNELS
    input channels per group: im2col (one copy of a strided view of the
    input, plus a row of ones for the bias) and one batched matrix product
    with g; the others: one grouped convolution backward with the batch
    folded into the channels (its bias output gives the bias gradients)."""
    layer = conv_geometry(layer)
    b, c_out, groups = x.shape[0], layer.out_channels, layer.groups
    plan = _conv_plan(layer, tuple(x.shape), tuple(g.shape), g.element_size(), bias, ctx.workspace_bytes)
    xp = x if plan.pad is None else F.pad(x, plan.pad, mode=plan.pad_mode)
    whole = len(plan.chunks) == 1
    sq_w = None if whole else g.new_empty(b, dtype=torch.float64 if total else None)
    sq_b = None if whole or total or not bias else g.new_empty(b)
    w_sum: Optional[Tensor] = None
    b_sum: Optional[Tensor] = None
    k_in, rows = plan.k_in, plan.rows
    for start, stop in plan.chunks:
        n = stop - start
        xs, gs = (xp, g) if whole else (xp[start:stop], g[start:stop])
        if plan.unfold:
            # columns (n·groups, C_in/groups·K [+ a row of ones], L), one copy
            # of the strided im2col view, then one batched product with g
            view = _unfold_view(xs, layer)  # (n, C_in, k_1..k_d, L_1..L_d)
            cols = g.new_empty(n * groups, rows, plan.positions)
            split = (n,) + plan.split[1:]
            cols[:, :k_in].view(split).copy_(view.view(split))
            if bias:
                cols[:, k_in].fill_(1.0)
            w = torch.bmm(cols, gs.reshape(n * groups, c_out // groups, plan.positions).transpose(1, 2))
            w = w.view(n, groups, rows, c_out // groups)  # per example: weight rows, then the bias row
            if total:  # weight and bias rows in one norm
                part_w, part_b = row_sq_norms(w.view(n, -1), torch.float64), None
            else:
                part_w = row_sq_norms((w[:, :, :k_in] if bias else w).reshape(n, -1))
                part_b = row_sq_norms(w[:, :, k_in].reshape(n, -1)) if bias else None
            if sums:
                s = w.sum(0)  # (groups, rows, C_out/groups)
                w_sum = s if w_sum is None else w_sum.add_(s)
        else:
            gw, gb = _conv_grads_grouped_bias(layer, xs, gs, plan.padding, bias, plan.weight_shape)
            part_w = row_sq_norms(gw.view(n, -1), torch.float64 if total else None)
            part_b = None
            if gb is not None:
                gb = gb.view(n, c_out)
                if total:
                    part_w.add_(row_sq_norms(gb, torch.float64))
                else:
                    part_b = row_sq_norms(gb)
                if sums:
                    s_b = gb.sum(0)
                    b_sum = s_b if b_sum is None else b_sum.add_(s_b)
            if sums:
                s = gw.view((n,) + plan.weight_shape).sum(0)
                w_sum = s if w_sum is None else w_sum.add_(s)
        if whole:
            sq_w, sq_b = part_w, part_b
        else:
            sq_w[start:stop] = part_w
            if part_b is not None:
                sq_b[start:stop] = part_b
    if sums and plan.unfold:
        if bias:
            b_sum = w_sum[:, k_in].reshape(c_out).clone()  # not a view that keeps w_sum alive in .grad
        w_sum = w_sum[:, :k_in].transpose(1, 2).reshape(plan.weight_shape)
    return sq_w, sq_b, w_sum, b_sum


def conv_norms_and_grads(
    geom: ConvGeometry, x: Tensor, g: Tensor, ctx: RuleContext, bias: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """For the fused path (``_fused``), when :func:`conv_method` is
    "materialize": the per-example squared norms of the weight plus (with
    ``bias``) the bias gradients, float64 (B,), and the batch gradients of
    the weight and bias (or None) as the sums of the per-example gradients
    those norms are taken of — the layer's own weight gradient need not be
    computed as well. See :func:`conv_per_example`."""
    sq, _, w_sum, b_sum = conv_per_example(geom, x, g, ctx, bias, sums=True, total=True)
    return sq, w_sum, b_sum


@register_norm_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_rule(module: nn.modules.conv._ConvNd, inputs, g: Tensor, ctx: RuleContext) -> Dict[str, Tensor]:
    x = inputs[0]
    _need_batched(x, module.weight.dim(), module, ctx)
    layer = conv_geometry(module)
    b = x.shape[0]
    c_out = g.shape[1]
    out: Dict[str, Tensor] = {}
    if "weight" in ctx.params:
        if conv_method(layer, g, ctx) == "materialize":
            sq_w, sq_b, _, _ = conv_per_example(layer, x, g, ctx, bias="bias" in ctx.params, sums=False)
            out["weight"] = sq_w
            if sq_b is not None:
                out["bias"] = sq_b
        else:  # the Gram trick over output positions, per group
            groups = layer.groups
            cols = unfold_conv_input(x, layer)  # (B, C_in·K, L)
            positions = cols.shape[2]
            if positions != math.prod(g.shape[2:]):  # pragma: no cover - a bug, not a user error
                raise AssertionError(
                    f"gdiv.torch: im2col of '{ctx.name}' gives {positions} positions, output has "
                    f"{math.prod(g.shape[2:])}"
                )
            a = cols.reshape(b * groups, -1, positions).transpose(1, 2)  # (B·groups, L, C_in/groups·K)
            gg = g.reshape(b * groups, -1, positions).transpose(1, 2)  # (B·groups, L, C_out/groups)
            out["weight"] = sq_norm_of_outer_sums(a, gg, ctx, method="gram").reshape(b, groups).sum(1)
    if "bias" in ctx.params and "bias" not in out:
        out["bias"] = row_sq_norms(g.reshape(b, c_out, -1).sum(2))
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


_RULE_PARAMS.update(
    {
        _linear_rule: frozenset({"weight", "bias"}),
        _conv_rule: frozenset({"weight", "bias"}),
        _embedding_rule: frozenset({"weight"}),
        _layer_norm_rule: frozenset({"weight", "bias"}),
        _group_norm_rule: frozenset({"weight", "bias"}),
        _batch_norm_eval_rule: frozenset({"weight", "bias"}),
    }
)
if hasattr(nn, "RMSNorm"):
    _RULE_PARAMS[_rms_norm_rule] = frozenset({"weight"})
