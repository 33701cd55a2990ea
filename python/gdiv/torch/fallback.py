"""The ``torch.func`` fallback: per-example gradients of one captured unit call
by ``vmap(grad(...))``, for units without a rule (and for units that are
called twice or share parameters). Costs and limits: python/README.md, "The
torch.func fallback"."""

from __future__ import annotations

from typing import Any, Dict, List, Optional
from typing import cast as typing_cast  # vmap_grads has a local cast()

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ._hooks import _no_capture
from ._units import _compute_dtype, _Record
from .errors import NormsError, UnsupportedModuleError
from .rules._common import row_sq_norms64

__all__ = ["vmap_grads", "fallback_norms"]


class _OwnForward(nn.Module):
    """Runs ``m`` on inputs captured by a forward hook: its forward pre-hooks
    for their side effects (pruning and weight_norm compute the weight
    there) but not their return values (the captured inputs already are what
    they returned), then ``m.forward``, without ``m``'s forward hooks (the
    captured gradient is that of the forward's own output). Hooks of its
    submodules run as usual."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        m = self.m
        with_kwargs = m._forward_pre_hooks_with_kwargs
        for hook_id, hook in list(m._forward_pre_hooks.items()):
            if hook_id in with_kwargs:
                hook(m, args, kwargs)
            else:
                hook(m, args)
        return m.forward(*args, **kwargs)


def vmap_grads(rec: _Record, batch_dim: int, workspace_bytes: int) -> Dict[str, Tensor]:
    """Per-example gradients {name: (B, *shape)} of the unit's trainable
    parameters for this call, by torch.func, batch first."""
    unit, bd, batch = rec.unit, batch_dim, rec.batch
    module = unit.module
    dtype = _compute_dtype(unit.plist)

    def cast(t: Any) -> Any:
        return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

    constants = {n: cast(t.detach()) for n, t in module.named_parameters() if n not in unit.params}
    constants.update({n: cast(t) for n, t in module.named_buffers()})
    train = {n: cast(p.detach()) for n, p in unit.params.items()}

    flat, spec = pytree.tree_flatten((list(rec.args), dict(rec.kwargs)))
    positions, batched = [], []
    for k, t in enumerate(flat):
        if isinstance(t, Tensor) and t.dim() > bd and t.shape[bd] == batch:
            positions.append(k)
            batched.append(cast(t).unsqueeze(bd + 1))  # vmap drops dim bd, keeps a size-1 batch
        else:
            flat[k] = cast(t)
    slots = [(j, cast(g).unsqueeze(bd + 1)) for j, g in zip(rec.out_index, rec.grads) if g is not None]
    out_pos = [j for j, _ in slots]
    gouts = [g for _, g in slots]

    def inner(params: Dict[str, Tensor], xs: List[Tensor], gs: List[Tensor]) -> Tensor:
        full = list(flat)
        for k, x in zip(positions, xs):
            full[k] = x
        args, kwargs = pytree.tree_unflatten(full, spec)
        # The unit's own computation (see _OwnForward): its forward hooks
        # ran in the real forward already, after the output whose
        # gradient was captured.
        state = {"m." + k: v for k, v in {**constants, **params}.items()}
        out = torch.func.functional_call(_OwnForward(module), state, tuple(args), kwargs)
        outs, _ = pytree.tree_flatten(out)
        total: Optional[Tensor] = None
        for j, g in zip(out_pos, gs):
            term = (outs[j] * g).sum()
            total = term if total is None else total + term
        return typing_cast(Tensor, total)  # not None: a record has at least one output gradient

    per_example = sum(p.numel() for p in train.values()) * torch.finfo(dtype).bits // 8
    chunk = max(1, workspace_bytes // max(1, per_example))
    fn = torch.func.vmap(
        torch.func.grad(inner),
        in_dims=(None, [bd] * len(batched), [bd] * len(gouts)),
        randomness="error",
        chunk_size=chunk if chunk < batch else None,
    )
    try:
        with _no_capture(), torch.enable_grad():
            grads = fn(train, batched, gouts)
    except NormsError:
        raise
    except Exception as e:  # vmap/grad failures: name the module
        raise UnsupportedModuleError(
            f"gdiv.torch: the torch.func fallback could not compute per-example gradients of "
            f"module {unit.label}: {type(e).__name__}: {e}. The fallback needs a forward that "
            "vmap can run (no data-dependent control flow, .item(), random ops or in-place "
            "updates of captured tensors). Register a rule with @register_norm_rule("
            f"{type(module).__name__}), or freeze the module's parameters."
        ) from e
    return grads


def fallback_norms(rec: _Record, batch_dim: int, workspace_bytes: int) -> Tensor:
    """The call's per-example squared norms, (B,) float64, summed over the
    unit's parameters, from :func:`vmap_grads`."""
    total: Optional[Tensor] = None
    for g in vmap_grads(rec, batch_dim, workspace_bytes).values():
        sq = row_sq_norms64(g)
        total = sq if total is None else total + sq
    return typing_cast(Tensor, total)  # not None: a unit has at least one trainable parameter
