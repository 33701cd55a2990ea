"""Shared fixtures and the independent NumPy oracle.

The oracle re-implements the paper's formulas in NumPy (float64, the
obvious way) so the tests can check the Go core through the Python package.
It is test code only: the package itself never computes a formula.
"""

from __future__ import annotations

import ctypes
import os
from typing import Dict

import numpy as np
import pytest

import gdiv  # noqa: F401  (import early: the extension must load)

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None
try:
    import pyarrow as pa
except ImportError:  # pragma: no cover
    pa = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
needs_arrow = pytest.mark.skipif(pa is None, reason="pyarrow is not installed")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20180409)


def digits_standardized(n: int):
    """The first n rows of testdata/digits.csv, standardized (constant pixels
    left at 0): the data of the ground-truth tests. Returns (X, y)."""
    from pathlib import Path

    raw = np.loadtxt(Path(__file__).resolve().parents[2] / "testdata" / "digits.csv", delimiter=",", skiprows=1)
    X, y = raw[:n, :64], raw[:n, 64].astype(np.int64)
    sd = X.std(0)
    sd[sd == 0] = 1.0
    return np.ascontiguousarray((X - X.mean(0)) / sd), y


# ---------------------------------------------------------------- oracle ---


def oracle_stats(g: np.ndarray) -> Dict[str, float]:
    g = np.asarray(g, dtype=np.float64)
    n, d = g.shape
    s = float(np.sum(g * g))
    t = float(np.sum(np.sum(g, axis=0) ** 2))
    div = s / t if t > 0 else np.inf
    return {
        "n": n,
        "dim": d,
        "sum_sq_norms": s,
        "sq_norm_of_sum": t,
        "m2": s / n,
        "g": t / n**2,
        "diversity": div,
        "batch_bound": n * div,
        "noise_scale": n * div - 1,
    }


def oracle_estimate(g: np.ndarray, dataset_size=None) -> Dict[str, float]:
    g = np.asarray(g, dtype=np.float64)
    b = g.shape[0]
    s = float(np.sum(g * g))
    t = float(np.sum(np.sum(g, axis=0) ** 2))
    m2 = s / b
    mean_sq = t / b**2
    if dataset_size is None:
        gg = (b * mean_sq - m2) / (b - 1)
    else:
        n = dataset_size
        c = (n - b) / (b * (n - 1))
        gg = (mean_sq - c * m2) / (1 - c)
    bb = m2 / gg if gg > 0 else np.inf
    return {"batch": b, "m2": m2, "g": gg, "batch_bound": bb, "noise_scale": bb - 1, "no_signal": gg <= 0}


def oracle_second_moments(mech, g: np.ndarray):
    """(m_i per row, a) with E‖g_i^DIM‖² = m_i and E[g_i^DIM] = a g_i."""
    g = np.asarray(g, dtype=np.float64)
    sq = np.sum(g * g, axis=1)
    if isinstance(mech, gdiv.Dropout):
        p = mech.p
        return (sq / (1 - p), 1.0) if mech.rescale else ((1 - p) * sq, 1 - p)
    if isinstance(mech, gdiv.Langevin):
        return sq + g.shape[1] * mech.std**2, 1.0
    if isinstance(mech, gdiv.Quantize):
        s = mech.levels
        norms = np.sqrt(sq)
        safe = np.where(norms > 0, norms, 1.0)
        r = s * np.abs(g) / safe[:, None]
        f = r - np.floor(r)
        return sq + sq / s**2 * np.sum(f * (1 - f), axis=1), 1.0
    raise TypeError(mech)


def oracle_expected(mech, g: np.ndarray) -> Dict[str, float]:
    g = np.asarray(g, dtype=np.float64)
    n = g.shape[0]
    m, a = oracle_second_moments(mech, g)
    st = oracle_stats(g)
    num = float(np.sum(m))
    den = num + a * a * (st["sq_norm_of_sum"] - st["sum_sq_norms"])
    div = num / den if den > 0 else np.inf
    return {"sum_sq_norms": num, "sq_norm_of_sum": den, "diversity": div, "batch_bound": n * div}


def assert_close(got: float, want: float, rtol: float = 1e-10, atol: float = 0.0, what: str = "") -> None:
    if np.isinf(want):
        assert got == want, f"{what}: got {got}, want {want}"
        return
    assert abs(got - want) <= atol + rtol * abs(want), f"{what}: got {got!r}, want {want!r} (rtol {rtol}, atol {atol})"


def assert_stats(st: "gdiv.Stats", want: Dict[str, float], rtol: float = 1e-10) -> None:
    assert st.n == want["n"] and st.dim == want["dim"]
    for k in ("sum_sq_norms", "sq_norm_of_sum", "m2", "g", "diversity", "batch_bound"):
        assert_close(getattr(st, k), want[k], rtol=rtol, atol=1e-300, what=k)
    # noise_scale = batch_bound − 1 cancels: compare on batch_bound's scale.
    assert_close(st.noise_scale, want["noise_scale"], rtol=rtol, atol=rtol * max(1.0, want["batch_bound"]), what="noise_scale")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------- a hand-made Arrow producer ---


class ArrowSchema(ctypes.Structure):
    pass


class ArrowArray(ctypes.Structure):
    pass


SCHEMA_RELEASE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowSchema))
ARRAY_RELEASE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowArray))

ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowSchema))),
    ("dictionary", ctypes.POINTER(ArrowSchema)),
    ("release", SCHEMA_RELEASE),
    ("private_data", ctypes.c_void_p),
]
ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowArray))),
    ("dictionary", ctypes.POINTER(ArrowArray)),
    ("release", ARRAY_RELEASE),
    ("private_data", ctypes.c_void_p),
]

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class CountingProducer:
    """An object implementing ``__arrow_c_array__`` over a numpy float64 matrix
    (FixedSizeList<double>[d], no copy), counting its release callbacks.

    Each export builds fresh C structs; ``released`` counts how many exported
    arrays (parents) and schemas were released by the consumer.
    """

    def __init__(self, matrix: np.ndarray) -> None:
        assert matrix.dtype == np.float64 and matrix.flags.c_contiguous and matrix.ndim == 2
        self.matrix = matrix
        self.array_releases = 0
        self.schema_releases = 0
        self._keep: list = []

        def release_array(p):  # the parent's release also releases the child
            arr = p.contents
            if arr.n_children:
                child = arr.children[0].contents
                if child.release:
                    child.release = ARRAY_RELEASE()
            arr.release = ARRAY_RELEASE()
            self.array_releases += 1

        def release_child(p):
            p.contents.release = ARRAY_RELEASE()

        def release_schema(p):
            s = p.contents
            if s.n_children:
                s.children[0].contents.release = SCHEMA_RELEASE()
            s.release = SCHEMA_RELEASE()
            self.schema_releases += 1

        def release_child_schema(p):
            p.contents.release = SCHEMA_RELEASE()

        self._cb = (
            ARRAY_RELEASE(release_array),
            ARRAY_RELEASE(release_child),
            SCHEMA_RELEASE(release_schema),
            SCHEMA_RELEASE(release_child_schema),
        )

    def __arrow_c_array__(self, requested_schema=None):
        n, d = self.matrix.shape
        child_schema = ArrowSchema(b"g", b"item", None, 2, 0, None, None, self._cb[3], None)
        child_schemas = (ctypes.POINTER(ArrowSchema) * 1)(ctypes.pointer(child_schema))
        fmt = f"+w:{d}".encode()
        schema = ArrowSchema(fmt, b"grads", None, 2, 1, child_schemas, None, self._cb[2], None)

        child_bufs = (ctypes.c_void_p * 2)(None, self.matrix.ctypes.data)
        child = ArrowArray(n * d, 0, 0, 2, 0, child_bufs, None, None, self._cb[1], None)
        children = (ctypes.POINTER(ArrowArray) * 1)(ctypes.pointer(child))
        bufs = (ctypes.c_void_p * 1)(None)
        arr = ArrowArray(n, 0, 0, 1, 1, bufs, children, None, self._cb[0], None)
        self._keep.append((fmt, child_schema, child_schemas, schema, child_bufs, child, children, bufs, arr))
        return (
            _capsule_new(ctypes.addressof(schema), b"arrow_schema", None),
            _capsule_new(ctypes.addressof(arr), b"arrow_array", None),
        )


def pyarrow_matrix(x: np.ndarray):
    """A FixedSizeList<float> pyarrow array viewing x's values (zero copy)."""
    n, d = x.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
