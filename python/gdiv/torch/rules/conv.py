"""The rule for ``nn.Conv1d/2d/3d``: im2col, per-example weight gradients (im2col
+ bmm, or one grouped convolution backward) in chunks under a memory budget,
the Gram trick; and the helpers the fused convolutions share."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _chunks, _need_batched, row_sq_norms, sq_norm_of_outer_sums
from ._registry import _RULE_PARAMS, RuleContext, register_norm_rule


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """What the convolution helpers below read of a conv layer, as tuples
    (:func:`conv_geometry`; a layer's attributes may be plain ints, which
    PyTorch's forward accepts). ``padding`` is a tuple of numbers or "same" /
    "valid", as on the layer. The fused path (``fused_conv``) makes one for the
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


# What the helpers below accept: a conv layer or its ConvGeometry (they read
# the same attributes of either).
ConvLike = Union[nn.modules.conv._ConvNd, ConvGeometry]


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


def conv_padding(layer: ConvLike) -> List[Tuple[int, int]]:
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


def _pad_input(x: Tensor, layer: ConvLike, keep_symmetric_zeros: bool) -> Tuple[Tensor, List[int]]:
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


def _unfold_padded(x: Tensor, layer: ConvLike) -> Tensor:
    """:func:`unfold_conv_input` of an input already padded: one strided view
    (B, C, k_1..k_n, L_1..L_n), copied once by the reshape."""
    view = _unfold_view(x, layer)
    return view.reshape(x.shape[0], -1, math.prod(view.shape[2 + (x.dim() - 2) :]))


def _unfold_view(x: Tensor, layer) -> Tensor:
    """The im2col of an input already padded as a strided view (no copy):
    (B, C, k_1..k_n, L_1..L_n)."""
    n = x.dim() - 2
    st = x.stride()
    out = [(x.shape[2 + i] - d * (k - 1) - 1) // s + 1 for i, (k, s, d) in enumerate(zip(layer.kernel_size, layer.stride, layer.dilation))]
    view = x.as_strided(
        tuple(x.shape[:2]) + tuple(layer.kernel_size) + tuple(out),
        (st[0], st[1]) + tuple(st[2 + i] * layer.dilation[i] for i in range(n)) + tuple(st[2 + i] * layer.stride[i] for i in range(n)),
        x.storage_offset(),
    )
    return view


def unfold_conv_input(x: Tensor, layer: ConvLike) -> Tensor:
    """Unfold (B, C, S_1..S_n) into (B, C·k_1···k_n, L), L = number of output
    positions (``F.unfold``'s layout), rows ordered like
    ``weight.reshape(C_out, -1)``'s columns.

    Any n (1-D, 2-D, 3-D), stride, dilation, padding (numbers, "same",
    "valid") and ``padding_mode``: after padding, one strided view of the
    input, copied once."""
    layer = conv_geometry(layer)
    return _unfold_padded(_pad_input(x, layer, keep_symmetric_zeros=False)[0], layer)


def im2col(x: Tensor, layer: ConvLike) -> Tensor:
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


def _conv_grads_grouped(layer: ConvLike, x: Tensor, g: Tensor, padding: Sequence[int]) -> Tensor:
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


def _conv_grads_unfold(layer: ConvLike, x: Tensor, g: Tensor) -> Tensor:
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


def _uses_unfold(layer: ConvLike) -> bool:
    return layer.in_channels // layer.groups <= _UNFOLD_MAX_CHANNELS


def per_example_conv_grads(layer: ConvLike, x: Tensor, g: Tensor) -> Tensor:
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


def conv_method(layer: ConvLike, g: Tensor, ctx: RuleContext) -> str:
    """ "gram" (im2col, then the Gram trick) or "materialize" (per-example
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
    (the fused path, ``fused_conv``). Layers with at most _UNFOLD_MAX_CHANNELS
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
            assert sq_w is not None  # allocated above when not whole
            sq_w[start:stop] = part_w
            if part_b is not None:
                assert sq_b is not None  # part_b is set only with bias and not total, as is sq_b
                sq_b[start:stop] = part_b
    if sums and plan.unfold:
        assert w_sum is not None  # set by the first chunk (there is at least one)
        if bias:
            b_sum = w_sum[:, k_in].reshape(c_out).clone()  # not a view that keeps w_sum alive in .grad
        w_sum = w_sum[:, :k_in].transpose(1, 2).reshape(plan.weight_shape)
    assert sq_w is not None  # allocated before the loop, or set by its one chunk
    return sq_w, sq_b, w_sum, b_sum


def conv_norms_and_grads(geom: ConvGeometry, x: Tensor, g: Tensor, ctx: RuleContext, bias: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """For the fused path (``fused_conv``), when :func:`conv_method` is
    "materialize": the per-example squared norms of the weight plus (with
    ``bias``) the bias gradients, float64 (B,), and the batch gradients of
    the weight and bias (or None) as the sums of the per-example gradients
    those norms are taken of — the layer's own weight gradient need not be
    computed as well. See :func:`conv_per_example`."""
    sq, _, w_sum, b_sum = conv_per_example(geom, x, g, ctx, bias, sums=True, total=True)
    assert w_sum is not None  # sums=True
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
                raise AssertionError(f"gdiv.torch: im2col of '{ctx.name}' gives {positions} positions, output has {math.prod(g.shape[2:])}")
            a = cols.reshape(b * groups, -1, positions).transpose(1, 2)  # (B·groups, L, C_in/groups·K)
            gg = g.reshape(b * groups, -1, positions).transpose(1, 2)  # (B·groups, L, C_out/groups)
            out["weight"] = sq_norm_of_outer_sums(a, gg, ctx, method="gram").reshape(b, groups).sum(1)
    if "bias" in ctx.params and "bias" not in out:
        out["bias"] = row_sq_norms(g.reshape(b, c_out, -1).sum(2))
    return out


_RULE_PARAMS[_conv_rule] = frozenset({"weight", "bias"})
