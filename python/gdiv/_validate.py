"""The Python API's one set of scalar validators.

Every public entry point that takes an integer, a real number or a seed
checks it here before anything crosses to Go, so the rules are the same
everywhere:

- an **integer** is anything with ``__index__`` (``int``, ``numpy.int64``,
  ...), never a bool and never a float: ``2.0`` and ``2.5`` are refused, not
  truncated;
- a **real number** is an ``int``, a ``float`` or anything with
  ``__float__`` (``numpy.float32``, ...), never a bool, a string or None;
- a **seed** is an integer in [0, 2**64) (numpy unsigned integers included)
  or None (a fresh random seed);
- where the value reaches Go as a float64 (settings and state buffers), an
  integer above 2**53 in magnitude is refused: a float64 would round it
  silently (2**53 + 1 becomes 2**53).

A value of the wrong type raises :class:`gdiv.ParamTypeError` (both a
:class:`gdiv.ParamError` and a :class:`TypeError`); a value of the right
type out of range raises :class:`gdiv.ParamError`. Both name the argument in
``err.field``. The ranges that Go checks (``batch = 0``, ``beta = 1``) are
left to Go, which names the field too.
"""

from __future__ import annotations

import operator
import secrets
from typing import Any, Optional

from .errors import ParamError, ParamTypeError

__all__ = ["check_int", "check_float", "check_seed", "F64_EXACT"]

F64_EXACT = 2**53
"""Integers up to this magnitude survive a float64 exactly."""


def _err(cls: type, field: str, msg: str) -> Exception:
    e = cls(msg)
    e.field = field
    return e


def check_int(name: str, v: Any, *, lo: Optional[int] = None, f64: bool = False, field: Optional[str] = None) -> int:
    """Return v as an int, or raise.

    Args:
        name: the argument as the message shows it.
        v: the value.
        lo: the smallest valid value (None: any).
        f64: the value crosses to Go as a float64: refuse |v| > 2**53.
        field: ``err.field`` (default: name).

    Raises:
        gdiv.ParamTypeError: a bool, a float or another non-integer.
        gdiv.ParamError: below lo, or above 2**53 with f64.
    """
    field = field or name
    if isinstance(v, bool):
        raise _err(ParamTypeError, field, f"{name} = {v!r}: want an integer, not a bool")
    try:
        i = operator.index(v)
    except TypeError:
        raise _err(ParamTypeError, field, f"{name} = {v!r}: want an integer (a float is not truncated)") from None
    if f64 and abs(i) > F64_EXACT:
        raise _err(ParamError, field, f"{name} = {i}: above 2**53, it would be rounded on its way to Go (a float64)")
    if lo is not None and i < lo:
        raise _err(ParamError, field, f"{name} = {i}: want an integer ≥ {lo}")
    return i


def check_float(name: str, v: Any, *, field: Optional[str] = None) -> float:
    """Return v as a float, or raise.

    NaN and infinities pass (Go says which settings allow them). An integer
    that a float64 cannot hold exactly (above 2**53 and not a multiple of
    the spacing there) is refused rather than rounded.

    Raises:
        gdiv.ParamTypeError: a bool, a string, None or another non-number.
        gdiv.ParamError: an integer that float64 would round.
    """
    field = field or name
    if isinstance(v, (bool, str, bytes)) or v is None or isinstance(v, complex):
        raise _err(ParamTypeError, field, f"{name} = {v!r}: want a real number")
    if not isinstance(v, float) and hasattr(type(v), "__index__"):  # int, numpy.int64, ...
        i = operator.index(v)
        if abs(i) > F64_EXACT and int(float(i)) != i:
            raise _err(ParamError, field, f"{name} = {i}: above 2**53, it would be rounded on its way to Go (a float64)")
        return float(i)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise _err(ParamTypeError, field, f"{name} = {v!r}: want a real number") from None


def check_seed(v: Any, name: str = "seed") -> int:
    """Return a seed in [0, 2**64): v itself, or a random one for None.

    Raises:
        gdiv.ParamTypeError: a bool, a float (1.5 is not truncated, 1.0 is
            not accepted either) or another non-integer.
        gdiv.ParamError: outside [0, 2**64).
    """
    if v is None:
        return secrets.randbits(64)
    if isinstance(v, bool):
        raise _err(ParamTypeError, name, f"{name} = {v!r}: want an integer in [0, 2**64) or None, not a bool")
    try:
        s = operator.index(v)
    except TypeError:
        raise _err(ParamTypeError, name, f"{name} = {v!r}: want an integer in [0, 2**64) or None (a float is not truncated)") from None
    if not 0 <= s < 2**64:
        raise _err(ParamError, name, f"{name} = {s} is outside [0, 2**64)")
    return s
