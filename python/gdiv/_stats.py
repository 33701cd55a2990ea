"""gdiv.stats, gdiv.stats_differential and gdiv.stats_from_sums."""

from __future__ import annotations

import ctypes
from typing import Any

from ._arrays import operand
from ._bridge import lib
from ._results import Stats
from .errors import translate

_StatsBuf = ctypes.c_double * 9
_addressof = ctypes.addressof
_make_stats = Stats._make  # type: ignore[attr-defined]


def stats(grads: Any) -> Stats:
    """Gradient-diversity statistics of per-example gradients, computed in Go.

    Args:
        grads: an (n, d) array, one per-example gradient per row: a numpy
            array or torch CPU tensor of float32/float64 (zero copy: Go reads
            the array's own memory), an Arrow array (FixedSizeList<float> or
            ``arrow.fixed_shape_tensor``, or any object with
            ``__arrow_c_array__``; zero copy through the Arrow C Data
            Interface), or another array-like (copied once). Sums are
            accumulated in float64 for either dtype.

    Returns:
        Stats: n, dim, sum_sq_norms, sq_norm_of_sum, m2, g, diversity,
        batch_bound and noise_scale. Gradients that sum to exactly zero give
        diversity = batch_bound = noise_scale = +Inf.

    Raises:
        TypeError: unsupported input type or dtype.
        ValueError: not 2-D, not C-contiguous, not aligned, not on the CPU,
            Arrow nulls (:class:`gdiv.NullError`).
        gdiv.EmptyInputError: n = 0.
        gdiv.ZeroDimError: d = 0.
        gdiv.NonFiniteError: a NaN or Inf (the message names row and column).
        gdiv.SumOverflowError: a sum of squares overflowed float64.
        gdiv.AllZeroError: every gradient is zero (diversity 0/0).

    Example:
        >>> import numpy as np, gdiv
        >>> gdiv.stats(np.array([[1.0, 0.0], [0.0, 1.0]])).batch_bound
        2.0
    """
    op = operand(grads)
    out = _StatsBuf()
    try:
        lib.Stats(_addressof(out), op[0], op[1], op[2], op[3], op[4])
    except RuntimeError as e:
        raise translate(e) from None
    return _make_stats(out[:])


def stats_differential(grads_w: Any, grads_w2: Any) -> Stats:
    """Differential diversity statistics (Definition 6) of two gradient sets.

    The statistics of the rows g_i(w) − g_i(w'), formed in Go on the fly
    (neither input is modified or copied): ``diversity`` is Δ̄_S(w, w') and
    ``batch_bound`` is B̄_S(w, w').

    Args:
        grads_w: (n, d) per-example gradients at w (any input :func:`stats` accepts).
        grads_w2: (n, d) per-example gradients at w', same shape and dtype.

    Returns:
        Stats of the differences.

    Raises:
        TypeError: unsupported input, or the two dtypes differ.
        gdiv.ShapeError: the shapes differ.
        gdiv.AllZeroError: the two inputs are identical.
        ValueError: the other errors of :func:`stats`.
    """
    a = operand(grads_w, "grads_w")
    b = operand(grads_w2, "grads_w2")
    out = _StatsBuf()
    try:
        lib.StatsDifferential(_addressof(out), a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])
    except RuntimeError as e:
        raise translate(e) from None
    return _make_stats(out[:])


def stats_from_sums(n: int, dim: int, sum_sq_norms: float, sq_norm_of_sum: float) -> Stats:
    """Complete the statistics from the two sufficient sums.

    Use it when the sums were computed elsewhere, e.g. on a GPU or
    all-reduced over data-parallel ranks.

    Args:
        n: number of examples.
        dim: dimension d (reported only).
        sum_sq_norms: Σ‖g_i‖².
        sq_norm_of_sum: ‖Σ g_i‖².

    Returns:
        Stats.

    Raises:
        gdiv.EmptyInputError, gdiv.AllZeroError, gdiv.NonFiniteError,
        gdiv.SumOverflowError, gdiv.ParamError: as the Go StatsFromSums
        (a negative sum, or ‖Σg_i‖² > n·Σ‖g_i‖²).
    """
    out = _StatsBuf()
    try:
        lib.StatsFromSums(_addressof(out), int(n), int(dim), float(sum_sq_norms), float(sq_norm_of_sum))
    except RuntimeError as e:
        raise translate(e) from None
    return _make_stats(out[:])
