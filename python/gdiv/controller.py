"""The adaptive-batch controller (Go's ``gdiv.Controller``): one call per
measured step turns a batch's measured sums into the estimate, the smoothed
estimate, the next batch size and the learning-rate factor.

Every framework adapter (``gdiv.torch.DiversityMonitor`` today) is capture +
device reduction + :meth:`Controller.observe` + records; the Go reference
trainer decides through the same Go code. The settings and the state live in
two small float64 buffers owned by this object and read (and written back)
by Go on every call: Go keeps nothing, checkpoints are plain numbers, and a
failed call changes nothing.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Dict, Optional

from ._bridge import lib
from ._results import Estimate
from ._validate import check_float, check_int, check_seed
from .errors import ParamError, translate
from .policy import LR_RULES, BatchSizePolicy

__all__ = ["Controller", "Decision", "EstimatorView", "SKIP_REASONS", "step_seed"]

_CFG, _STATE, _IN, _OUT = 24, 16, 12, 22
_CfgBuf = ctypes.c_double * _CFG
_StateBuf = ctypes.c_double * _STATE
_InBuf = ctypes.c_double * _IN
_OutBuf = ctypes.c_double * _OUT
_PolBuf = ctypes.c_double * 8
_addressof = ctypes.addressof
_make_estimate = Estimate._make  # type: ignore[attr-defined]

SKIP_REASONS = (None, "batch of 1", "non-finite", "unmeasured")
"""``Decision.skipped`` by Go's skip code (gdiv.Skip)."""

_STATE_KEYS = ("batch", "steps", "examples", "decisions", "first_batch")  # state[5:10]
_CADENCE_KEYS = ("interval", "wait")  # state[12:14]
_RAMP_KEYS = ("ramp_from", "ramp_left")  # state[14:16]; absent from checkpoints before the LR warm-up: 0 (no ramp)
_EST_KEYS = ("beta", "steps", "ema_m2", "ema_g", "weight")


def _split(seed: int) -> tuple:
    return float(seed >> 32), float(seed & 0xFFFFFFFF)


def _join(hi: float, lo: float) -> int:
    return (int(hi) << 32) | int(lo)


def step_seed(seed: int, step: int) -> int:
    """The seed of step k's mechanism draws (Go's ``gdiv.StepSeed``): a fixed
    function of (seed, k), so that a resumed run draws the same noise."""
    out = (ctypes.c_double * 2)()
    hi, lo = _split(check_seed(seed))
    try:
        lib.ControllerStepSeed(hi, lo, check_int("step", step), _addressof(out))
    except RuntimeError as e:
        raise translate(e) from None
    return _join(out[0], out[1])


class Decision:
    """What :meth:`Controller.observe` returns for one step.

    Attributes:
        step: 1-based index of the observation.
        batch: the observed batch; next_batch: the batch to use next.
        lr_factor: multiply each initial learning rate by it for this step
            (the LR rule from the first batch B₀; 1.0 for a sum loss).
        noise_std: the standard deviation of the summed Langevin noise to
            add to the batch gradient (0.0 without noise).
        sum_sq_norms, sq_norm_of_sum: Σ‖g_i‖², ‖Σ g_i‖² of the batch
            (unscaled, with the mechanism; NaN when skipped).
        estimate: the per-batch :class:`gdiv.Estimate`; smoothed: the
            smoothed one after the step.
        diversity: smoothed batch bound / n (None without dataset_size).
        skipped: None, "batch of 1", "non-finite" or "unmeasured".
        measure_next: whether the cadence measures the next step.
    """

    __slots__ = (
        "step",
        "batch",
        "next_batch",
        "lr_factor",
        "noise_std",
        "sum_sq_norms",
        "sq_norm_of_sum",
        "estimate",
        "smoothed",
        "diversity",
        "skipped",
        "measure_next",
    )

    def __init__(self, o: Any) -> None:
        self.step = int(o[0])
        self.batch = int(o[1])
        self.next_batch = int(o[2]) or None
        self.lr_factor = o[3]
        self.noise_std = o[4]
        self.sum_sq_norms = o[5]
        self.sq_norm_of_sum = o[6]
        self.estimate = _make_estimate(o[7:13])
        self.smoothed = _make_estimate(o[13:19])
        self.diversity = None if math.isnan(o[19]) else o[19]
        self.skipped = SKIP_REASONS[int(o[20])]
        self.measure_next = o[21] != 0.0

    def __repr__(self) -> str:
        return "Decision(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


class Controller:
    """Go's adaptive-batch controller: estimator, adjusted policy, LR rule,
    Langevin correction and mechanism seeds, one bridge call per step.

    Args:
        policy: a :class:`gdiv.BatchSizePolicy`, or None to measure only. It is
            adjusted once, like Go's trainer: ``min_batch`` raised to 2,
            ``max_batch=None`` capped at ``dataset_size`` if given
            (:attr:`policy`).
        batch_size: the initial batch (None: the smallest the policy allows,
            or unknown until the first step without a policy).
        dataset_size: n (enables ``diversity``; needed by "shuffle").
        sampling: "replacement" (Lemma 1's estimator) or "shuffle" (without
            replacement: the finite-population estimator).
        estimator_beta: EMA decay in [0, 1) of the ratio-of-EMAs estimate.
        loss_reduction: "mean" or "sum" (the LR rule applies to "mean" only).
        lr_rule: "none", "linear", "sqrt" or "adascale" ("none" with a
            sum loss).
        max_lr_factor: None, or a cap ≥ 1 on the LR factor: the learning
            rate never exceeds max_lr_factor × the initial one, whatever the
            rule and the batch.
        lr_warmup_steps: W ≥ 0 (mean loss): after each batch change the
            policy decides, ramp the LR factor linearly over W steps from
            the factor of the step before the change to the rule's (Goyal
            et al. 2017's warm-up; the W-th step reaches it); a change to a
            lower factor applies at once. 0 or 1: none (Go's
            ``ControllerSettings.LRWarmupSteps``).
        world_size: the data-parallel workers P sharing each batch: the
            adjusted policy rounds to lcm(multiple_of, P).
        langevin_std: σ ≥ 0 of Langevin noise added once to the summed
            gradient (norms mode); 0 for none.
        seed: base seed of the per-step mechanism seeds (None draws one).
        measure_every: the cadence: an integer k ≥ 1 (measure steps 1,
            k+1, 2k+1, …) or "auto" (every step while the estimate settles
            and whenever the smoothed bound moves by > 10 %, doubling the
            interval after each step that moved it < 2 %, up to
            ``max_measure_every``); see :attr:`Decision.measure_next`.
        max_measure_every: the adaptive cadence's largest interval.

    Raises:
        gdiv.ParamError: a bad setting; ``err.field`` names it.
    """

    __slots__ = ("_cfg", "_state", "_in", "_out", "_policy", "_settings", "seed", "_last_factor")

    def __init__(
        self,
        *,
        policy: Optional[BatchSizePolicy] = None,
        batch_size: Optional[int] = None,
        dataset_size: Optional[int] = None,
        sampling: str = "replacement",
        estimator_beta: float = 0.9,
        loss_reduction: str = "mean",
        lr_rule: str = "none",
        langevin_std: float = 0.0,
        seed: Optional[int] = None,
        measure_every: Any = 1,
        max_measure_every: int = 16,
        max_lr_factor: Optional[float] = None,
        world_size: int = 1,
        lr_warmup_steps: int = 0,
    ) -> None:
        if policy is not None and not isinstance(policy, BatchSizePolicy):
            raise TypeError(f"policy must be a gdiv.BatchSizePolicy or None, got {type(policy).__name__}")
        if sampling not in ("replacement", "shuffle"):
            raise ParamError(f"sampling = {sampling!r}: want 'replacement' or 'shuffle'")
        if loss_reduction not in ("mean", "sum"):
            raise ParamError(f"loss_reduction = {loss_reduction!r}: want 'mean' or 'sum'")
        if lr_rule not in LR_RULES:
            raise ParamError(f"lr_rule = {lr_rule!r}: want one of {LR_RULES}")
        # Settings cross as float64 (the config buffer): integers above 2**53 are refused.
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, lo=1, f64=True)
        if dataset_size is not None:
            dataset_size = check_int("dataset_size", dataset_size, lo=1, f64=True)
        estimator_beta = check_float("estimator_beta", estimator_beta)
        langevin_std = check_float("langevin_std", langevin_std)
        auto = isinstance(measure_every, str) and measure_every == "auto"
        if not auto:
            if isinstance(measure_every, str):
                raise ParamError(f"measure_every = {measure_every!r}: want an integer ≥ 1 or 'auto'")
            measure_every = check_int("measure_every", measure_every, lo=1, f64=True)
        max_measure_every = check_int("max_measure_every", max_measure_every, lo=1, f64=True)
        world_size = check_int("world_size", world_size, lo=1, f64=True)
        lr_warmup_steps = check_int("lr_warmup_steps", lr_warmup_steps, lo=0, f64=True)
        if max_lr_factor is not None:
            max_lr_factor = check_float("max_lr_factor", max_lr_factor)
            if max_lr_factor == 0:  # Go's "no cap"; in Python that is None
                err = ParamError("max_lr_factor: max_lr_factor = 0: want a factor ≥ 1, or None for no cap")
                err.field = "max_lr_factor"  # type: ignore[attr-defined]
                raise err
        self.seed = check_seed(seed)
        self._settings = {
            "policy": policy,
            "batch_size": None if batch_size is None else int(batch_size),
            "dataset_size": None if dataset_size is None else int(dataset_size),
            "sampling": sampling,
            "estimator_beta": float(estimator_beta),
            "loss_reduction": loss_reduction,
            "lr_rule": lr_rule,
            "langevin_std": float(langevin_std),
            "measure_every": measure_every,
            "max_measure_every": max_measure_every,
            "max_lr_factor": max_lr_factor,
            "world_size": world_size,
            "lr_warmup_steps": lr_warmup_steps,
        }
        cfg = _CfgBuf()
        if policy is not None:
            cfg[0:8] = list(policy._values)
            cfg[8] = 1.0
        cfg[9] = float(batch_size or 0)  # 0: unknown
        cfg[10] = float(dataset_size or 0)
        cfg[11] = 1.0 if sampling == "shuffle" else 0.0
        cfg[12] = float(estimator_beta)
        cfg[13] = 1.0 if loss_reduction == "mean" else 0.0
        cfg[14] = float(LR_RULES.index(lr_rule))
        cfg[15] = float(langevin_std)
        cfg[16], cfg[17] = _split(self.seed)
        cfg[18] = 0.0 if auto else float(measure_every)
        cfg[19] = 1.0 if auto else 0.0
        cfg[20] = float(max_measure_every)
        cfg[21] = 0.0 if max_lr_factor is None else float(max_lr_factor)
        cfg[22] = float(world_size)
        cfg[23] = float(lr_warmup_steps)
        state = _StateBuf()
        pol = _PolBuf()
        try:
            lib.ControllerInit(_addressof(cfg), _addressof(state), _addressof(pol))
        except RuntimeError as e:
            raise translate(e) from None
        self._cfg = cfg
        self._state = state
        self._in = _InBuf()
        self._out = _OutBuf()
        self._policy = None if policy is None else BatchSizePolicy._from_go(pol)
        self._last_factor = 1.0

    # -- read-only views of the state ------------------------------------------

    @property
    def policy(self) -> Optional[BatchSizePolicy]:
        """The adjusted policy Go applies (None without one)."""
        return self._policy

    @property
    def settings(self) -> Dict[str, Any]:
        """The settings the controller was built with (a copy)."""
        return dict(self._settings)

    @property
    def batch_size(self) -> Optional[int]:
        """The batch size to use next (None: unknown)."""
        return int(self._state[5]) or None

    @property
    def steps(self) -> int:
        return int(self._state[6])

    @property
    def examples(self) -> int:
        return int(self._state[7])

    @property
    def decisions(self) -> int:
        return int(self._state[8])

    @property
    def first_batch(self) -> Optional[int]:
        """B₀ of the LR rule: the first observed batch (None before)."""
        return int(self._state[9]) or None

    @property
    def next_seed(self) -> int:
        """The seed of the next step's mechanism draws (:func:`step_seed`)."""
        return _join(self._state[10], self._state[11])

    @property
    def measure_next(self) -> bool:
        """Whether the cadence measures the next step."""
        return self._state[13] == 0.0

    @property
    def lr_factor(self) -> float:
        """The last step's LR factor (1.0 before the first step)."""
        return self._last_factor

    @property
    def estimator(self) -> "EstimatorView":
        """A read-only view of the estimator inside the state."""
        return EstimatorView(self)

    @property
    def smoothed(self) -> Estimate:
        """The current smoothed estimate."""
        out = (ctypes.c_double * 6)()
        st = (ctypes.c_double * 5)(*self._state[0:5])
        try:
            lib.EstimatorSmoothed(_addressof(st), _addressof(out))
        except RuntimeError as e:
            raise translate(e) from None
        return _make_estimate(out)

    # -- the step ----------------------------------------------------------------

    def observe(
        self,
        batch: int,
        sum_sq_norms: float,
        sq_norm_batch_grad: float,
        *,
        mean: bool = False,
        norms_scale: float = 1.0,
        grad_scale: float = 1.0,
        dim: int = 0,
        noise_dot: float = 0.0,
        noise_sq_norm: float = 0.0,
        b_small: int = 0,
        sq_norm_small: float = 0.0,
        unmeasured: bool = False,
    ) -> Decision:
        """Fold one measured step into the state (one Go call) and decide.

        Args:
            batch: the step's examples B.
            sum_sq_norms: the sum of the measured per-example squared norms.
            sq_norm_batch_grad: the squared norm of the measured batch
                gradient (before the Langevin noise, which Go adds).
            mean: the measured gradients are those of the mean-reduced loss
                (both sums are B² too small; Go multiplies).
            norms_scale, grad_scale: the loss scales of the measured
                per-example and batch gradients (mixed precision).
            dim: trained parameters d (the Langevin correction).
            noise_dot, noise_sq_norm: ⟨g, ξ⟩ and ‖ξ‖² of the measured batch
                gradient g and a unit Gaussian ξ drawn with
                :attr:`next_seed`; afterwards add ``noise_std·ξ`` to g.
            b_small, sq_norm_small: the two-scale pair instead of
                per-example norms: the local batch and the mean over the
                local batches of their gradient's squared norm (with
                ``sq_norm_batch_grad`` the global one's). With ``mean`` they
                are mean gradients, else sums (Go divides by b²); the scales
                say by how much the measured local and global gradients are
                too large.
            unmeasured: a step the trainer did not measure (the cadence):
                only ``batch`` (and ``dim`` with Langevin noise) is read.

        Raises:
            gdiv.ParamError: an invalid observation (state unchanged).
        """
        self._in[:] = [  # the Observation (see pybridge/controller.go)
            float(batch),
            sum_sq_norms,
            sq_norm_batch_grad,
            1.0 if mean else 0.0,
            norms_scale,
            grad_scale,
            float(b_small),
            sq_norm_small,
            float(dim),
            noise_dot,
            noise_sq_norm,
            1.0 if unmeasured else 0.0,
        ]
        try:
            lib.ControllerObserve(_addressof(self._cfg), _addressof(self._state), _addressof(self._in), _addressof(self._out))
        except RuntimeError as e:
            raise translate(e) from None
        d = Decision(self._out)
        self._last_factor = d.lr_factor
        return d

    # -- checkpoints -----------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The complete state as plain data (the settings are not state)."""
        st = self._state
        d: Dict[str, Any] = {k: int(st[5 + i]) for i, k in enumerate(_STATE_KEYS)}
        d.update({k: int(st[12 + i]) for i, k in enumerate(_CADENCE_KEYS)})
        d["ramp_from"], d["ramp_left"] = st[14], int(st[15])
        est = {k: st[i] for i, k in enumerate(_EST_KEYS)}
        est["steps"] = int(est["steps"])
        d["estimator"] = est
        d["lr_factor"] = self._last_factor
        return d

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output: validated by Go as a whole
        first; on any error nothing changes. A state without the LR
        warm-up's ``ramp_from``/``ramp_left`` (a checkpoint from before it)
        loads as one with no ramp in progress.

        Raises:
            gdiv.ParamError: a missing, mistyped or inconsistent field (named).
        """
        if not isinstance(state, dict):
            raise ParamError(f"controller state must be a dict, got {type(state).__name__}")
        buf = _StateBuf()
        try:
            est = state["estimator"]
            for i, k in enumerate(_EST_KEYS):
                buf[i] = _real(f"estimator.{k}", est[k])
            for i, k in enumerate(_STATE_KEYS):
                buf[5 + i] = _real(k, state[k])
            for i, k in enumerate(_CADENCE_KEYS):
                buf[12 + i] = _real(k, state[k])
            for i, k in enumerate(_RAMP_KEYS):
                buf[14 + i] = _real(k, state.get(k, 0))
            factor = _real("lr_factor", state.get("lr_factor", 1.0))
        except ParamError:
            raise
        except (KeyError, TypeError) as e:
            raise ParamError(f"controller state: missing or malformed field {e}") from None
        try:
            lib.ControllerSetState(_addressof(self._cfg), _addressof(buf))
        except RuntimeError as e:
            raise translate(e) from None
        self._state = buf
        self._last_factor = factor

    def __getstate__(self) -> Dict[str, Any]:
        return {"settings": self._settings, "seed": self.seed, "state": self.state_dict()}

    def __setstate__(self, s: Dict[str, Any]) -> None:
        self.__init__(**s["settings"], seed=s["seed"])  # type: ignore[misc]
        self.load_state_dict(s["state"])

    def __repr__(self) -> str:
        return f"Controller(steps={self.steps}, batch_size={self.batch_size}, policy={self._policy!r})"


class EstimatorView:
    """Read-only view of a :class:`Controller`'s estimator (the ratio of
    EMAs inside its state): ``steps`` (estimated batches), ``beta``,
    ``smoothed`` and ``state_dict()`` like :class:`gdiv.Estimator`'s."""

    __slots__ = ("_c",)

    def __init__(self, controller: Controller) -> None:
        self._c = controller

    @property
    def steps(self) -> int:
        return int(self._c._state[1])

    @property
    def beta(self) -> float:
        return self._c._state[0]

    @property
    def smoothed(self) -> Estimate:
        return self._c.smoothed

    def state_dict(self) -> Dict[str, Any]:
        return dict(self._c.state_dict()["estimator"])

    def __repr__(self) -> str:
        return f"EstimatorView(steps={self.steps}, smoothed={self.smoothed!r})"


def _real(name: str, v: Any) -> float:
    # A state field crosses as a float64: integers above 2**53 are refused
    # (not rounded); Go checks that the integer fields are integers.
    what = f"controller state {name}"
    if not isinstance(v, float) and hasattr(type(v), "__index__"):
        return float(check_int(what, v, f64=True, field=name))
    return check_float(what, v, field=name)
