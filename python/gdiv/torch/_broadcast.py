"""Outputs shared by the batch: a unit called on inputs with a batch of 1
whose output a later operation broadcasts over the batch (Hugging Face's
position embeddings: ``nn.Embedding`` on ``position_ids`` of shape (1, T),
then ``inputs_embeds + position_embeds``).

The gradient that reaches such an output is already summed over the batch,
so the unit's own hooks cannot give per-example gradients. While the model's
forward runs after such a call, a ``TorchFunctionMode`` watches the
operations that take the shared output. At the broadcasting elementwise op
(add, sub, mul, div, in place or not) that combines it with a tensor whose
batch dimension is N > 1, it passes ``out.expand(N, ...)`` instead of
``out``: the op computes exactly what it computed before (it broadcast that
dimension anyway), and the expanded tensor's gradient is the per-example
output gradient (N, ...). The unit's call is then processed as a call on its
inputs expanded to the batch, with that gradient: its rule (or the
``torch.func`` fallback) sees an ordinary batch of N.

The mode costs a Python dispatch per torch call, so it is left once every
watched output has been broadcast, at the next unit's forward hook: uses up
to there (``(h + p) * p``) are followed, later ones are left to the backstop
below (and refused).

Exact, or refused: any other use of the shared output that carries gradient
(a view, an index, a reduction, a cast, a penalty on it) adds
gradient the per-example split cannot see; such a record is refused with a
``CaptureError`` if it was also broadcast, and if it was not, it keeps its
batch of 1 and the capture's batch-size check refuses it. A backstop after
backward checks that the whole gradient of the output came through the
expanded tensors (up to rounding), for uses the mode cannot see.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from ._units import _Record

__all__ = ["BroadcastTracker", "expand_batch"]

_T = torch.Tensor
# Elementwise ops that broadcast their two operands: expanding an operand to
# the shape it is broadcast to leaves the result unchanged.
_BROADCAST_OPS = frozenset(
    f
    for f in (
        torch.add,
        torch.sub,
        torch.subtract,
        torch.mul,
        torch.multiply,
        torch.div,
        torch.divide,
        torch.true_divide,
        _T.add,
        _T.sub,
        _T.subtract,
        _T.mul,
        _T.multiply,
        _T.div,
        _T.divide,
        _T.true_divide,
        _T.add_,
        _T.sub_,
        _T.mul_,
        _T.div_,
        getattr(_T, "__radd__", None),
        getattr(_T, "__rsub__", None),
        getattr(_T, "__rmul__", None),
        getattr(_T, "__rtruediv__", None),
        getattr(_T, "__rdiv__", None),
        getattr(_T, "__iadd__", None),
        getattr(_T, "__isub__", None),
        getattr(_T, "__imul__", None),
        getattr(_T, "__itruediv__", None),
    )
    if f is not None
)
# In place on their first operand: a shared output modified in place is a use
# the split cannot follow.
_IN_PLACE = frozenset(f for f in _BROADCAST_OPS if getattr(f, "__name__", "").endswith("_") or getattr(f, "__name__", "").startswith("__i"))
# Calls that may return the shared output itself (a no-op move or cast): the
# result is the same tensor, still shared.
_SAME = frozenset({_T.to, _T.contiguous, _T.type_as, _T.float, _T.double, _T.half, _T.bfloat16, _T.cpu, _T.cuda})


def expand_batch(x: Any, bd: int, n: int) -> Any:
    """``x`` expanded from 1 to ``n`` along dim ``bd`` if it is a tensor with a
    batch of 1 there; else ``x``."""
    if isinstance(x, Tensor) and x.dim() > bd and x.shape[bd] == 1:
        shape = list(x.shape)
        shape[bd] = n
        return x.expand(shape)
    return x


def _carries_grad(out: Any) -> bool:
    if isinstance(out, Tensor):
        return out.requires_grad
    if isinstance(out, (list, tuple)):
        return any(isinstance(t, Tensor) and t.requires_grad for t in out)
    return False


class _ExpandGradHook:
    """Node pre-hook on an expanded shared output: hands its (N, ...) gradient
    to ``owner._bcast_part(rec, grad)``; holds the owner weakly."""

    __slots__ = ("ref", "rec")

    def __init__(self, owner: Any, rec: "_Record") -> None:
        self.ref = weakref.ref(owner)
        self.rec = rec

    def __call__(self, grad_outputs: Tuple[Optional[Tensor], ...]) -> None:
        owner = self.ref()
        grad = grad_outputs[0]
        if owner is not None and grad is not None:
            owner._bcast_part(self.rec, grad)


class BroadcastTracker(TorchFunctionMode):
    """The mode described in the module docstring, for one forward of the
    model: ``track`` a unit call's shared output; entered by the capture at
    the first such call, left when the model's forward returns (``stop``).

    Args:
        owner: the PerExampleNorms object (held weakly); receives the
            expanded tensors' gradients (``_bcast_part``) and problems
            (``_bcast_problem``).
        batch_dim: the example dimension.
    """

    def __init__(self, owner: Any, batch_dim: int) -> None:
        super().__init__()
        self.ref = weakref.ref(owner)
        self.bd = batch_dim
        self.tracked: Dict[int, Tuple[Any, "_Record"]] = {}  # id(shared output) -> (weakref, its record)
        self.active = False
        self.finished = False  # every watched output was broadcast: leave at the next chance
        self.depth = 0  # the mode stack's length with this mode on top

    def start(self) -> None:
        if not self.active:
            self.__enter__()
            self.active = True
            self.finished = False
            self.depth = torch._C._len_torch_function_stack()

    def track(self, out: Tensor, rec: "_Record") -> None:
        self.tracked[id(out)] = (weakref.ref(out), rec)
        self.finished = False

    def stop(self) -> None:
        """Leave the mode (if it is on top of the stack: a mode entered inside
        the forward and not left is not popped instead). Uses of a shared
        output after this (it may be returned by the model and used in the
        loss) are the backstop's."""
        if self.active and torch._C._len_torch_function_stack() == self.depth:
            self.active = False
            self.__exit__(None, None, None)
        self.finished = False
        self.tracked = {}

    def _lookup(self, t: Any) -> Optional["_Record"]:
        if isinstance(t, Tensor):
            entry = self.tracked.get(id(t))
            if entry is not None and entry[0]() is t:
                return entry[1]
        return None

    def _hits(self, args: Any, kwargs: Dict[str, Any]) -> List["_Record"]:
        found: List["_Record"] = []
        for a in (*args, *kwargs.values()):
            if isinstance(a, (list, tuple)):
                found.extend(r for r in map(self._lookup, a) if r is not None)
            else:
                r = self._lookup(a)
                if r is not None:
                    found.append(r)
        return found

    def _direct(self, rec: "_Record", what: str) -> None:
        if rec.direct is None:
            rec.direct = what
        owner = self.ref()
        if owner is not None and rec.bcast:
            owner._bcast_problem(rec)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if not self.tracked:
            return func(*args, **kwargs)
        hits = self._hits(args, kwargs)
        if not hits:
            return func(*args, **kwargs)
        if func in _BROADCAST_OPS and len(args) == 2 and "out" not in kwargs and len(hits) == 1:
            new = self._expanded(func, args, hits[0])
            if new is not None:
                return func(*new, **kwargs)
        out = func(*args, **kwargs)
        if func in _SAME and out is args[0]:
            return out
        if _carries_grad(out) or func in _IN_PLACE:
            name = getattr(func, "__name__", None) or repr(func)
            for rec in hits:
                self._direct(rec, f"torch function '{name}'")
        return out

    def _expanded(self, func: Any, args: Any, rec: "_Record") -> Optional[Tuple[Any, Any]]:
        """The op's operands with the shared one expanded to the batch it is
        broadcast to, or None when the op does not broadcast it over a batch
        (then it is a direct use)."""
        k = 0 if self._lookup(args[0]) is rec else 1
        if k == 0 and func in _IN_PLACE:
            return None
        t, other = args[k], args[1 - k]
        bd = self.bd
        if not isinstance(other, Tensor) or t.dim() <= bd or t.shape[bd] != 1:
            return None
        try:
            shape = torch.broadcast_shapes(t.shape, other.shape)
        except RuntimeError:
            return None  # the op itself will raise
        n = shape[bd]
        if len(shape) != t.dim() or n <= 1 or t.grad_fn is None:
            return None
        owner = self.ref()
        if owner is None:
            return None
        if rec.bcast and rec.bcast != n:
            rec.direct = rec.direct or f"a broadcast to a batch of {n} (after one to {rec.bcast})"
            owner._bcast_problem(rec)
            return None
        e = expand_batch(t, bd, n)
        assert e.grad_fn is not None  # t has one
        e.grad_fn.register_prehook(_ExpandGradHook(owner, rec))
        owner._bcast_start(rec, n)
        if all(r.bcast for _, r in self.tracked.values()):
            self.finished = True
        return (e, other) if k == 0 else (other, e)
