"""Two-scale mode's capture: the squared norm of each backward pass's own
gradient (a micro-batch's, on its rank), read by parameter hooks before it
is accumulated into ``.grad`` and before DDP all-reduces it, and the size of
each train-mode forward. No per-example work, so any model works (BatchNorm
included); the cost is one fused norm per backward pass.

The estimate itself (McCandlish et al.'s unbiased pair) is Go's
(``gdiv.EstimateTwoScale`` through the controller).
"""

from __future__ import annotations

import weakref
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ._hooks import _WeakHook
from ._reduce import sq_norm
from .full import trainable_parameters

__all__ = ["LocalGradients"]


class LocalGradients:
    """Per backward pass: Σ_params ‖∂L_m/∂θ‖² (float64, on the device), L_m
    that pass's loss as backpropagated; per train-mode forward with
    gradients: its examples along ``batch_dim``."""

    def __init__(self, model: nn.Module, *, batch_dim: int = 0, attach: bool = True) -> None:
        self._model = model
        self.batch_dim = batch_dim
        self.enabled = True
        self._handles: List[Any] = []
        self._pass: List[Tensor] = []  # this backward's parameter gradients
        self._queued = False
        self._sq: List[Tensor] = []  # one 0-dim float64 per finished backward pass
        self._sizes: List[Optional[int]] = []  # one per train-mode forward
        self._device: Optional[torch.device] = None
        if attach:
            self.attach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "LocalGradients":
        if self._handles:
            return self
        self._handles.append(self._model.register_forward_pre_hook(_WeakHook(self, "_pre"), with_kwargs=True))
        for _, p in trainable_parameters(self._model):
            self._handles.append(p.register_hook(_WeakHook(self, "_grad")))
            self._device = self._device or p.device
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if not (self._model.training and torch.is_grad_enabled()):
            return
        bd = self.batch_dim
        x = args[0] if args and isinstance(args[0], Tensor) and args[0].dim() > bd else None
        if x is None:
            x = next((t for t in pytree.tree_flatten((args, kwargs))[0] if isinstance(t, Tensor) and t.dim() > bd), None)
        self._sizes.append(None if x is None else int(x.shape[bd]))

    def _grad(self, g: Tensor) -> None:
        if not self.enabled:
            return None
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(_end_of_pass(self))
        self._pass.append(g.coalesce()._values() if g.is_sparse else g)
        return None

    def _end(self) -> None:
        grads, self._pass, self._queued = self._pass, [], False
        if grads:
            dev = self._device or grads[0].device
            self._sq.append(sq_norm([g.detach() for g in grads], dev))

    def take(self) -> Tuple[List[Tensor], List[Optional[int]]]:
        """(the backward passes' squared norms, the forwards' sizes) since
        the last call; both reset."""
        out = (self._sq, self._sizes)
        self._sq, self._sizes = [], []
        return out

    def reset(self) -> None:
        self._sq, self._sizes, self._pass, self._queued = [], [], [], False


def _end_of_pass(lg: LocalGradients):
    ref = weakref.ref(lg)

    def end() -> None:
        o = ref()
        if o is not None:
            o._end()

    return end
