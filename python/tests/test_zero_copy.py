"""Zero copy: Go reads and writes the caller's memory and keeps nothing.

Evidence: the data address never changes; Go's in-place writes are visible
through the caller's numpy array / torch tensor (and through other views of
the same memory); Arrow data is viewed at the producer's own address and the
producer's release callback runs exactly once, before the call returns;
reference counts are back where they were.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import gdiv
from conftest import CountingProducer, assert_stats, needs_arrow, needs_torch, oracle_stats, pa, pyarrow_matrix, torch
from gdiv import _arrays
from gdiv._bridge import lib


def test_numpy_operand_is_the_arrays_own_address(rng):
    g = rng.normal(size=(10, 4))
    kind, addr, aux, n, d, keep = _arrays.operand(g)
    assert (kind, addr, aux, n, d) == (_arrays.KIND_F64, g.ctypes.data, 0, 10, 4) and keep is g
    ro = g.copy()
    ro.setflags(write=False)
    assert _arrays.operand(ro)[1] == ro.ctypes.data
    f32 = g.astype(np.float32)
    assert _arrays.operand(f32)[:2] == (_arrays.KIND_F32, f32.ctypes.data)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_numpy_in_place_write_is_visible(rng, dtype):
    g = rng.normal(size=(64, 32)).astype(dtype)
    before = g.copy()
    addr = g.ctypes.data
    view = g[3:5]  # another view of the same memory
    out = gdiv.Dropout(0.5).apply_(g, seed=7)
    assert out is g
    assert g.ctypes.data == addr
    dropped = g == 0
    assert 0.3 < dropped.mean() < 0.7
    # Kept coordinates unchanged (unscaled dropout), dropped ones zero.
    np.testing.assert_array_equal(g[~dropped], before[~dropped])
    np.testing.assert_array_equal(view, g[3:5])


def test_numpy_in_place_same_seed_same_result(rng):
    g = rng.normal(size=(16, 8))
    a, b = g.copy(), g.copy()
    gdiv.Langevin(0.1).apply_(a, seed=42)
    gdiv.Langevin(0.1).apply_(b, seed=42)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, g)
    c = g.copy()
    gdiv.Langevin(0.1).apply_(c, seed=43)
    assert not np.array_equal(a, c)


def test_apply_returns_new_array_and_leaves_input(rng):
    g = rng.normal(size=(16, 8))
    before = g.copy()
    new = gdiv.Langevin(0.5).apply(g, seed=1)
    assert isinstance(new, np.ndarray) and new.ctypes.data != g.ctypes.data
    np.testing.assert_array_equal(g, before)
    again = g.copy()
    gdiv.Langevin(0.5).apply_(again, seed=1)
    np.testing.assert_array_equal(new, again)


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_in_place_write_is_visible(rng, dtype):
    t = torch.from_numpy(rng.normal(size=(32, 16)).astype(dtype))
    shared = t.numpy()  # the same memory seen by numpy
    ptr = t.data_ptr()
    version = t._version
    out = gdiv.Dropout(0.5, rescale=True).apply_(t, seed=3)
    assert out is t and t.data_ptr() == ptr
    assert 0.3 < (t == 0).float().mean().item() < 0.7
    np.testing.assert_array_equal(shared, t.numpy())
    assert t._version > version  # autograd's version counter was bumped


@needs_torch
def test_torch_grad_tensor_in_place(rng):
    w = torch.zeros(8, 4, requires_grad=True)
    (w * torch.from_numpy(rng.normal(size=(8, 4))).float()).sum().backward()
    grad = w.grad
    ptr = grad.data_ptr()
    gdiv.Quantize().apply_(grad, seed=5)
    assert w.grad is grad and grad.data_ptr() == ptr
    # Quantize (s = 1) leaves each row with entries in {0, ±‖row‖}.
    norms = grad.abs().amax(dim=1, keepdim=True)
    assert torch.all((grad == 0) | (grad.abs() == norms))


@needs_torch
def test_torch_apply_returns_torch(rng):
    t = torch.from_numpy(rng.normal(size=(4, 3)))
    new = gdiv.Dropout(0.5).apply(t, seed=1)
    assert isinstance(new, torch.Tensor) and new.dtype == t.dtype and new.data_ptr() != t.data_ptr()


def test_refcounts_unchanged(rng):
    g = rng.normal(size=(10, 3))
    r = g + 1.0
    mech = gdiv.Langevin(0.1)
    before = (sys.getrefcount(g), sys.getrefcount(r))
    for _ in range(100):
        gdiv.stats(g)
        gdiv.stats_differential(g, r)
        mech.apply_(r, seed=1)
        mech.expected(g)
        gdiv.estimate(g)
    assert (sys.getrefcount(g), sys.getrefcount(r)) == before


@needs_torch
def test_torch_refcount_unchanged(rng):
    t = torch.from_numpy(rng.normal(size=(10, 3)))
    before = sys.getrefcount(t)
    for _ in range(100):
        gdiv.stats(t)
        gdiv.Dropout(0.1).apply_(t, seed=2)
    assert sys.getrefcount(t) == before


def _arrow_view(obj):
    info = np.empty(3)
    op = _arrays.operand(obj)
    addr = lib.ArrowView(info.ctypes.data, op[1], op[2])
    return addr, int(info[0]), int(info[1]), int(info[2])


@needs_arrow
def test_arrow_is_viewed_in_place(rng):
    g = rng.normal(size=(20, 5))
    arr = pyarrow_matrix(g)
    values_addr = arr.values.buffers()[1].address
    assert _arrow_view(arr) == (values_addr, 20, 5, _arrays.KIND_F64)
    # A slice: Go views the same buffer at the slice's offset.
    assert _arrow_view(arr[7:9]) == (values_addr + 7 * 5 * 8, 2, 5, _arrays.KIND_F64)
    f32 = pyarrow_matrix(g.astype(np.float32))
    assert _arrow_view(f32)[0] == f32.values.buffers()[1].address
    before = pa.total_allocated_bytes()
    for _ in range(10):
        gdiv.stats(arr)
    assert pa.total_allocated_bytes() == before


@needs_arrow
def test_arrow_release_callback_runs_once_per_call(rng):
    g = rng.normal(size=(12, 3))
    prod = CountingProducer(g)
    addr, n, d, kind = _arrow_view(prod)
    assert (addr, n, d) == (g.ctypes.data, 12, 3)  # the producer's own memory
    assert (prod.array_releases, prod.schema_releases) == (1, 1)
    for i in range(2, 12):
        assert_stats(gdiv.stats(prod), oracle_stats(g))
        assert (prod.array_releases, prod.schema_releases) == (i, i)


@needs_arrow
def test_arrow_released_on_error_paths(rng):
    g = np.zeros((3, 2))
    prod = CountingProducer(g)
    with pytest.raises(gdiv.AllZeroError):
        gdiv.stats(prod)
    with pytest.raises(gdiv.ShapeError):
        gdiv.stats_differential(prod, np.ones((2, 2)))
    with pytest.raises(gdiv.ParamError):
        gdiv.Dropout(0.5).monte_carlo(prod, samples=1)
    assert prod.array_releases == prod.schema_releases == 3


@needs_arrow
def test_arrow_apply_copies_into_numpy(rng):
    g = rng.normal(size=(6, 4))
    new = gdiv.Langevin(1.0).apply(pyarrow_matrix(g), seed=9)
    want = g.copy()
    gdiv.Langevin(1.0).apply_(want, seed=9)
    np.testing.assert_array_equal(new, want)
    prod = CountingProducer(g)
    gdiv.Langevin(1.0).apply(prod, seed=9)
    assert prod.array_releases == prod.schema_releases == 2  # sized, then copied
