"""Device-side reductions of one monitored step: the few float64 scalars the
controller needs, computed where the gradients live (no float64 copy of a
gradient, one host transfer per step), and the Langevin draws on ``.grad``.

Nothing here is a formula of the method: the sums are handed to Go's
controller, which converts and estimates.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor

from .errors import CaptureError

_F64 = torch.float64
_LOW = (torch.float16, torch.bfloat16)


def dense_grads(params: Sequence[Tensor]) -> List[Tensor]:
    """The ``.grad`` of each parameter that has one, sparse ones as their
    coalesced values (the same squared norm)."""
    out = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            g = g.coalesce()._values()
        out.append(g.detach())
    return out


def sq_norm(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Σ_t ‖t‖² as a float64 0-dim tensor on ``device``: one fused norm per
    (device, dtype) group (``torch._foreach_norm``), the per-tensor norms
    squared and summed in float64. Half-precision tensors are normed in
    float32 (their squares overflow float16)."""
    groups: Dict[tuple, List[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    total = torch.zeros((), dtype=_F64, device=device)
    for (dev, dtype), ts in groups.items():
        norms = torch._foreach_norm(ts, 2, torch.float32) if dtype in _LOW else torch._foreach_norm(ts)
        part = torch.stack(norms).to(_F64).square().sum()
        total = total + (part if dev == device else part.to(device))
    return total


def device_sums(sq_norms: Tensor, params: Sequence[Tensor]) -> Tensor:
    """[Σ_i sq_norms[i], Σ_params ‖p.grad‖²] as a (2,) float64 tensor on the
    device of ``sq_norms``: reductions only, nothing leaves the device."""
    dev = sq_norms.device
    return torch.stack([sq_norms.sum(dtype=_F64), sq_norm(dense_grads(params), dev)])


class NoiseDraws:
    """Unit Gaussians ξ (one tensor per parameter) drawn from per-device
    ``torch.Generator`` s seeded with a step's seed: drawn once for their
    moments with the gradient, and again (same seed, same order) to add
    ``std·ξ`` to ``.grad`` — no second copy of the gradients is kept."""

    def __init__(self) -> None:
        self._gens: Dict[str, torch.Generator] = {}

    def _draws(self, params: Sequence[Tensor], seed: int):
        seeded = set()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            g = p.grad
            if g.is_sparse:
                raise CaptureError(
                    "DiversityMonitor: Langevin noise on sparse gradients (nn.Embedding(sparse=True)) is not "
                    "supported: the noise is dense; use sparse=False"
                )
            key = str(g.device)
            gen = self._gens.get(key)
            if gen is None:
                gen = self._gens[key] = torch.Generator(device=g.device)
            if key not in seeded:
                gen.manual_seed(seed)
                seeded.add(key)
            yield g, torch.randn(g.shape, generator=gen, device=g.device, dtype=g.dtype)

    def moments(self, params: Sequence[Tensor], seed: int, device: torch.device) -> Tensor:
        """[⟨grad, ξ⟩, ‖ξ‖²] as a (2,) float64 tensor on ``device``."""
        dot = torch.zeros((), dtype=_F64, device=device)
        sq = torch.zeros((), dtype=_F64, device=device)
        for g, xi in self._draws(params, seed):
            dot = dot + (g.detach() * xi).sum(dtype=_F64).to(device)
            sq = sq + xi.square().sum(dtype=_F64).to(device)
        return torch.stack([dot, sq])

    def add_(self, params: Sequence[Tensor], seed: int, std: float) -> None:
        """grad += std·ξ with the draws of :meth:`moments` (same seed)."""
        for g, xi in self._draws(params, seed):
            g.add_(xi, alpha=std)
