"""Diversity-inducing mechanisms (DIMs, Section 4.4 of the paper).

Each mechanism replaces every per-example gradient g_i by an independent
random surrogate (fresh randomness per example and per call, from a seeded
source), computed in Go:

- :class:`Dropout` — each coordinate kept with probability 1 − p; unscaled by
  default (the paper's D_i, E[g^drop] = (1 − p)·g), ``rescale=True`` divides
  kept coordinates by 1 − p (E[g^drop] = g). Eq. 22.
- :class:`Langevin` — g_i + N(0, std²·I). ``std`` is a standard deviation:
  the paper writes N(0, σI) but its eq. 23 uses dσ². Summed over a batch the
  noise is one Gaussian of variance B·std², so a trainer that needs only the
  sum can add it once to the sum.
- :class:`Quantize` — QSGD stochastic quantization with s = ``levels``
  (s = 1 is the paper's Q(v), eq. 24); unbiased.

Every mechanism offers ``apply_`` (in place, in the caller's numpy array or
torch CPU tensor), ``apply`` (a new array), ``expected`` (the closed-form
expected diversity, eq. 6) and ``monte_carlo`` (an independent simulation
with a standard error). Mechanisms raise the diversity when Δ ≤ 1
(Theorem 9); above 1 they pull it toward 1.

Seeds: ``seed`` is an integer in [0, 2**64) (numpy integers too; a bool or a
float such as 1.5 is refused, never truncated); the Go source is PCG(seed, 0), the
same as the CLI's ``gdiv dim --seed``. The same seed gives the same draws for
float32 and float64 input (up to float32 rounding). ``seed=None`` draws a fresh
seed from the operating system.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, ClassVar, Optional

from ._arrays import bump_torch_version, copy_of, is_torch, operand
from ._bridge import lib
from ._results import Expectation, MonteCarloResult
from ._validate import check_float, check_int, check_seed
from .errors import translate

__all__ = ["Mechanism", "Dropout", "Langevin", "Quantize"]

_addressof = ctypes.addressof


class Mechanism:
    """Base class of the mechanisms (use Dropout, Langevin or Quantize)."""

    _code: ClassVar[int]

    def _params(self) -> tuple:
        raise NotImplementedError

    def _validate(self) -> None:
        try:
            lib.MechanismValidate(self._code, *self._params())
        except RuntimeError as e:
            raise translate(e) from None

    def apply_(self, grads: Any, *, seed: Optional[int] = None) -> Any:
        """Apply the mechanism in place, row by row, in the caller's memory.

        Args:
            grads: a writable, C-contiguous (n, d) float32/float64 numpy array
                or torch CPU tensor (not one that requires grad; pass
                ``.detach()`` or a ``.grad``). Go writes into its memory
                directly: no copy is made.
            seed: seed of the random source (see the module doc); None for a
                fresh one.

        Returns:
            grads itself, modified.

        Raises:
            TypeError: an Arrow array (immutable) or another unsupported type.
            ValueError: read-only, not contiguous, not 2-D, ...
        """
        op = operand(grads, "grads", writable=True)
        try:
            lib.MechanismApply(self._code, *self._params(), op[0], op[1], op[3], op[4], check_seed(seed))
        except RuntimeError as e:
            raise translate(e) from None
        if is_torch(grads):
            bump_torch_version(grads)
        return grads

    def apply(self, grads: Any, *, seed: Optional[int] = None) -> Any:
        """Return a new array: the mechanism applied to a copy of grads.

        Args:
            grads: any input :func:`gdiv.stats` accepts. A numpy array gives a
                numpy array, a torch tensor a (detached) torch tensor of the
                same dtype, an Arrow array or other array-like a numpy array.
            seed: as for :meth:`apply_`.

        Returns:
            The new array; grads is not modified.
        """
        return self.apply_(copy_of(grads), seed=seed)

    def expected(self, grads: Any) -> Expectation:
        """Closed-form expected diversity of the mechanism on grads (eq. 6).

        Args:
            grads: (n, d) per-example gradients (any input :func:`gdiv.stats`
                accepts; zero copy for numpy, torch and Arrow).

        Returns:
            Expectation: diversity and batch_bound of the mechanism next to
            base_diversity and base_batch_bound of grads itself.

        Raises:
            The errors of :func:`gdiv.stats`.
        """
        op = operand(grads)
        out = (ctypes.c_double * 8)()
        try:
            lib.MechanismExpected(_addressof(out), self._code, *self._params(), op[0], op[1], op[2], op[3], op[4])
        except RuntimeError as e:
            raise translate(e) from None
        return Expectation._make(out[:])  # type: ignore[attr-defined]

    def monte_carlo(self, grads: Any, *, samples: int = 1000, seed: Optional[int] = None) -> MonteCarloResult:
        """Monte Carlo estimate of the expected diversity, computed in Go.

        Applies the mechanism to ``samples`` fresh copies of grads (grads is
        not modified) and returns the ratio of the mean Σ‖g_i^DIM‖² to the mean
        ‖Σ g_i^DIM‖² with its standard error; compare with :meth:`expected`.

        Args:
            grads: (n, d) per-example gradients (as for :meth:`expected`).
            samples: number of draws, at least 2.
            seed: as for :meth:`apply_`.

        Returns:
            MonteCarloResult.
        """
        op = operand(grads)
        out = (ctypes.c_double * 6)()
        try:
            lib.MechanismMonteCarlo(
                _addressof(out), self._code, *self._params(), op[0], op[1], op[2], op[3], op[4], check_int("samples", samples), check_seed(seed)
            )
        except RuntimeError as e:
            raise translate(e) from None
        return MonteCarloResult._make(out[:])  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Dropout(Mechanism):
    """Gradient dropout: each coordinate of each row kept with probability 1 − p.

    Args:
        p: dropout probability, 0 ≤ p < 1.
        rescale: divide kept coordinates by 1 − p (unbiased, "inverted
            dropout"); the default leaves them as they are (the paper's D_i).

    Raises:
        gdiv.ParamError: p outside [0, 1).

    Example:
        >>> import numpy as np, gdiv
        >>> g = np.ones((4, 3))
        >>> gdiv.Dropout(0.5).expected(g).diversity > gdiv.stats(g).diversity
        True
    """

    p: float
    rescale: bool = False
    _code: ClassVar[int] = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check_float("p", self.p))
        object.__setattr__(self, "rescale", bool(self.rescale))
        self._validate()

    def _params(self) -> tuple:
        return (self.p, 0, self.rescale)


@dataclasses.dataclass(frozen=True)
class Langevin(Mechanism):
    """Langevin noise: g_i + N(0, std²·I), independently per example.

    Args:
        std: the noise standard deviation σ ≥ 0 (a standard deviation, not a
            variance; see the module doc).

    Raises:
        gdiv.ParamError: std negative or not finite.
    """

    std: float
    _code: ClassVar[int] = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "std", check_float("std", self.std))
        self._validate()

    def _params(self) -> tuple:
        return (self.std, 0, False)

    def sum_noise_std(self, batch_size: int, *, reduction: str = "sum") -> float:
        """Standard deviation of the one Gaussian that has the distribution of
        a batch's summed noise (Go's ``Langevin.SumNoiseStd``): std·√b for the
        summed gradient Σ(g_i + ξ_i), std/√b for the mean ("mean").

        A loop that has only the batch gradient (no per-example gradients)
        adds one draw of this standard deviation per coordinate to it instead
        of b per-example draws; :meth:`expected_sum_sq_norms` gives the matching
        Σ‖g_i + ξ_i‖².

        Raises:
            gdiv.ParamError: batch_size < 1. ValueError: a bad reduction.
        """
        mean = _mean(reduction)
        try:
            return lib.LangevinSumNoiseStd(self.std, check_int("batch_size", batch_size), mean)
        except RuntimeError as e:
            raise translate(e) from None

    def expected_sum_sq_norms(self, sum_sq_norms: float, batch_size: int, dim: int) -> float:
        """E Σ_i ‖g_i + ξ_i‖² = sum_sq_norms + b·d·std², given the clean
        Σ‖g_i‖² of b gradients of dimension d (Go's
        ``Langevin.ExpectedSumSqNorms``): the batch's sum of squared norms
        with the noise replaced by its expectation. With the noise added once
        to the batch gradient (:meth:`sum_noise_std`), the estimator's M̂² is
        shifted by exactly d·std² and Ĝ stays unbiased.

        Raises:
            gdiv.ParamError: batch_size < 1, dim < 1, a negative sum.
            gdiv.NonFiniteError: a NaN or infinite sum.
        """
        try:
            return lib.LangevinExpectedSumSqNorms(
                self.std, check_float("sum_sq_norms", sum_sq_norms), check_int("batch_size", batch_size), check_int("dim", dim)
            )
        except RuntimeError as e:
            raise translate(e) from None


def _mean(reduction: str) -> bool:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction = {reduction!r}; want 'sum' or 'mean'")
    return reduction == "mean"


@dataclasses.dataclass(frozen=True)
class Quantize(Mechanism):
    """Stochastic quantization (QSGD) with s = levels levels; unbiased.

    Args:
        levels: number of levels s ≥ 1; 1 is the paper's Q(v).

    Raises:
        gdiv.ParamError: levels < 1.
    """

    levels: int = 1
    _code: ClassVar[int] = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_int("levels", self.levels, lo=1))
        self._validate()

    def _params(self) -> tuple:
        return (0.0, self.levels, False)
