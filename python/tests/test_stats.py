"""gdiv.stats and friends agree with the NumPy oracle, for every input kind."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import gdiv
from conftest import assert_close, assert_stats, needs_arrow, needs_torch, oracle_stats, pa, pyarrow_matrix, torch

SHAPES = [(1, 1), (2, 3), (7, 1), (1, 9), (33, 17), (256, 64), (1000, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_stats_matches_numpy_oracle(rng, shape, dtype):
    for mean in (0.0, 1.0, -3.0):
        g = rng.normal(mean, 1.0, size=shape).astype(dtype)
        # The oracle sees exactly the values Go sees (float32 widened).
        assert_stats(gdiv.stats(g), oracle_stats(g.astype(np.float64)), rtol=1e-9)


def test_stats_hand_computed():
    # Orthogonal rows: Δ = 1, B_S = n.
    st = gdiv.stats(np.eye(3))
    assert (st.n, st.dim, st.sum_sq_norms, st.sq_norm_of_sum) == (3, 3, 3.0, 3.0)
    assert st.diversity == 1.0 and st.batch_bound == 3.0 and st.noise_scale == 2.0
    # Identical rows: Δ = 1/n, B_S = 1.
    st = gdiv.stats(np.ones((4, 2)))
    assert st.diversity == 0.25 and st.batch_bound == 1.0 and st.noise_scale == 0.0
    assert st.m2 == 2.0 and st.g == 2.0


def test_cancelling_gradients_give_inf():
    st = gdiv.stats(np.array([[1.0, 2.0], [-1.0, -2.0]]))
    assert st.sq_norm_of_sum == 0.0 and st.g == 0.0
    assert math.isinf(st.diversity) and math.isinf(st.batch_bound) and math.isinf(st.noise_scale)


def test_result_is_immutable_and_converts_to_dict():
    st = gdiv.stats(np.eye(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.diversity = 3.0  # type: ignore[misc]
    d = st.to_dict()
    assert list(d) == ["n", "dim", "sum_sq_norms", "sq_norm_of_sum", "m2", "g", "diversity", "batch_bound", "noise_scale"]
    assert isinstance(d["n"], int) and isinstance(d["diversity"], float)
    assert st == gdiv.Stats(**d)


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stats_torch_matches_numpy(rng, dtype):
    g = rng.normal(0.5, 1.0, size=(40, 13)).astype(dtype)
    t = torch.from_numpy(g.copy())
    assert_stats(gdiv.stats(t), oracle_stats(g.astype(np.float64)), rtol=1e-9)
    # A contiguous row slice of a tensor (storage offset ≠ 0) is read correctly.
    assert_stats(gdiv.stats(t[5:20]), oracle_stats(g[5:20].astype(np.float64)), rtol=1e-9)


@needs_torch
def test_stats_torch_requires_grad_reads_fine(rng):
    g = rng.normal(size=(8, 3))
    t = torch.tensor(g, requires_grad=True)
    assert_stats(gdiv.stats(t), oracle_stats(g))


@needs_arrow
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_stats_arrow_fixed_size_list(rng, dtype):
    g = rng.normal(1.0, 2.0, size=(50, 6)).astype(dtype)
    assert_stats(gdiv.stats(pyarrow_matrix(g)), oracle_stats(g.astype(np.float64)), rtol=1e-9)


@needs_arrow
def test_stats_arrow_slices_use_offsets(rng):
    g = rng.normal(size=(30, 4))
    arr = pyarrow_matrix(g)
    for lo, hi in [(0, 30), (1, 30), (7, 19), (29, 30)]:
        assert_stats(gdiv.stats(arr[lo:hi]), oracle_stats(g[lo:hi]))
    # A list array built on an offset child array (the child's own offset).
    values = pa.array(np.concatenate([np.full(3, 99.0), g.reshape(-1)]))[3:]
    arr2 = pa.FixedSizeListArray.from_arrays(values, 4)
    assert_stats(gdiv.stats(arr2), oracle_stats(g))
    assert_stats(gdiv.stats(arr2[10:12]), oracle_stats(g[10:12]))


@needs_arrow
def test_stats_arrow_fixed_shape_tensor(rng):
    g = rng.normal(size=(12, 2, 3))
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(g)
    # Each example's tensor is flattened row-major.
    assert_stats(gdiv.stats(tensor), oracle_stats(g.reshape(12, 6)))


@needs_arrow
def test_stats_arrow_chunked(rng):
    g = rng.normal(size=(10, 3))
    one = pa.chunked_array([pyarrow_matrix(g)])
    assert_stats(gdiv.stats(one), oracle_stats(g))
    two = pa.chunked_array([pyarrow_matrix(g[:4]), pyarrow_matrix(g[4:])])
    assert_stats(gdiv.stats(two), oracle_stats(g))  # combined: a documented copy


def test_stats_array_likes_are_converted(rng):
    g = rng.normal(size=(5, 3))
    assert_stats(gdiv.stats(g.tolist()), oracle_stats(g))
    assert_stats(gdiv.stats(memoryview(g)), oracle_stats(g))
    ints = [[1, 2], [3, -4]]
    assert_stats(gdiv.stats(ints), oracle_stats(np.array(ints, dtype=float)))


def test_stats_numpy_subclass_and_non_writable(rng):
    g = rng.normal(size=(6, 2))
    m = g.view(np.matrix)
    assert_stats(gdiv.stats(m), oracle_stats(g))
    ro = g.copy()
    ro.setflags(write=False)
    assert_stats(gdiv.stats(ro), oracle_stats(g))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_stats_differential_matches_oracle(rng, dtype):
    a = rng.normal(size=(20, 7)).astype(dtype)
    b = rng.normal(size=(20, 7)).astype(dtype)
    diff = a.astype(np.float64) - b.astype(np.float64)
    assert_stats(gdiv.stats_differential(a, b), oracle_stats(diff), rtol=1e-9)


@needs_arrow
def test_stats_differential_mixed_inputs(rng):
    a = rng.normal(size=(9, 4))
    b = rng.normal(size=(9, 4))
    assert_stats(gdiv.stats_differential(pyarrow_matrix(a), b), oracle_stats(a - b))


def test_stats_differential_identical_is_all_zero(rng):
    a = rng.normal(size=(3, 3))
    with pytest.raises(gdiv.AllZeroError):
        gdiv.stats_differential(a, a.copy())


def test_stats_from_sums_matches_stats(rng):
    g = rng.normal(size=(25, 5))
    want = gdiv.stats(g)
    got = gdiv.stats_from_sums(25, 5, want.sum_sq_norms, want.sq_norm_of_sum)
    assert got == want


def test_stats_from_sums_rejects_impossible_sums():
    with pytest.raises(gdiv.ParamError):
        gdiv.stats_from_sums(2, 1, 1.0, 5.0)  # ‖Σg‖² > n·Σ‖g‖²
    with pytest.raises(gdiv.ParamError):
        gdiv.stats_from_sums(2, 1, -1.0, 0.0)


def test_float32_accumulates_in_float64():
    # 2^24 + 1 is not a float32, but sums of float32 rows in float64 are exact here.
    g = np.ones((1 << 12, 4), dtype=np.float32)
    st = gdiv.stats(g)
    assert st.sum_sq_norms == float(4 << 12)
    assert st.sq_norm_of_sum == 4.0 * (1 << 12) ** 2
    assert_close(st.batch_bound, 1.0, rtol=0)
