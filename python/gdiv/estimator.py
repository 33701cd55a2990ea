"""Unbiased batch-size-bound estimates and their smoothing (Go's Estimator).

From one batch of b per-example gradients drawn with replacement (the
paper's sampling, Lemma 1),

    M̂² = (1/b) Σ‖g_i‖²,   Ĝ = (b‖ḡ‖² − M̂²)/(b − 1),   B̂_S = M̂²/Ĝ,

with M̂² and Ĝ unbiased. Drawn without replacement from a data set of n
examples (a shuffled epoch; pass ``dataset_size=n``) the Go core uses the
finite-population correction instead. Ĝ ≤ 0 means the batch shows no evidence
of a signal: ``batch_bound`` is +Inf and ``no_signal`` is set, so a batch-size
policy goes to its maximum.

:class:`Estimator` smooths per-batch estimates as a **ratio of EMAs** — the
debiased EMA of M̂² over the debiased EMA of Ĝ — never an EMA of ratios and
never b·Δ_batch (which cannot exceed b). Its state is five numbers, kept on the
Python side and updated by Go in place, so ``state_dict()`` is plain data and
a resumed run produces the same estimates.

The two-scale variant (:meth:`Estimator.update_two_scale`,
:func:`estimate_two_scale`) is McCandlish et al.'s unbiased pair for
data-parallel training without per-example gradients: the mean over ranks of
the local mean gradient's squared norm (b per rank) against the global one
(P·b examples).

All formulas are Go's (package gdiv); this module only moves numbers.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Dict, Mapping, Optional, Tuple

from ._arrays import operand, vector
from ._bridge import lib
from ._results import Estimate
from ._validate import check_float, check_int
from .errors import NonFiniteError, ParamError, translate

__all__ = [
    "Estimator",
    "estimate",
    "estimate_from_norms",
    "estimate_from_sums",
    "estimate_two_scale",
    "batch_sums_from_scalars",
]

_addressof = ctypes.addressof
_Buf6 = ctypes.c_double * 6
_Buf12 = ctypes.c_double * 12
_make = Estimate._make  # type: ignore[attr-defined]

_REDUCTIONS = ("sum", "mean")
_STATE_KEYS = ("beta", "steps", "ema_m2", "ema_g", "weight")  # the state buffer, in order


def _dataset_size(n: Optional[int]) -> int:
    if n is None:
        return 0
    return check_int("dataset_size", n, lo=1)


def _reduction(r: str) -> bool:
    if r not in _REDUCTIONS:
        raise ValueError(f"reduction = {r!r}; want 'sum' (batch_grad = Σ g_i) or 'mean' (batch_grad = (1/b) Σ g_i)")
    return r == "mean"


def _call(fn: Any, state: int, out: Any, *args: Any) -> None:
    try:
        fn(state, _addressof(out), *args)
    except RuntimeError as e:
        raise translate(e) from None


def _norms_args(sq_norms: Any, batch_grad: Any, reduction: str) -> tuple:
    nk, na, b, keep1 = vector(sq_norms, "sq_norms")
    gk, ga, d, keep2 = vector(batch_grad, "batch_grad", flatten=True)
    return (nk, na, b, gk, ga, d, _reduction(reduction)), (keep1, keep2)


def estimate(grads: Any, *, dataset_size: Optional[int] = None) -> Estimate:
    """Unbiased estimates from one batch of per-example gradients.

    Args:
        grads: (b, d) per-example gradients of one batch (any input
            :func:`gdiv.stats` accepts; zero copy for numpy, torch, Arrow).
        dataset_size: None if the batch was drawn with replacement (the
            paper); n for b distinct examples out of n (without replacement).

    Returns:
        Estimate (batch = b).

    Raises:
        gdiv.TooFewError: b < 2 (an unbiased estimate needs two examples).
        gdiv.ParamError: b > dataset_size.
        The errors of :func:`gdiv.stats` otherwise.
    """
    op = operand(grads)
    out = _Buf6()
    _call(lib.EstimateGrads, 0, out, _dataset_size(dataset_size), op[0], op[1], op[2], op[3], op[4])
    return _make(out[:])


def estimate_from_norms(sq_norms: Any, batch_grad: Any, *, reduction: str = "sum", dataset_size: Optional[int] = None) -> Estimate:
    """Unbiased estimates from per-example squared norms and the batch gradient.

    This is the form frameworks produce cheaply (per-example norms without
    materializing per-example gradients).

    Args:
        sq_norms: 1-D array of the b per-example squared norms ‖g_i‖² (numpy
            or torch CPU, float32/float64; zero copy).
        batch_grad: the batch gradient, any shape, flattened (numpy or torch
            CPU, contiguous, float32/float64; zero copy): Σ g_i for
            ``reduction="sum"`` or (1/b) Σ g_i for ``reduction="mean"``
            (a mean-reduced loss).
        reduction: "sum" or "mean", as above.
        dataset_size: as for :func:`estimate`.

    Returns:
        Estimate (batch = b).

    Raises:
        gdiv.ParamError: a negative squared norm.
        gdiv.NonFiniteError: a NaN or Inf.
        gdiv.TooFewError: b < 2.
    """
    args, keep = _norms_args(sq_norms, batch_grad, reduction)
    out = _Buf6()
    _call(lib.EstimateNorms, 0, out, _dataset_size(dataset_size), *args)
    del keep
    return _make(out[:])


def estimate_from_sums(batch_size: int, sum_sq_norms: float, sq_norm_of_sum: float, *, dataset_size: Optional[int] = None) -> Estimate:
    """Unbiased estimates from the two sums of one batch.

    Args:
        batch_size: b.
        sum_sq_norms: Σ‖g_i‖² over the batch.
        sq_norm_of_sum: ‖Σ g_i‖² over the batch (of the sum, not the mean).
        dataset_size: as for :func:`estimate`.

    Returns:
        Estimate (batch = b).
    """
    out = _Buf6()
    _call(
        lib.EstimateSums,
        0,
        out,
        check_int("batch_size", batch_size),
        _dataset_size(dataset_size),
        check_float("sum_sq_norms", sum_sq_norms),
        check_float("sq_norm_of_sum", sq_norm_of_sum),
    )
    return _make(out[:])


def estimate_two_scale(b_small: int, sq_norm_small: float, b_big: int, sq_norm_big: float) -> Estimate:
    """McCandlish et al.'s unbiased two-scale estimates (data parallel).

    With P ranks of b_small examples each: ``sq_norm_small`` is the mean over
    ranks of ‖ḡ_r‖² (each rank's local MEAN gradient) and ``sq_norm_big`` is
    ‖ḡ‖² of the global mean over b_big = P·b_small examples.

    Args:
        b_small: examples per rank (≥ 1).
        sq_norm_small: mean over ranks of the local mean gradient's squared norm.
        b_big: examples in the global batch (> b_small).
        sq_norm_big: squared norm of the global mean gradient.

    Returns:
        Estimate (batch = b_big).

    Raises:
        gdiv.ParamError: unless 1 ≤ b_small < b_big.
        gdiv.NonFiniteError: a non-finite input.
    """
    out = _Buf6()
    _call(lib.EstimateTwoScale, 0, out, *_two_scale_args(b_small, sq_norm_small, b_big, sq_norm_big))
    return _make(out[:])


def _two_scale_args(b_small: Any, sq_norm_small: Any, b_big: Any, sq_norm_big: Any) -> tuple:
    return (
        check_int("b_small", b_small),
        check_float("sq_norm_small", sq_norm_small),
        check_int("b_big", b_big),
        check_float("sq_norm_big", sq_norm_big),
    )


def batch_sums_from_scalars(
    batch_size: int,
    sum_sq_norms: float,
    sq_norm_batch_grad: float,
    *,
    reduction: str = "sum",
    norms_scale: float = 1.0,
    grad_scale: float = 1.0,
) -> Tuple[float, float]:
    """The two sums of a batch from scalars reduced where the gradients live
    (Go's ``BatchSumsFromScalars``): ``(Σ‖g_i‖², ‖Σ g_i‖²)``.

    For gradients on a GPU: reduce there — ``sq_norms.sum()`` and
    Σ_params ``p.grad.square().sum()`` — and pass the two numbers.

    Args:
        batch_size: b ≥ 1.
        sum_sq_norms: Σ of the measured per-example squared norms.
        sq_norm_batch_grad: the squared norm of the measured batch gradient,
            Σ g_i (``reduction="sum"``) or the mean (1/b) Σ g_i ("mean": the
            result is multiplied by b²).
        norms_scale, grad_scale: the factors s, t > 0 by which the measured
            per-example and batch gradients are too large (AMP's loss scale;
            1 without scaling): the values are divided by s² and t². After
            ``GradScaler.unscale_`` the batch gradient is unscaled (t = 1)
            but norms captured during backward are not.

    Returns:
        (sum_sq_norms, sq_norm_of_sum), for :meth:`Estimator.update` or
        :func:`estimate_from_sums`.

    Raises:
        gdiv.NonFiniteError: a NaN/Inf scalar (e.g. overflowed AMP gradients).
        gdiv.ParamError: a negative scalar, a bad scale.
        gdiv.EmptyInputError: batch_size < 1.
        gdiv.SumOverflowError: the result overflows.

    Example:
        >>> import gdiv
        >>> gdiv.batch_sums_from_scalars(4, 8.0, 0.5, reduction="mean")
        (8.0, 8.0)
    """
    out = (ctypes.c_double * 2)()
    try:
        lib.BatchSumsFromScalars(
            _addressof(out),
            check_int("batch_size", batch_size),
            check_float("sum_sq_norms", sum_sq_norms),
            check_float("sq_norm_batch_grad", sq_norm_batch_grad),
            _reduction(reduction),
            check_float("norms_scale", norms_scale),
            check_float("grad_scale", grad_scale),
        )
    except RuntimeError as e:
        raise translate(e) from None
    return out[0], out[1]


class Estimator:
    """Smoothed estimates of the batch-size bound B_S over training steps.

    Each update computes the unbiased per-batch estimates M̂², Ĝ in Go and
    folds them into debiased EMAs; the smoothed B̂_S is EMA(M̂²)/EMA(Ĝ).

    Args:
        beta: EMA decay in [0, 1): each update keeps ``beta`` of the old
            average (0.9–0.99 suit training; 0 means no smoothing).
        dataset_size: None when batches are drawn with replacement (the
            paper); the data set size n when each batch holds distinct
            examples (a shuffled epoch, without replacement).
        on_nonfinite: "raise" (default) raises :class:`gdiv.NonFiniteError`
            for a batch with NaN/Inf values; "skip" leaves the state
            unchanged, counts the batch in :attr:`skipped` and returns the
            current smoothed estimate (like AMP's skipped steps).

    Raises:
        gdiv.ParamError: beta outside [0, 1), bad dataset_size.

    An Estimator is not safe for concurrent use from several threads.

    Example:
        >>> import numpy as np, gdiv
        >>> est = gdiv.Estimator(beta=0.9)
        >>> rng = np.random.default_rng(0)
        >>> for _ in range(20):
        ...     smoothed = est.update(rng.normal(1.0, 1.0, size=(32, 10)))
        >>> 1 < smoothed.batch_bound < 10
        True
    """

    def __init__(self, beta: float = 0.9, *, dataset_size: Optional[int] = None, on_nonfinite: str = "raise") -> None:
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite = {on_nonfinite!r}; want 'raise' or 'skip'")
        self._state = (ctypes.c_double * 5)(check_float("beta", beta), 0.0, 0.0, 0.0, 0.0)
        self._dataset_size = _dataset_size(dataset_size)
        self._skip = on_nonfinite == "skip"
        self.skipped = 0
        self.last: Optional[Estimate] = None
        """The per-batch estimate of the latest update (None before any)."""
        self._check()

    # -- state ---------------------------------------------------------------

    def _check(self) -> Estimate:
        out = _Buf6()
        try:
            lib.EstimatorSmoothed(_addressof(self._state), _addressof(out))
        except RuntimeError as e:
            raise translate(e) from None
        return _make(out[:])

    @property
    def beta(self) -> float:
        """The EMA decay."""
        return self._state[0]

    @property
    def steps(self) -> int:
        """Number of updates so far (skipped batches not included)."""
        return int(self._state[1])

    @property
    def dataset_size(self) -> Optional[int]:
        """The data set size for sampling without replacement, or None."""
        return self._dataset_size or None

    @property
    def smoothed(self) -> Estimate:
        """The current smoothed estimate (batch = 0). Before the first update:
        zeros with no_signal set and batch_bound = +Inf."""
        return self._check()

    def state_dict(self) -> Dict[str, Any]:
        """Return the complete state as plain numbers, for checkpoints."""
        s = self._state
        return {
            "beta": s[0],
            "steps": int(s[1]),
            "ema_m2": s[2],
            "ema_g": s[3],
            "weight": s[4],
            "dataset_size": self._dataset_size or None,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`.

        Every field is checked first (types here, consistency by Go's
        ``SetState``); only then is the state replaced, so a failed load
        changes nothing.

        Raises:
            gdiv.ParamError: a missing, mistyped or inconsistent field —
                negative steps or ema_m2, beta outside [0, 1), weight outside
                (0, 1] after a step, a bad dataset_size or skipped;
                ``err.field`` names it.
            gdiv.NonFiniteError: non-finite averages.
        """
        if not isinstance(state, Mapping):
            raise ParamError(f"estimator state must be a mapping (a dict from state_dict()), got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            e = ParamError(f"estimator state: missing field {missing[0]!r} (a state_dict() has {', '.join(_STATE_KEYS)})")
            e.field = missing[0]  # type: ignore[attr-defined]
            raise e
        # steps crosses as a float64 like the rest; Go refuses a non-integer.
        new = (ctypes.c_double * 5)(*(check_float(k, state[k]) for k in _STATE_KEYS))
        if not isinstance(state["steps"], float):
            check_int("steps", state["steps"], f64=True)
        dataset_size = _dataset_size(state.get("dataset_size"))
        skipped = check_int("skipped", state.get("skipped", 0), lo=0)
        out = _Buf6()
        try:
            lib.EstimatorSmoothed(_addressof(new), _addressof(out))
        except RuntimeError as e:
            raise translate(e) from None
        # Everything is valid: swap.
        self._state = new
        self._dataset_size = dataset_size
        self.skipped = skipped

    def __getstate__(self) -> Dict[str, Any]:
        """Pickling (and copy.deepcopy) goes through :meth:`state_dict`."""
        return {"state": self.state_dict(), "on_nonfinite": "skip" if self._skip else "raise", "last": self.last}

    def __setstate__(self, s: Dict[str, Any]) -> None:
        st = s["state"]
        self.__init__(st["beta"], dataset_size=st["dataset_size"], on_nonfinite=s["on_nonfinite"])  # type: ignore[misc]
        self.load_state_dict(st)
        self.last = s["last"]

    # -- updates -------------------------------------------------------------

    def _update(self, fn: Any, *args: Any) -> Estimate:
        out = _Buf12()
        try:
            fn(_addressof(self._state), _addressof(out), *args)
        except RuntimeError as e:
            err = translate(e)
            if self._skip and isinstance(err, NonFiniteError):
                self.skipped += 1
                return self._check()
            raise err from None
        v = out[:]
        self.last = _make(v[:6])
        return _make(v[6:])

    def update(
        self,
        grads: Any = None,
        *,
        sq_norms: Any = None,
        batch_grad: Any = None,
        reduction: str = "sum",
        batch_size: Optional[int] = None,
        sum_sq_norms: Optional[float] = None,
        sq_norm_of_sum: Optional[float] = None,
    ) -> Estimate:
        """Fold one batch into the estimate; give exactly one of three forms.

        1. ``update(grads)``: the (b, d) per-example gradients (any input
           :func:`gdiv.stats` accepts; zero copy).
        2. ``update(sq_norms=..., batch_grad=..., reduction=...)``: the b
           per-example squared norms ‖g_i‖² (1-D) and the batch gradient
           (flattened), Σ g_i for ``reduction="sum"`` or (1/b) Σ g_i for
           ``"mean"`` (numpy or torch CPU; zero copy).
        3. ``update(batch_size=b, sum_sq_norms=..., sq_norm_of_sum=...)``:
           the two sums, e.g. reduced on a GPU (‖Σ g_i‖² of the sum).

        Returns:
            The smoothed estimate after the update (the per-batch estimate is
            :attr:`last`).

        Raises:
            gdiv.TooFewError: a batch of fewer than 2 examples.
            gdiv.NonFiniteError: NaN/Inf values (unless on_nonfinite="skip").
            ValueError / TypeError: bad or mixed arguments, bad inputs.
        """
        forms = (grads is not None, sq_norms is not None or batch_grad is not None, sum_sq_norms is not None or sq_norm_of_sum is not None)
        if sum(forms) != 1:
            raise ValueError("give exactly one of: grads; sq_norms and batch_grad; batch_size, sum_sq_norms and sq_norm_of_sum")
        n = self._dataset_size
        if forms[0]:
            op = operand(grads)
            return self._update(lib.EstimateGrads, n, op[0], op[1], op[2], op[3], op[4])
        if forms[1]:
            if sq_norms is None or batch_grad is None:
                raise ValueError("give both sq_norms and batch_grad")
            args, keep = _norms_args(sq_norms, batch_grad, reduction)
            r = self._update(lib.EstimateNorms, n, *args)
            del keep
            return r
        if batch_size is None or sum_sq_norms is None or sq_norm_of_sum is None:
            raise ValueError("give batch_size, sum_sq_norms and sq_norm_of_sum together")
        return self._update(
            lib.EstimateSums,
            check_int("batch_size", batch_size),
            n,
            check_float("sum_sq_norms", sum_sq_norms),
            check_float("sq_norm_of_sum", sq_norm_of_sum),
        )

    def update_two_scale(self, b_small: int, sq_norm_small: float, b_big: int, sq_norm_big: float) -> Estimate:
        """Fold one two-scale estimate in (see :func:`estimate_two_scale`).

        Returns:
            The smoothed estimate after the update.
        """
        return self._update(lib.EstimateTwoScale, *_two_scale_args(b_small, sq_norm_small, b_big, sq_norm_big))

    def __repr__(self) -> str:
        s = self.smoothed
        bb = "inf" if math.isinf(s.batch_bound) else f"{s.batch_bound:.6g}"
        return f"Estimator(beta={self.beta}, steps={self.steps}, batch_bound={bb})"
