"""Validation and zero-copy hand-off of array inputs to the Go bridge.

An operand crosses as ``(kind, addr, aux, n, d)`` (see package pybridge):

=========================  =====================================================
input                      how it crosses
=========================  =====================================================
numpy.ndarray (2-D,        zero copy: its data address; Go reads (and, for
float32/float64)           ``apply_``, writes) the array's own memory
torch.Tensor (CPU, 2-D,    zero copy: ``data_ptr()``, the same
float32/float64)
object with                zero copy: the Arrow C Data Interface (PyCapsules);
``__arrow_c_array__``      Go imports the array, views its buffers and releases
(pyarrow.Array, ...)       it (running the producer's release callback) before
                           returning. FixedSizeList<float32|float64> or the
                           ``arrow.fixed_shape_tensor`` extension, one example
                           per element; slices (offsets) are honoured
pyarrow.ChunkedArray       one chunk: that chunk, zero copy; several chunks:
                           ``combine_chunks()`` — a copy
anything else (lists,      **copied** once with ``numpy.asarray``: float32 and
buffers, other arrays)     float64 stay, other real numbers become float64
=========================  =====================================================

Before any address crosses, numpy arrays and torch tensors are checked: 2-D,
dtype float32 or float64 in native byte order, C-contiguous, aligned, on the
CPU, and writable for in-place calls. Problems raise ``TypeError`` (wrong
type or dtype) or ``ValueError`` (everything else) naming the argument and
the fix; nothing is copied silently for numpy and torch inputs. Masked
arrays (``numpy.ma``) are refused with ``TypeError``: Go would read the
values under the mask and ignore the mask.

Writability: a numpy array's ``flags.writeable`` is checked here. A torch
tensor has no such flag — ``torch.from_numpy`` of a read-only array (a
``numpy.load(..., mmap_mode="r")`` memmap) only warns, and
``tensor.numpy().flags.writeable`` is True even then — so read-only memory
behind a tensor cannot be seen from Python. The bridge catches it instead:
the first write faults, Go turns the fault into a panic
(``debug.SetPanicOnFault``) and the panic into :class:`gdiv.ParamError`
naming ``grads``, before anything is written.

The returned tuple's last element holds every object that must stay alive
during the call (capsules, converted copies); callers keep the tuple in a
local variable until the bridge call returns.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Tuple

import numpy as np

KIND_F64 = 0
KIND_F32 = 1
KIND_ARROW = 2

F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)

# (kind, addr, aux, n, d, keepalive)
Operand = Tuple[int, int, int, int, int, Any]

_addressof = ctypes.addressof
_char_from_buffer = ctypes.c_char.from_buffer

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _dtype_error(what: str, dtype: object) -> TypeError:
    return TypeError(f"{what} has dtype {dtype}; gdiv accepts float32 or float64 (convert with .astype(numpy.float64) or .to(torch.float64), a copy)")


def _masked_error(what: str) -> TypeError:
    return TypeError(
        f"{what} is a numpy masked array; gdiv would read the values under the mask and ignore it. "
        f"Pass {what}.filled(value) or drop the masked rows (a plain ndarray)"
    )


def refuse_masked(x: Any, what: str) -> None:
    """Raise TypeError for a numpy masked array (its mask would be ignored)."""
    if isinstance(x, np.ma.MaskedArray):
        raise _masked_error(what)


def _numpy(x: np.ndarray, what: str, writable: bool, keep: Any) -> Operand:
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (one example per row, shape (n, d)); got shape {x.shape}")
    dt = x.dtype
    if dt is F64 or dt == F64:
        kind = KIND_F64
    elif dt is F32 or dt == F32:
        kind = KIND_F32
    elif dt.kind == "f" and dt.itemsize in (4, 8) and not dt.isnative:
        raise TypeError(f"{what} has non-native byte order ({dt.str}); convert with .astype(numpy.{dt.name}) (a copy)")
    else:
        raise _dtype_error(what, dt)
    flags = x.flags
    if not flags.c_contiguous:
        raise ValueError(f"{what} is not C-contiguous (strides {x.strides}); pass numpy.ascontiguousarray({what}) (a copy)")
    if not flags.aligned:
        raise ValueError(f"{what} is not aligned to its {dt.itemsize}-byte dtype; pass a copy (numpy.array({what}))")
    if writable and not flags.writeable:
        raise ValueError(f"{what} is read-only; an in-place call needs a writable array (use .apply for a new array)")
    n, d = x.shape
    if flags.writeable and n and d:
        # A ctypes view of the buffer gives the address about 4x faster
        # than __array_interface__ (which builds a dict); it needs a
        # writable, non-empty buffer.
        return kind, _addressof(_char_from_buffer(x)), 0, n, d, keep  # type: ignore[arg-type]  # ndarrays are buffers
    return kind, x.__array_interface__["data"][0], 0, n, d, keep


def _torch(x: Any, what: str, writable: bool) -> Operand:
    torch = sys.modules["torch"]
    if x.device.type != "cpu":
        raise ValueError(
            f"{what} is on device {x.device}; gdiv reads CPU memory. Reduce on the device and pass "
            "the small results (Estimator.update(sq_norms=..., batch_grad=...) or sums), or copy with .cpu()"
        )
    if x.layout is not torch.strided:
        raise ValueError(f"{what} has layout {x.layout}; gdiv needs a dense (strided) tensor (use .to_dense(), a copy)")
    dt = x.dtype
    if dt is torch.float64:
        kind, size = KIND_F64, 8
    elif dt is torch.float32:
        kind, size = KIND_F32, 4
    else:
        raise _dtype_error(what, dt)
    if x.dim() != 2:
        raise ValueError(f"{what} must be 2-D (one example per row, shape (n, d)); got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{what} is not contiguous (strides {x.stride()}); pass {what}.contiguous() (a copy)")
    if x.is_neg():
        raise ValueError(f"{what} is a lazily negated view; pass {what}.resolve_neg() (a copy)")
    if writable and x.requires_grad:
        raise ValueError(
            f"{what} requires grad; an in-place call would bypass autograd. Pass {what}.detach() (same memory) or a gradient tensor such as p.grad"
        )
    addr = x.data_ptr()
    if addr % size:
        raise ValueError(f"{what} is not aligned to its {size}-byte dtype; pass {what}.clone() (a copy)")
    n, d = x.shape
    return kind, addr, 0, n, d, x


def _arrow(x: Any, what: str) -> Operand:
    schema, array = x.__arrow_c_array__()
    sp = _capsule_pointer(schema, b"arrow_schema")
    ap = _capsule_pointer(array, b"arrow_array")
    return KIND_ARROW, ap, sp, 0, 0, (schema, array)


def is_torch(x: Any) -> bool:
    """Return True for a torch.Tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_arrow(x: Any) -> bool:
    """Return True for an Arrow array (C Data Interface or pyarrow.ChunkedArray)."""
    if hasattr(type(x), "__arrow_c_array__"):
        return True
    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(x, pa.ChunkedArray)


def operand(x: Any, what: str = "grads", writable: bool = False) -> Operand:
    """Validate x and return the operand tuple for the bridge (see module doc).

    Args:
        x: the input (numpy array, torch tensor, Arrow array or array-like).
        what: the argument's name, for error messages.
        writable: the call writes into x (mechanisms' ``apply_``): only
            writable numpy arrays and torch CPU tensors are accepted.

    Raises:
        TypeError: unsupported type or dtype.
        ValueError: wrong number of dimensions, not contiguous, not aligned,
            read-only for an in-place call, not on the CPU, ...
    """
    if type(x) is np.ndarray:
        return _numpy(x, what, writable, x)
    if is_torch(x):
        return _torch(x, what, writable)
    if isinstance(x, np.ndarray):  # a subclass (exact ndarrays took the first branch)
        if isinstance(x, np.ma.MaskedArray):
            raise _masked_error(what)
        return _numpy(x, what, writable, x)
    if writable:
        raise TypeError(
            f"{what} is a {type(x).__module__}.{type(x).__qualname__}; in-place calls need a "
            "writable numpy array or torch CPU tensor (Arrow data is immutable: use .apply)"
        )
    if hasattr(type(x), "__arrow_c_array__"):
        return _arrow(x, what)
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(x, pa.ChunkedArray):
        chunk = x.chunk(0) if x.num_chunks == 1 else x.combine_chunks()  # several chunks: a copy
        return _arrow(chunk, what)
    return _converted(x, what)


def _converted(x: Any, what: str) -> Operand:
    """The documented copy for other array-likes."""
    if isinstance(x, np.ma.MaskedArray) or any(isinstance(r, np.ma.MaskedArray) for r in (x if isinstance(x, (list, tuple)) else ())):
        raise _masked_error(what)
    try:
        a = np.asarray(x)
    except Exception as e:  # numpy raises many types for ragged/odd input
        raise TypeError(f"{what}: cannot convert {type(x).__qualname__} to an array: {e}") from e
    if a.dtype.kind in "biuf" and not (a.dtype == F32 or a.dtype == F64):
        a = a.astype(F64)
    elif a.dtype.kind not in "biuf":
        raise _dtype_error(what, a.dtype)
    a = np.ascontiguousarray(a)
    return _numpy(a, what, False, a)


def vector(x: Any, what: str, flatten: bool = False) -> Tuple[int, int, int, Any]:
    """Validate a float vector and return (kind, addr, length, keepalive).

    numpy arrays and torch CPU tensors cross with zero copy (1-D, or any
    C-contiguous shape when ``flatten``); other array-likes are copied.
    """
    if is_torch(x):
        t = x
        if t.dim() != 1:
            if not flatten:
                raise ValueError(f"{what} must be 1-D; got shape {tuple(t.shape)}")
            if not t.is_contiguous():
                raise ValueError(f"{what} is not contiguous; pass {what}.contiguous() (a copy)")
            t = t.view(-1)
        kind, addr, _, n, _, _ = _torch(t.view(-1, 1), what, False)
        return kind, addr, n, x
    if type(x) is not np.ndarray and isinstance(x, np.ma.MaskedArray):
        raise _masked_error(what)
    if not isinstance(x, np.ndarray):
        x = _converted(np.asarray(x).reshape(-1, 1), what)[5].reshape(-1)
    a = x
    if a.ndim != 1:
        if not flatten:
            raise ValueError(f"{what} must be 1-D; got shape {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{what} is not C-contiguous; pass numpy.ascontiguousarray({what}) (a copy)")
        a = a.reshape(-1)
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} is not C-contiguous (strides {a.strides}); pass numpy.ascontiguousarray({what}) (a copy)")
    kind, addr, _, n, _, _ = _numpy(a.reshape(-1, 1), what, False, x)
    return kind, addr, n, x


def bump_torch_version(x: Any) -> None:
    """Tell autograd that a tensor was modified in place (its version counter)."""
    torch = sys.modules["torch"]
    inc = getattr(getattr(torch.autograd, "graph", None), "increment_version", None)
    if inc is not None:
        inc(x)


def copy_of(x: Any, what: str = "grads") -> Any:
    """A new C-contiguous array with x's values: numpy in → numpy, torch → torch
    (detached clone), Arrow → numpy (copied by Go), other → float numpy."""
    if is_torch(x):
        return x.detach().clone(memory_format=sys.modules["torch"].contiguous_format)
    if isinstance(x, np.ma.MaskedArray):
        raise _masked_error(what)
    if isinstance(x, np.ndarray):
        return np.array(x, order="C", copy=True)
    if is_arrow(x):
        return _arrow_copy(x, what)
    return _converted(x, what)[5].copy()


def _arrow_copy(x: Any, what: str) -> np.ndarray:
    from ._bridge import lib
    from .errors import translate

    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(x, pa.ChunkedArray):
        x = x.chunk(0) if x.num_chunks == 1 else x.combine_chunks()
    info = np.empty(3)
    op = _arrow(x, what)
    try:
        lib.ArrowView(info.ctypes.data, op[1], op[2])
    except RuntimeError as e:
        raise translate(e) from None
    n, d, kind = int(info[0]), int(info[1]), int(info[2])
    out = np.empty((n, d), dtype=F32 if kind == KIND_F32 else F64)
    op = _arrow(x, what)  # a fresh export: the first was consumed
    try:
        lib.ArrowCopy(out.ctypes.data, kind, n * d, op[1], op[2])
    except RuntimeError as e:
        raise translate(e) from None
    return out
