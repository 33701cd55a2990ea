"""The diversity-driven batch-size policy (Go's ``gdiv.BatchSizePolicy``).

After each step, with B̂_S the smoothed estimate of the batch-size bound
(:class:`gdiv.Estimator`), the policy's target is

    B_next = δ·B̂_S + 1,

the largest batch for which Lemma 1 and Theorem 3 keep mini-batch SGD within
a factor (1 + δ/2) of serial SGD per gradient computed. The target is then
limited and rounded so that a (distributed) training loop can act on it:
clamped to a growth factor per decision (``max_growth``, widened to one
``multiple_of``), to ``[min_batch, max_batch]``, rounded DOWN to a multiple
of ``multiple_of`` (up only where down would undercut the lower limit),
damped by ``hysteresis`` and held during ``warmup`` decisions. An estimate
with no signal (Ĝ ≤ 0, ``no_signal``) moves toward ``max_batch``. The result
is always a legal batch size.

Every decision is Go's ``BatchSizePolicy.Next``; this module only moves
numbers. A policy is a value: ``next`` is a pure function of the policy and
its arguments, so a resumed run that replays the same estimates makes the
same decisions, and the state of a policy is its settings.

Learning rate: a training loop with a MEAN-reduced loss (PyTorch's default)
rescales its learning rate when the batch changes, with ``lr_rule``:
``"linear"`` (η·B_new/B_old: keeps the paper's per-example sum-step γ = η/B,
the setting of Lemma 1 and Theorem 3; the default here), ``"sqrt"``
(η·sqrt(B_new/B_old)), ``"adascale"`` (η·r, AdaScale's gain ratio
r = (σ² + G)/(σ²/S + G), S = B/B₀, from the current estimate: between 1 and
the linear rule's S; only a :class:`gdiv.Controller` applies it) or
``"none"``. With a SUM-reduced loss the step is already the paper's: use
``"none"``. See :meth:`BatchSizePolicy.scale_lr`.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Dict, Mapping, Optional, Tuple

from ._bridge import lib
from ._validate import check_float, check_int
from .errors import ParamError, translate

__all__ = ["BatchSizePolicy", "LR_RULES"]

# Names of Go's LRRule values, in code order (gdiv.LRNone = 0, LRLinear = 1,
# LRSqrt = 2, LRAdaScale = 3; pybridge's TestCodesAreCoreEnums checks the codes).
LR_RULES: Tuple[str, ...] = ("none", "linear", "sqrt", "adascale")

_FIELDS = ("delta", "min_batch", "max_batch", "multiple_of", "hysteresis", "max_growth", "warmup", "lr_rule")
_Buf = ctypes.c_double * 8
_addressof = ctypes.addressof


def _int(name: str, v: Any) -> int:
    return check_int(name, v, f64=True)  # the policy layout is float64


_float = check_float


def _encode(
    delta: Any, min_batch: Any, max_batch: Any, multiple_of: Any, hysteresis: Any, max_growth: Any, warmup: Any, lr_rule: Any
) -> Tuple[float, ...]:
    """Check types, reject the zeros that Go would replace by defaults, and
    return the 8 values of pybridge's policy layout (validated by Go later)."""
    v = [
        _float("delta", delta),
        _int("min_batch", min_batch),
        0 if max_batch is None else _int("max_batch", max_batch),
        _int("multiple_of", multiple_of),
        _float("hysteresis", hysteresis),
        _float("max_growth", max_growth),
        _int("warmup", warmup),
    ]
    # In Go a zero field means "the default"; in Python the defaults are
    # explicit keyword defaults, so a zero is a mistake, not a request.
    for i, name, want in (
        (0, "delta", "δ > 0 (default 1.0)"),
        (1, "min_batch", "an integer ≥ 1 (default 1)"),
        (2, "max_batch", "an integer ≥ 1, or None for no bound"),
        (3, "multiple_of", "an integer ≥ 1 (default 1)"),
        (5, "max_growth", "≥ 1, or math.inf for no limit (default 2.0)"),
    ):
        if v[i] == 0 and not (i == 2 and max_batch is None):
            raise ParamError(f"{name} = {v[i]!r}: want {want}")
    if not isinstance(lr_rule, str) or lr_rule.strip().lower() not in LR_RULES:
        raise ParamError(f"lr_rule = {lr_rule!r}: want one of {', '.join(map(repr, LR_RULES))}")
    v.append(LR_RULES.index(lr_rule.strip().lower()))
    return tuple(float(x) for x in v)


def _validated(values: Tuple[float, ...]) -> Any:
    buf = _Buf(*values)
    try:
        lib.PolicyValidate(_addressof(buf))
    except RuntimeError as e:
        raise translate(e) from None  # "[param:min_batch] ...": Go names the field
    return buf


def _estimate_fields(estimate: Any) -> Tuple[float, float, float, bool]:
    """(m2, g, batch_bound, no_signal) of an Estimate, a mapping with those
    keys, or a number (the batch bound; +Inf means no signal)."""
    if isinstance(estimate, bool):
        raise TypeError("estimate must be a gdiv.Estimate, a mapping or a number, not a bool")
    if isinstance(estimate, (int, float)):
        bb = float(estimate)
        return 0.0, 0.0, bb, math.isinf(bb) and bb > 0
    if isinstance(estimate, Mapping):
        get = estimate.get
        if "batch_bound" not in estimate:
            raise ValueError("estimate: the mapping has no 'batch_bound' key")
        return (
            check_float("m2", get("m2", 0.0)),
            check_float("g", get("g", 0.0)),
            check_float("batch_bound", estimate["batch_bound"]),
            bool(get("no_signal", False)),
        )
    if hasattr(estimate, "batch_bound"):
        return (
            check_float("m2", getattr(estimate, "m2", 0.0)),
            check_float("g", getattr(estimate, "g", 0.0)),
            check_float("batch_bound", estimate.batch_bound),
            bool(getattr(estimate, "no_signal", False)),
        )
    raise TypeError(f"estimate is a {type(estimate).__qualname__}; want a gdiv.Estimate, a mapping with 'batch_bound' (and 'no_signal'), or a number")


class BatchSizePolicy:
    """Chooses the next batch size from a smoothed batch-bound estimate (Go's
    ``gdiv.BatchSizePolicy``): target δ·B̂_S + 1, limited and rounded.

    All arguments are keyword-only and validated by Go's ``Validate``.

    Args:
        delta: δ > 0 in B_next = δ·B̂_S + 1 (larger: larger batches, at a
            (1 + δ/2) cost in Theorem 3's guarantee).
        min_batch: the smallest batch, ≥ 1.
        max_batch: the largest batch, or None for no bound (the reference
            trainer then caps it at the number of examples).
        multiple_of: the batch granularity, typically the number of
            data-parallel workers; batches are rounded DOWN to a multiple
            (the target is an upper limit). There must be a multiple in
            [min_batch, max_batch].
        hysteresis: h ≥ 0; the batch stays when the relative change
            |B_next − B|/B is below h (0.1 suits distributed jobs).
        max_growth: g ≥ 1; one decision moves the batch at most to
            [B/g, B·g], widened to [B − m, B + m] (m = multiple_of);
            ``math.inf`` means no limit.
        warmup: the number of initial decisions (step < warmup) that keep
            the batch.
        lr_rule: "linear" (default), "sqrt", "adascale" or "none": how a
            loop with a mean-reduced loss rescales its learning rate when
            the batch changes (:meth:`scale_lr`; the policy itself does not
            use it; "adascale" follows the estimate, through a Controller).

    Raises:
        gdiv.ParamError: a setting out of range; the message starts with
            the argument's name (e.g. ``"min_batch: ..."``).
        TypeError: a setting of the wrong type.

    Unlike Go's zero-value defaults, a zero ``delta``, ``min_batch``,
    ``max_batch``, ``multiple_of`` or ``max_growth`` is an error here (the
    defaults are the keyword defaults; ``max_batch=None`` is "no bound").

    Example:
        >>> import gdiv
        >>> p = gdiv.BatchSizePolicy(max_batch=256, multiple_of=8)
        >>> p.next(32, 45.0, step=5)   # B̂_S = 45: target 46, down to a multiple of 8
        40
        >>> p.next(32, 500.0, step=5)  # target 501, but at most doubling per decision
        64
        >>> est = gdiv.estimate_from_sums(32, 100.0, 400.0)  # B̂_S ≈ 10.3
        >>> p.next(32, est, step=5)    # target ≈ 11.3, but at most halving per decision
        16
        >>> p.scale_lr(0.1, 32, 64)    # the linear rule, for a mean-reduced loss
        0.2
    """

    __slots__ = ("_buf", "_values")

    def __init__(
        self,
        *,
        delta: float = 1.0,
        min_batch: int = 1,
        max_batch: Optional[int] = None,
        multiple_of: int = 1,
        hysteresis: float = 0.0,
        max_growth: float = 2.0,
        warmup: int = 0,
        lr_rule: str = "linear",
    ) -> None:
        self._set(_encode(delta, min_batch, max_batch, multiple_of, hysteresis, max_growth, warmup, lr_rule))

    def _set(self, values: Tuple[float, ...]) -> None:
        # A new buffer per setting (never rewritten in place), so a call that
        # holds the old one is unaffected by a concurrent load_state_dict.
        self._buf = _validated(values)
        self._values = values

    @classmethod
    def _from_go(cls, values: Any) -> "BatchSizePolicy":
        """A policy from the 8 values of pybridge's layout (as Go wrote them)."""
        p = cls.__new__(cls)
        p._set(tuple(float(x) for x in values))
        return p

    # -- settings (read-only; use replace or load_state_dict) -----------------

    @property
    def delta(self) -> float:
        return self._values[0]

    @property
    def min_batch(self) -> int:
        return int(self._values[1])

    @property
    def max_batch(self) -> Optional[int]:
        """The largest batch, or None for no bound."""
        return int(self._values[2]) or None

    @property
    def multiple_of(self) -> int:
        return int(self._values[3])

    @property
    def hysteresis(self) -> float:
        return self._values[4]

    @property
    def max_growth(self) -> float:
        return self._values[5]

    @property
    def warmup(self) -> int:
        return int(self._values[6])

    @property
    def lr_rule(self) -> str:
        return LR_RULES[int(self._values[7])]

    # -- decisions -------------------------------------------------------------

    def next(self, current: int, estimate: Any, step: int) -> int:
        """The batch size after a step (Go's ``BatchSizePolicy.Next``).

        Args:
            current: the current batch size, ≥ 1.
            estimate: the smoothed estimate after the step: a
                :class:`gdiv.Estimate` (e.g. ``Estimator.update(...)``'s
                result or ``Estimator.smoothed``), a mapping with
                ``batch_bound`` and ``no_signal``, or the batch bound as a
                number (+Inf = no signal). Only ``batch_bound`` and
                ``no_signal`` matter.
            step: the 0-based index of the decision (the number of earlier
                decisions; after the k-th training step pass k − 1), used
                only for the warm-up.

        Returns:
            The next batch size: a multiple of ``multiple_of`` in
            [min_batch, max_batch].

        Raises:
            gdiv.ParamError: current < 1, step < 0, a NaN batch bound.
            TypeError: non-integer current or step, an unusable estimate.
        """
        m2, g, bb, no_signal = _estimate_fields(estimate)
        buf = self._buf
        try:
            return lib.PolicyNext(_addressof(buf), _int("current", current), m2, g, bb, no_signal, _int("step", step))
        except RuntimeError as e:
            raise translate(e) from None

    def scale_lr(self, lr: float, old_batch: int, new_batch: int) -> float:
        """The learning rate after a batch change, under ``lr_rule`` (Go's
        ``ScaleLR``): none → lr, linear → lr·new/old, sqrt → lr·sqrt(new/old).

        The rules are path-independent: rescale from the initial batch B₀ to
        each B_k directly (``scale_lr(lr0, b0, b_k)``), not step by step.

        Raises:
            gdiv.ParamError: lr not finite and > 0, a batch < 1.
        """
        try:
            return lib.PolicyScaleLR(int(self._values[7]), _float("lr", lr), _int("old_batch", old_batch), _int("new_batch", new_batch))
        except RuntimeError as e:
            raise translate(e) from None

    # -- value semantics -------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The settings as plain data (a policy has no other state);
        ``BatchSizePolicy(**state)`` rebuilds it."""
        return {f: getattr(self, f) for f in _FIELDS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the settings by those of :meth:`state_dict` (validated
        first; on error the policy is unchanged).

        Raises:
            KeyError: a missing setting. ValueError: an unknown key.
            gdiv.ParamError / TypeError: as for the constructor.
        """
        unknown = set(state) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown BatchSizePolicy settings {sorted(unknown)}; known: {', '.join(_FIELDS)}")
        self._set(_encode(*(state[f] for f in _FIELDS)))

    def replace(self, **changes: Any) -> "BatchSizePolicy":
        """A new policy with some settings changed (like dataclasses.replace)."""
        s = self.state_dict()
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown BatchSizePolicy settings {sorted(unknown)}")
        s.update(changes)
        return BatchSizePolicy(**s)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchSizePolicy):
            return NotImplemented
        return self._values == other._values

    __hash__ = None  # type: ignore[assignment]  # mutable through load_state_dict

    def __repr__(self) -> str:
        s = self.state_dict()
        return "BatchSizePolicy(" + ", ".join(f"{k}={v!r}" for k, v in s.items()) + ")"

    def __getstate__(self) -> Dict[str, Any]:
        return self.state_dict()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._set(_encode(*(state[f] for f in _FIELDS)))
