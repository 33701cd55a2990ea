"""Lower bounds on the batch-size bound and stability step sizes (Go's bounds).

- :func:`glm` — Theorem 1: for generalized linear losses f_i(w) = ℓ_i(x_iᵀw),
  B_S(w) ≥ n·min_i‖x_i‖²/σ²_max(X) for every w.
- :func:`sparse` — Theorem 2: B_S(w) ≥ n/(ρ + 1), ρ the maximum degree of the
  graph whose edges join examples with overlapping gradient supports.
- :func:`stability_step` — the largest step size of eq. (9) (convex) or
  eq. (11) (strongly convex) for a batch size B and a differential bound B̄.

Both lower bounds hold for the differential bound B̄_S(w, w') too (Appendix
E.5), so they can feed :func:`stability_step`.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Optional

from ._arrays import operand
from ._bridge import lib
from ._results import GLMBound, SparseBound
from .errors import translate

__all__ = ["glm", "sparse", "stability_step", "GLMBound", "SparseBound"]

_addressof = ctypes.addressof


def glm(X: Any) -> GLMBound:
    """Theorem 1's lower bound on B_S for a generalized linear model.

    Args:
        X: the (n, d) feature matrix, one example per row (any input
            :func:`gdiv.stats` accepts; float64 is read in place, float32 is
            widened to a float64 copy inside Go).

    Returns:
        GLMBound with batch_bound_lower = n·min_i‖x_i‖²/σ²_max(X) in [0, n]
        (0 when some row is zero: a valid but trivial bound).

    Raises:
        gdiv.EmptyInputError, gdiv.ZeroDimError, gdiv.NonFiniteError,
        gdiv.AllZeroError (X = 0), and the input errors of :func:`gdiv.stats`.
    """
    op = operand(X, "X")
    out = (ctypes.c_double * 5)()
    try:
        lib.BoundGLM(_addressof(out), op[0], op[1], op[2], op[3], op[4])
    except RuntimeError as e:
        raise translate(e) from None
    return GLMBound._make(out[:])  # type: ignore[attr-defined]


def sparse(grads: Any) -> SparseBound:
    """Theorem 2's lower bound on B_S from the supports of the gradients.

    Only the support pattern (nonzero coordinates) matters: pass rows with
    nonzeros wherever ∇f_i can be nonzero (e.g. 1s) for a bound uniform in w.

    Args:
        grads: (n, d) gradients (any input :func:`gdiv.stats` accepts;
            float32 is widened to a float64 copy inside Go).

    Returns:
        SparseBound with max_degree ρ and batch_bound_lower = n/(ρ+1).

    Raises:
        gdiv.AllZeroError: every entry is zero. And the errors of :func:`glm`.
    """
    op = operand(grads)
    out = (ctypes.c_double * 4)()
    try:
        lib.BoundSparse(_addressof(out), op[0], op[1], op[2], op[3], op[4])
    except RuntimeError as e:
        raise translate(e) from None
    return SparseBound._make(out[:])  # type: ignore[attr-defined]


def stability_step(
    beta: float,
    n: int,
    batch: int,
    diff_batch_bound: float = math.inf,
    *,
    strong_convexity: Optional[float] = None,
) -> float:
    """The largest step size γ allowed by the stability analysis.

    Convex, L-Lipschitz, β-smooth losses (eq. 9, Theorem 12):
    γ ≤ 2 / (β(1 + 1{B>1}/(n−1) + (B−1)/B̄)). With ``strong_convexity=λ``
    (eq. 11, Theorem 13) β becomes β+λ and γ ≤ 1/(2Bλ) also holds.

    Args:
        beta: smoothness β > 0.
        n: number of training examples (≥ 2 when batch > 1).
        batch: batch size B ≥ 1.
        diff_batch_bound: a lower bound B̄ on the differential batch-size
            bound over all w ≠ w' (from :func:`glm` or :func:`sparse`), or +Inf.
        strong_convexity: λ > 0 for the strongly convex case, else None.

    Returns:
        γ.

    Raises:
        gdiv.ParamError: a parameter out of range.
    """
    lam = 0.0 if strong_convexity is None else float(strong_convexity)
    try:
        return lib.StabilityStep(float(beta), lam, int(n), int(batch), float(diff_batch_bound), strong_convexity is not None)
    except RuntimeError as e:
        raise translate(e) from None
