"""Exceptions raised by gdiv.

Bad data and bad parameters raise subclasses of :class:`GdivError`, itself a
:class:`ValueError`; an input of an unsupported type or dtype raises
:class:`TypeError`; a call from a forked child process raises
:class:`ForkError` (a :class:`RuntimeError`). A :class:`RuntimeError` whose
message starts with "gdiv: internal error" is a bug: please report it.

The Go core reports each problem with one of its sentinel errors (``ErrEmpty``,
``ErrNonFinite``, ...); the classes here mirror them one to one, so
``except gdiv.NonFiniteError`` catches exactly what ``errors.Is(err,
gdiv.ErrNonFinite)`` matches in Go.
"""

from __future__ import annotations

__all__ = [
    "GdivError",
    "EmptyInputError",
    "ZeroDimError",
    "NonFiniteError",
    "SumOverflowError",
    "AllZeroError",
    "TooFewError",
    "ShapeError",
    "ParamError",
    "ParamTypeError",
    "LabelError",
    "NullError",
    "ForkError",
]


class GdivError(ValueError):
    """Bad data or a bad parameter, reported by the Go core.

    Attributes:
        code: the tag of the Go sentinel error ("empty", "non_finite", ...).
    """

    code = "error"


class EmptyInputError(GdivError):
    """There are no examples (n = 0)."""

    code = "empty"


class ZeroDimError(GdivError):
    """The examples have no coordinates (d = 0)."""

    code = "zero_dim"


class NonFiniteError(GdivError):
    """An input value is NaN or ±Inf; the message names its row and column."""

    code = "non_finite"


class SumOverflowError(GdivError):
    """All inputs are finite but a sum of squares overflowed float64."""

    code = "overflow"


class AllZeroError(GdivError):
    """Every gradient is zero: the diversity is 0/0, undefined."""

    code = "all_zero"


class TooFewError(GdivError):
    """An unbiased estimate needs a batch of at least 2 examples."""

    code = "too_few"


class ShapeError(GdivError):
    """Inputs have inconsistent shapes."""

    code = "shape"


class ParamError(GdivError):
    """A parameter is outside its valid range."""

    code = "param"


class ParamTypeError(ParamError, TypeError):
    """A parameter of the wrong type (a bool or a float for an integer, a
    string for a number). It is both a :class:`ParamError` and a
    :class:`TypeError`, as numpy's ``AxisError`` is both a ``ValueError``
    and an ``IndexError``: ``except TypeError`` and ``except
    gdiv.ParamError`` both catch it. ``err.field`` names the parameter."""

    code = "param"


class LabelError(GdivError):
    """A label is not valid for the problem: a class label that is not an
    integer in [0, classes), or a data set a binary loss cannot use; the
    message names the row."""

    code = "label"


class NullError(GdivError):
    """An Arrow array has nulls (missing rows or values)."""

    code = "null"


class ForkError(RuntimeError):
    """gdiv was called in a child process created by ``fork()``."""


_BY_CODE: dict[str, type[GdivError]] = {
    c.code: c
    for c in (
        EmptyInputError,
        ZeroDimError,
        NonFiniteError,
        SumOverflowError,
        AllZeroError,
        TooFewError,
        ShapeError,
        ParamError,
        LabelError,
        NullError,
    )
}


def translate(err: RuntimeError) -> Exception:
    """Map a bridge error ("[tag] message", or "[tag:field] message" when Go
    names the setting, as data) to the exception a user sees. A named field
    leads the message ("min_batch: ...") and is kept as ``err.field``.

    Exceptions of other types (ForkError from the fork guard) pass unchanged.
    """
    if type(err) is not RuntimeError:
        return err
    msg = str(err)
    if msg.startswith("[") and "] " in msg:
        tag, _, text = msg[1:].partition("] ")
        tag, _, field = tag.partition(":")
        if field:
            text = f"{field}: {text}"
        if tag == "type":
            out: Exception = TypeError(text)
        else:
            cls = _BY_CODE.get(tag)
            out = cls(text) if cls is not None else RuntimeError(text)
        if field:
            out.field = field  # type: ignore[attr-defined]
        return out
    return RuntimeError(msg)
