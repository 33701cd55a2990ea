"""The options of :class:`gdiv.torch.DiversityMonitor` that are the
monitor's own (capture mode, mechanism, loss function, hooks' companions);
Go's controller validates the rest (policy, batch, data set, sampling,
estimator, LR rule, seed) and names the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from ..mechanisms import Dropout, Mechanism, Quantize
from ..policy import LR_RULES

__all__ = ["check_options", "compiled", "finite_real"]


def compiled(model: nn.Module) -> bool:
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


def finite_real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def check_options(model, loss_reduction, mode, mechanism, on_nonfinite, loss_fn, grad_scaler, full_max_bytes, optimizer, writer, lr_rule) -> None:
    """The monitor's own options (Go's controller validates the rest)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"DiversityMonitor: model must be an nn.Module, got {type(model).__name__}")
    if compiled(model):
        raise ValueError(
            "DiversityMonitor: the model is a torch.compile()d module; attach the monitor before compiling: "
            "monitor = DiversityMonitor(model, ...) on the plain model, then torch.compile(model): the hooks stay on the plain modules"
        )
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"DiversityMonitor: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    if mode not in ("norms", "full", "two_scale"):
        raise ValueError(f"DiversityMonitor: mode must be 'norms', 'full' or 'two_scale', got {mode!r}")
    if mode == "two_scale" and mechanism is not None:
        raise ValueError(
            f"DiversityMonitor: mode='two_scale' takes no mechanism (got {type(mechanism).__name__}): it never forms "
            "per-example gradients and has no Langevin correction; use mode='norms' (Langevin) or 'full'"
        )
    if on_nonfinite not in ("skip", "raise"):
        raise ValueError(f"DiversityMonitor: on_nonfinite must be 'skip' or 'raise', got {on_nonfinite!r}")
    if mechanism is not None and not isinstance(mechanism, Mechanism):
        raise TypeError(f"DiversityMonitor: mechanism must be gdiv.Dropout, gdiv.Langevin, gdiv.Quantize or None, got {type(mechanism).__name__}")
    if mode == "norms" and isinstance(mechanism, (Dropout, Quantize)):
        raise ValueError(
            f"DiversityMonitor: {type(mechanism).__name__} acts on each per-example gradient separately, which "
            "norms mode never forms: use mode='full' (with loss_fn; materializes B × P gradients), or "
            "gdiv.Langevin, which works in norms mode"
        )
    if mode == "full":
        if loss_fn is None:
            raise ValueError("DiversityMonitor: mode='full' needs loss_fn(output, target) -> scalar (per example)")
        if grad_scaler is not None:
            raise ValueError(
                "DiversityMonitor: grad_scaler is for norms mode; full mode computes per-example gradients "
                "itself in the parameters' dtype (no loss scaling to undo)"
            )
        if isinstance(full_max_bytes, bool) or not isinstance(full_max_bytes, int) or full_max_bytes <= 0:
            raise ValueError(f"DiversityMonitor: full_max_bytes must be a positive int, got {full_max_bytes!r}")
    elif loss_fn is not None:
        raise ValueError(f"DiversityMonitor: loss_fn is for mode='full'; {mode} mode reads the gradients of your backward")
    if optimizer is not None and not hasattr(optimizer, "param_groups"):
        raise TypeError(f"DiversityMonitor: optimizer must be a torch optimizer (with param_groups), got {type(optimizer).__name__}")
    if writer is not None and not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(f"DiversityMonitor: writer must have add_scalar(tag, value, global_step), got {type(writer).__name__}")
    if grad_scaler is not None and not callable(getattr(grad_scaler, "get_scale", None)):
        raise TypeError(f"DiversityMonitor: grad_scaler must have get_scale() (a torch.amp.GradScaler), got {type(grad_scaler).__name__}")
    if lr_rule is not None and (not isinstance(lr_rule, str) or lr_rule not in LR_RULES):
        raise ValueError(f"DiversityMonitor: lr_rule must be one of {LR_RULES} or None, got {lr_rule!r}")
