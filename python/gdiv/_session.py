"""What every framework's monitor does after its one controller call, the
same for PyTorch and Keras: the step record, the history, the learning-rate
bookkeeping, the skip warnings, the scalar writer and the checkpoint.

A framework adapter captures, reduces on its device and calls
:meth:`Session.decide` with the step's few numbers; it then applies the
returned learning rates to its optimizer. Nothing here knows a framework.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .controller import Controller, Decision, EstimatorView
from .errors import NonFiniteError, ParamError
from .policy import LR_RULES, BatchSizePolicy

__all__ = ["RECORD_FIELDS", "Session", "SessionMonitor", "make_record"]

RECORD_FIELDS: Tuple[str, ...] = (
    "step",
    "examples",
    "batch",
    "next_batch",
    "lr",
    "loss",
    "sum_sq_norms",
    "sq_norm_of_sum",
    "m2",
    "g",
    "batch_bound",
    "diversity",
    "noise_scale",
    "no_signal",
    "skipped",
)
"""The keys of each step record a monitor returns (and keeps in its history)."""

WRITER_KEYS = ("batch", "lr", "loss", "m2", "g", "batch_bound", "diversity", "noise_scale")


def make_record(d: Decision, examples: int, lr: Optional[float], loss: Optional[float], n: Optional[int]) -> Dict[str, Any]:
    sm = d.smoothed
    return {
        "step": d.step,
        "examples": examples,
        "batch": d.batch,
        "next_batch": d.next_batch,
        "lr": lr,
        "loss": loss,
        "sum_sq_norms": d.sum_sq_norms,
        "sq_norm_of_sum": d.sq_norm_of_sum,
        "m2": sm.m2,
        "g": sm.g,
        "batch_bound": sm.batch_bound,
        "diversity": None if n is None else d.diversity,
        "noise_scale": sm.noise_scale,
        "no_signal": bool(sm.no_signal),
        "skipped": d.skipped,
    }


def _finite_real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


class Session:
    """A monitor's framework-free half: the controller, the history and the
    learning-rate rule's bookkeeping.

    Args:
        controller: the :class:`gdiv.Controller` that decides.
        who: the name errors and warnings start with ("gdiv.torch", ...).
        dataset_size: n (records' diversity), or None.
        on_nonfinite: "skip" (the controller skips the step) or "raise".
        writer: None or an object with ``add_scalar(tag, value, step)``.
    """

    def __init__(self, controller: Controller, *, who: str, dataset_size: Optional[int], on_nonfinite: str, writer: Any) -> None:
        self.controller = controller
        self.who = who
        self.dataset_size = dataset_size
        self.on_nonfinite = on_nonfinite
        self.writer = writer
        self.history: List[Dict[str, Any]] = []
        self.base_lrs: Optional[List[float]] = None  # the optimizer's lrs at the first step
        self.lr_batch: Optional[int] = None
        self.lr_factor = 1.0
        self.force_lr = False  # after a load: set the lrs once, whatever the optimizer holds

    @classmethod
    def create(
        cls,
        *,
        who: str,
        policy: Optional[BatchSizePolicy],
        loss_reduction: str,
        lr_rule: Optional[str],
        dataset_size: Optional[int],
        sampling: Optional[str],
        mechanism: Any,
        on_nonfinite: str,
        writer: Any,
        **controller: Any,
    ) -> "Session":
        """A monitor's session with the defaults every adapter applies: the
        sampling "shuffle" when the data set size is known, else
        "replacement"; the policy's LR rule for a mean loss ("none" without
        a policy or with a sum loss: Go refuses a rule there, naming the
        reason); Langevin noise (norms mode) by the controller. Go validates
        and adjusts the rest (``controller``: the other settings)."""
        from .mechanisms import Langevin

        if sampling is None:
            sampling = "replacement" if dataset_size is None else "shuffle"
        if lr_rule is None:
            lr_rule = policy.lr_rule if policy is not None and loss_reduction == "mean" else "none"
        ctl = Controller(
            policy=policy,
            loss_reduction=loss_reduction,
            lr_rule=lr_rule,
            dataset_size=dataset_size,
            sampling=sampling,
            langevin_std=mechanism.std if isinstance(mechanism, Langevin) else 0.0,
            **controller,
        )
        return cls(ctl, who=who, dataset_size=dataset_size, on_nonfinite=on_nonfinite, writer=writer)

    @property
    def lr_rule(self) -> str:
        return self.controller.settings["lr_rule"]

    @property
    def sampling(self) -> str:
        return self.controller.settings["sampling"]

    def learning_rates(self, batch: int, factor: float, current: Optional[Sequence[float]]) -> Optional[List[float]]:
        """The LR rule: the learning rates to set for the batch being
        stepped, or None to leave the optimizer alone.

        ``current`` is the optimizer's lrs now (None: no optimizer). The
        factor changes with the batch (and, under "adascale", with the
        estimate); the lrs are set only when it changes, so a loop that sets
        its own lr at a constant factor is left alone.
        """
        if current is not None and self.base_lrs is None:
            self.base_lrs = [float(v) for v in current]
        changed = (factor != self.lr_factor and self.lr_batch is not None) or self.force_lr
        self.force_lr = False
        self.lr_batch = batch
        self.lr_factor = factor
        if current is None or not changed or self.lr_rule == "none":
            return None
        assert self.base_lrs is not None
        if len(self.base_lrs) != len(current):
            raise ValueError(
                f"{self.who}: the optimizer had {len(self.base_lrs)} learning rates (param groups) at the first step and has "
                f"{len(current)} now; the lr rule rescales each initial lr"
            )
        return [lr0 * factor for lr0 in self.base_lrs]

    def check(self, d: Decision) -> None:
        """on_nonfinite='raise', and the batch-of-1 warning."""
        if d.skipped == "non-finite" and self.on_nonfinite == "raise":
            raise NonFiniteError(
                f"{self.who}: step {d.step}: non-finite gradients (a NaN/Inf loss or overflowed gradients). "
                "Lower the learning rate, or pass on_nonfinite='skip' to skip such steps."
            )
        if d.skipped == "batch of 1":
            warnings.warn(
                f"{self.who}: step {d.step} has a batch of 1 example; the unbiased estimate needs at least 2 "
                "(signal and noise cannot be separated), so this step is not estimated and the policy makes no "
                "decision. Drop the last partial batch, or use gdiv's adaptive batches.",
                RuntimeWarning,
                stacklevel=3,
            )

    def record(self, d: Decision, lr: Optional[float], loss: Optional[float], *, keep: bool = True) -> Dict[str, Any]:
        """The step's record, appended to the history and written (measured
        steps; ``keep=False``: an unmeasured one, returned only)."""
        rec = make_record(d, self.controller.examples, lr, loss, self.dataset_size)
        if not keep:
            return rec
        self.history.append(rec)
        if self.writer is not None:
            for key in WRITER_KEYS:
                v = rec[key]
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(f"gdiv/{key}", v, d.step)
            self.writer.add_scalar("gdiv/skipped", 0.0 if d.skipped is None else 1.0, d.step)
        return rec

    # -- checkpoints -------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        pol = self.controller.policy
        return {
            "lr_rule": self.lr_rule,
            "policy": None if pol is None else pol.state_dict(),
            "controller": self.controller.state_dict(),
            "base_lrs": None if self.base_lrs is None else list(self.base_lrs),
            "lr_batch": self.lr_batch,
            "seed": self.controller.seed,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Dict[str, Any], *, world_size: int = 1) -> None:
        """Validate everything first (Go checks the controller state as a
        whole), then swap; a failed load changes nothing. The controller is
        rebuilt with this session's settings and the state's policy and LR
        rule (on another world size Go rounds the policy to it again)."""
        who = f"{self.who}: load_state_dict"
        try:
            pol_state, lr_rule, seed = state["policy"], state["lr_rule"], state["seed"]
            base_lrs, lr_batch, history, ctrl_state = state["base_lrs"], state["lr_batch"], state["history"], state["controller"]
        except KeyError as e:
            raise ParamError(f"{who}: the state has no {e}") from None
        if pol_state is not None and not isinstance(pol_state, dict):
            raise ParamError(f"{who}: policy = {pol_state!r}: want a dict or None")
        policy = None if pol_state is None else BatchSizePolicy(**pol_state)
        if lr_rule not in LR_RULES:
            raise ParamError(f"{who}: lr_rule = {lr_rule!r}: want one of {LR_RULES}")
        settings = self.controller.settings
        settings.update(policy=policy, lr_rule=lr_rule)
        settings["batch_size"] = None  # the state sets the batch
        controller = Controller(**settings, seed=seed)
        controller.load_state_dict(ctrl_state)
        b = controller.batch_size
        if world_size > 1 and b is not None and b % world_size:
            raise ValueError(
                f"{who}: the checkpoint's global batch {b} does not split over "
                f"{world_size} workers; resume on a world size that divides it (or one the checkpoint's policy rounds to)"
            )
        if base_lrs is not None:
            if not isinstance(base_lrs, (list, tuple)) or not all(_finite_real(v) for v in base_lrs):
                raise ParamError(f"{who}: base_lrs = {base_lrs!r}: want a list of finite numbers or None")
            base_lrs = [float(v) for v in base_lrs]
        if lr_batch is not None and (isinstance(lr_batch, bool) or not isinstance(lr_batch, (int, np.integer)) or lr_batch < 1):
            raise ParamError(f"{who}: lr_batch = {lr_batch!r}: want an integer ≥ 1 or None")
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise ParamError(f"{who}: history: want a list of record dicts")
        # Everything is valid: swap.
        self.controller = controller
        self.base_lrs = base_lrs
        self.lr_batch = None if lr_batch is None else int(lr_batch)
        self.force_lr = base_lrs is not None
        self.history = [dict(r) for r in history]


class SessionMonitor:
    """The read-only face every framework's monitor shows (a mixin over its
    ``_session``): the controller, the history and the decisions, and the
    checkpoint's compatibility check."""

    _session: Session

    @property
    def controller(self) -> Controller:
        """The :class:`gdiv.Controller` that decides (one Go call per step)."""
        return self._session.controller

    @property
    def history(self) -> List[Dict[str, Any]]:
        """The records of the measured steps (dicts with :data:`RECORD_FIELDS`)."""
        return self._session.history

    @property
    def on_nonfinite(self) -> str:
        return self._session.on_nonfinite

    @property
    def writer(self) -> Any:
        return self._session.writer

    @property
    def lr_rule(self) -> str:
        """The LR rule the controller applies ("none" with a sum loss)."""
        return self._session.lr_rule

    @property
    def policy(self) -> Optional[BatchSizePolicy]:
        """The adjusted policy the controller applies (None without one)."""
        return self.controller.policy

    @property
    def estimator(self) -> EstimatorView:
        """A read-only view of the controller's estimator (steps, smoothed, state_dict())."""
        return self.controller.estimator

    @property
    def seed(self) -> int:
        """The base seed of the mechanism's per-step draws."""
        return self.controller.seed

    @property
    def batch_size(self) -> Optional[int]:
        """The batch size to use next: the policy's latest decision (the
        initial batch before the first step); without a policy, the initial
        ``batch_size`` or the last step's batch."""
        return self.controller.batch_size

    @property
    def steps(self) -> int:
        """The number of steps so far (skipped and unmeasured ones included)."""
        return self.controller.steps

    @property
    def examples(self) -> int:
        """Per-example gradients so far: the sum of the batches of all steps."""
        return self.controller.examples

    @property
    def lr_factor(self) -> float:
        """The LR rule's factor ``scale_lr(1, B₀, B)`` for the batch B of the
        latest step (B₀ = the first step's batch; 1.0 before the first step
        and for a sum-reduced loss). For loops that set the lr themselves
        (an LR scheduler): give the monitor no optimizer — it then leaves the
        learning rate alone — and multiply your schedule by this factor."""
        return self.controller.lr_factor

    def _check_state(self, state: Any, version: int, compat: Sequence[str]) -> None:
        """A checkpoint of this monitor's kind: a dict of the right version
        whose settings in ``compat`` equal this monitor's."""
        who = f"{self._session.who}.DiversityMonitor.load_state_dict"
        if not isinstance(state, dict):
            raise ParamError(f"{who}: want a dict, got {type(state).__name__}")
        if state.get("version") != version:
            raise ValueError(f"{who}: state version {state.get('version')!r}, want {version}")
        for key in compat:
            if key not in state:
                raise ParamError(f"{who}: the state has no {key!r}")
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"{who}: the state has {key}={state[key]!r} but this monitor {key}={getattr(self, key)!r}; build the monitor with the same settings"
                )
