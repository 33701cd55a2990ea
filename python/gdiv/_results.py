"""Immutable result types (frozen dataclasses).

Field names are the project's vocabulary (the Go fields in snake_case, the
CLI's JSON keys). Each type is filled from the float64 result buffer that the
Go bridge writes, in the order of its fields (see package pybridge).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence, Type, TypeVar

T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


def _from_buffer(cls: Type[T], values: Sequence[float]) -> T:
    """Build cls from values in field order (see _prepare)."""
    return cls._make(values)  # type: ignore[attr-defined]


def _prepare(cls: Type[T]) -> Type[T]:
    """Give the frozen dataclass cls a fast constructor ``cls._make(values)``
    that converts each value to its field's type and bypasses the generated
    __init__ (several times faster; the per-call overhead of gdiv.stats
    matters). The code is generated once per class from its fields."""
    conv = {"int": "int", "float": "float", "bool": "bool"}
    lines = ["def _make(v):", "    o = _new(cls)"]
    for i, f in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        t = f.type if isinstance(f.type, str) else f.type.__name__
        lines.append(f"    _set(o, {f.name!r}, {conv[t]}(v[{i}]))")
    lines.append("    return o")
    ns: Dict[str, Any] = {"_new": _new, "_set": _set, "cls": cls}
    exec("\n".join(lines), ns)  # noqa: S102 - code built from our own field names
    cls._make = staticmethod(ns["_make"])  # type: ignore[attr-defined]
    return cls


class _Result:
    __slots__ = ()

    def to_dict(self) -> Dict[str, Any]:
        """Return the fields as a dict (JSON-friendly: +Inf stays float('inf'))."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@_prepare
@dataclasses.dataclass(frozen=True, slots=True)
class Stats(_Result):
    """Gradient-diversity statistics of n per-example gradients of dimension d.

    Attributes:
        n: number of examples.
        dim: dimension d.
        sum_sq_norms: Σ‖g_i‖².
        sq_norm_of_sum: ‖Σ g_i‖².
        m2: M² = Σ‖g_i‖²/n.
        g: G = ‖(1/n) Σ g_i‖².
        diversity: Δ = Σ‖g_i‖² / ‖Σ g_i‖², in [1/n, +Inf] (+Inf when the
            gradients sum to exactly zero).
        batch_bound: B_S = n·Δ = M²/G, in [1, +Inf].
        noise_scale: trΣ/G = B_S − 1 (McCandlish et al.'s simple noise scale).
    """

    n: int
    dim: int
    sum_sq_norms: float
    sq_norm_of_sum: float
    m2: float
    g: float
    diversity: float
    batch_bound: float
    noise_scale: float


@_prepare
@dataclasses.dataclass(frozen=True, slots=True)
class Estimate(_Result):
    """Estimates of the population M², G and B_S = M²/G.

    Attributes:
        batch: examples behind a per-batch estimate (the large batch for a
            two-scale estimate); 0 for a smoothed estimate.
        m2: estimate of M² = mean ‖∇f_i‖² (unbiased for one batch).
        g: estimate of G = ‖∇F‖² (unbiased for one batch); can be ≤ 0.
        batch_bound: m2/g, the estimate of B_S; +Inf when g ≤ 0.
        noise_scale: batch_bound − 1.
        no_signal: g ≤ 0 — the batch shows no evidence of a common gradient
            direction (noise dominates); a batch-size policy goes to its maximum.
    """

    batch: int
    m2: float
    g: float
    batch_bound: float
    noise_scale: float
    no_signal: bool


@_prepare
@dataclasses.dataclass(frozen=True, slots=True)
class Expectation(_Result):
    """Closed-form expected diversity of a mechanism (eq. 6, 22–24).

    Attributes:
        n, dim: the shape of the gradients.
        sum_sq_norms: Σ_i E‖g_i^DIM‖².
        sq_norm_of_sum: E‖Σ_i g_i^DIM‖².
        diversity: Δ^DIM = sum_sq_norms / sq_norm_of_sum (+Inf if that is 0).
        batch_bound: B^DIM = n·Δ^DIM.
        base_diversity, base_batch_bound: Δ_S and B_S of the gradients themselves.
    """

    n: int
    dim: int
    sum_sq_norms: float
    sq_norm_of_sum: float
    diversity: float
    batch_bound: float
    base_diversity: float
    base_batch_bound: float


@_prepare
@dataclasses.dataclass(frozen=True, slots=True)
class MonteCarloResult(_Result):
    """Monte Carlo estimate of a mechanism's expected diversity (eq. 6).

    Attributes:
        samples: number of independent draws.
        sum_sq_norms, sq_norm_of_sum: sample means of Σ‖g_i^DIM‖² and ‖Σ g_i^DIM‖².
        diversity: their ratio, the estimate of Δ^DIM.
        std_err: its delta-method standard error.
        batch_bound: n·diversity (standard error n·std_err).
    """

    samples: int
    sum_sq_norms: float
    sq_norm_of_sum: float
    diversity: float
    std_err: float
    batch_bound: float


@_prepare
@dataclasses.dataclass(frozen=True, slots=True)
class GLMBound(_Result):
    """Theorem 1's lower bound on B_S for generalized linear models.

    Attributes:
        n, dim: the shape of X.
        min_sq_norm: min_i ‖x_i‖².
        sigma_max_sq: σ²_max(X), the largest eigenvalue of XᵀX.
        batch_bound_lower: n·min_i‖x_i‖²/σ²_max(X), in [0, n].
    """

    n: int
    dim: int
    min_sq_norm: float
    sigma_max_sq: float
    batch_bound_lower: float


@_prepare
@dataclasses.dataclass(frozen=True, slots=True)
class SparseBound(_Result):
    """Theorem 2's lower bound on B_S for gradients with sparse conflicts.

    Attributes:
        n, dim: the shape of the gradients.
        max_degree: ρ, the maximum degree of the support-overlap graph.
        batch_bound_lower: n/(ρ+1).
    """

    n: int
    dim: int
    max_degree: int
    batch_bound_lower: float
