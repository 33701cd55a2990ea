"""The hook objects of the capture (weak, inert when copied), and the switches
the hooks read: capture suspended (while the fallback or full mode re-run
modules) and "inside a backward pass"."""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ._units import _Record

# Forward hooks do nothing while this is > 0: set while the torch.func
# fallback or per_example_grads re-runs modules (under vmap), so that hooks do
# not capture batched-tensor wrappers. Thread-local: the fallback runs in the
# autograd thread that calls the output hooks.
_suspend = threading.local()


def _suspended() -> bool:
    return getattr(_suspend, "depth", 0) > 0


@contextlib.contextmanager
def _no_capture() -> Iterator[None]:
    _suspend.depth = getattr(_suspend, "depth", 0) + 1
    try:
        yield
    finally:
        _suspend.depth -= 1


_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def _in_backward() -> bool:
    """True inside the autograd engine (a hook, or a forward recomputed by
    activation checkpointing)."""
    return _graph_task_id is not None and _graph_task_id() != -1


class _WeakHook:
    """A hook calling ``obj.method(*bound, *args)`` that does not keep ``obj``
    alive: dropping the PerExampleNorms object removes its hooks (``__del__``).

    Copies are inert: ``copy.deepcopy`` of a hooked model (an EMA copy, a
    checkpoint) and pickling it (``torch.save(model)``) give hooks that do
    nothing, so that a copy never feeds the original's capture."""

    __slots__ = ("ref", "method", "bound")

    def __init__(self, obj: Any, method: str, *bound: Any) -> None:
        self.ref = weakref.ref(obj)
        self.method = method
        self.bound = bound

    def __call__(self, *args: Any) -> Any:
        o = self.ref()
        return None if o is None else getattr(o, self.method)(*self.bound, *args)

    def __reduce__(self) -> Tuple[Any, Tuple[()]]:
        return (_inert_hook, ())

    def __deepcopy__(self, memo: Dict[int, Any]) -> Callable[..., None]:
        return _inert_hook()


class _OutputGradHook:
    """Node pre-hook handing output ``nr``'s gradient to
    ``owner._grad_hook(rec, slot, grad)``; holds the owner weakly."""

    __slots__ = ("ref", "rec", "slot", "nr")

    def __init__(self, owner: Any, rec: "_Record", slot: int, nr: int) -> None:
        self.ref = weakref.ref(owner)
        self.rec = rec
        self.slot = slot
        self.nr = nr

    def __call__(self, grad_outputs: Tuple[Optional[Tensor], ...]) -> None:
        owner = self.ref()
        grad = grad_outputs[self.nr]
        if owner is not None and grad is not None:
            owner._grad_hook(self.rec, self.slot, grad)


def _inert(*args: Any) -> None:
    return None


def _inert_hook() -> Callable[..., None]:
    return _inert
