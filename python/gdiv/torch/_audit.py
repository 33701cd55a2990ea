"""The use audit: which trainable parameters a forward pass uses outside the
modules that own them.

The per-layer rules see a parameter's use inside its module only. A weight
also used elsewhere (``F.linear(x, self.l.weight)`` in a parent's forward, a
tied weight used by a module that does not register it) adds gradient to
``.grad`` that the norms never see: the estimate would be silently wrong. The
first train-mode forward after ``attach()`` runs under a ``TorchFunctionMode``
that records every torch function taking a trainable parameter, with
gradients enabled, while none of the units owning it is running. Only that
forward pays for it (an ordinary dispatch per torch call); later forwards
run without the mode.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["UseAudit"]

# Reads that create no gradient path.
_HARMLESS = frozenset(
    {"__get__", "size", "dim", "numel", "stride", "is_contiguous", "data_ptr", "detach", "element_size", "__len__", "__repr__", "__format__"}
)


class _Mode(TorchFunctionMode):
    def __init__(self, audit: "UseAudit") -> None:
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        a = self.audit
        name = getattr(func, "__name__", "")
        if name not in _HARMLESS and torch.is_grad_enabled():
            for t in pytree.tree_flatten((args, kwargs))[0]:
                owners = a.owners.get(id(t)) if isinstance(t, nn.Parameter) else None
                if owners is not None and not (owners & a.running.keys()):
                    a.outside.setdefault(id(t), name or repr(func))
        return func(*args, **kwargs)


class UseAudit:
    """One audited forward: push/pop the running units, collect outside uses.

    Args:
        units: (module, trainable parameters it owns) pairs, subtrees included.
        names: qualified parameter names by id, for the message.
    """

    def __init__(self, units: List[Any], names: Dict[int, str]) -> None:
        owners: Dict[int, set] = {}
        for module, params in units:
            for p in params:
                owners.setdefault(id(p), set()).add(id(module))
        self.owners: Dict[int, FrozenSet[int]] = {k: frozenset(v) for k, v in owners.items()}
        self.names = names
        self.running: Dict[int, int] = {}
        self.outside: Dict[int, str] = {}
        self._handles: List[Any] = []
        self._mode: Optional[_Mode] = None
        for module, _ in units:
            self._handles.append(module.register_forward_pre_hook(self._enter, prepend=True))
            self._handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, module: nn.Module, args: Any) -> None:
        self.running[id(module)] = self.running.get(id(module), 0) + 1

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        k = self.running.get(id(module), 0) - 1
        if k > 0:
            self.running[id(module)] = k
        else:
            self.running.pop(id(module), None)

    def start(self) -> None:
        self._mode = _Mode(self)
        self._mode.__enter__()

    def stop(self) -> Optional[str]:
        """End the audit; return the problem (None: every use was inside)."""
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for h in self._handles:
            h.remove()
        self._handles = []
        if not self.outside:
            return None
        names = ", ".join(sorted(self.names.get(i, "?") for i in self.outside))
        funcs = ", ".join(sorted(set(self.outside.values())))
        return (
            f"parameters are used outside the modules that own them: {names} (in torch functions: {funcs}). Their gradient from that use reaches .grad but not the per-example norms, so the estimate would "
            "be wrong. Make the module that uses a weight own it (or call the owning module), or use "
            "mode='full' (per-example gradients of the whole model)."
        )
