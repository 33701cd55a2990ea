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
from typing import Any, Dict, Optional, Tuple

from ._arrays import operand, vector
from ._bridge import lib
from ._results import Estimate
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


def _dataset_size(n: Optional[int]) -> int:
    if n is None:
        return 0
    if int(n) != n or int(n) < 1:
        raise ParamError(f"gdiv: invalid parameter: dataset_size = {n!r}, want a positive integer or None")
    return int(n)


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
    _call(lib.EstimateSums, 0, out, int(batch_size), _dataset_size(dataset_size), float(sum_sq_norms), float(sq_norm_of_sum))
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
    _call(lib.EstimateTwoScale, 0, out, int(b_small), float(sq_norm_small), int(b_big), float(sq_norm_big))
    return _make(out[:])


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
            int(batch_size),
            float(sum_sq_norms),
            float(sq_norm_batch_grad),
            _reduction(reduction),
            float(norms_scale),
            float(grad_scale),
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
        self._state = (ctypes.c_double * 5)(float(beta), 0.0, 0.0, 0.0, 0.0)
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

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict` (validated by Go).

        Raises:
            gdiv.ParamError: an inconsistent state (negative steps, beta outside
                [0, 1), weight outside (0, 1] after a step).
            gdiv.NonFiniteError: non-finite averages.
            KeyError: a missing key.
        """
        steps = state["steps"]
        if int(steps) != steps:
            raise ParamError(f"gdiv: invalid parameter: estimator state steps = {steps!r} is not an integer")
        new = (ctypes.c_double * 5)(float(state["beta"]), float(steps), float(state["ema_m2"]), float(state["ema_g"]), float(state["weight"]))
        old = self._state
        self._state = new
        try:
            self._check()
        except Exception:
            self._state = old
            raise
        self._dataset_size = _dataset_size(state.get("dataset_size"))
        self.skipped = int(state.get("skipped", 0))

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
        return self._update(lib.EstimateSums, int(batch_size), n, float(sum_sq_norms), float(sq_norm_of_sum))

    def update_two_scale(self, b_small: int, sq_norm_small: float, b_big: int, sq_norm_big: float) -> Estimate:
        """Fold one two-scale estimate in (see :func:`estimate_two_scale`).

        Returns:
            The smoothed estimate after the update.
        """
        return self._update(lib.EstimateTwoScale, int(b_small), float(sq_norm_small), int(b_big), float(sq_norm_big))

    def __repr__(self) -> str:
        s = self.smoothed
        bb = "inf" if math.isinf(s.batch_bound) else f"{s.batch_bound:.6g}"
        return f"Estimator(beta={self.beta}, steps={self.steps}, batch_bound={bb})"
