"""Theorem 1 and 2 bounds and the stability step sizes against NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gdiv
from conftest import assert_close


@pytest.mark.parametrize("shape", [(5, 3), (3, 8), (40, 40), (100, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_glm_matches_numpy(rng, shape, dtype):
    X = rng.normal(size=shape).astype(dtype)
    x64 = X.astype(np.float64)
    n = shape[0]
    min_sq = float(np.min(np.sum(x64 * x64, axis=1)))
    smax = float(np.linalg.eigvalsh(x64.T @ x64).max())
    b = gdiv.bounds.glm(X)
    assert (b.n, b.dim) == shape
    assert_close(b.min_sq_norm, min_sq, rtol=1e-12)
    assert_close(b.sigma_max_sq, smax, rtol=1e-9)
    assert_close(b.batch_bound_lower, n * min_sq / smax, rtol=1e-9)
    assert 0 <= b.batch_bound_lower <= n


def test_glm_bound_holds_for_linear_regression_gradients(rng):
    # ∇f_i(w) = (x_iᵀw − y_i) x_i: B_S(w) ≥ the bound at every w.
    X = rng.normal(size=(30, 5))
    y = rng.normal(size=30)
    bound = gdiv.bounds.glm(X).batch_bound_lower
    for _ in range(20):
        w = rng.normal(size=5)
        grads = (X @ w - y)[:, None] * X
        assert gdiv.stats(grads).batch_bound >= bound * (1 - 1e-12)


def test_glm_zero_row_gives_trivial_bound(rng):
    X = rng.normal(size=(4, 3))
    X[2] = 0
    assert gdiv.bounds.glm(X).batch_bound_lower == 0.0


def test_sparse_matches_numpy(rng):
    G = (rng.random((40, 60)) < 0.04) * rng.normal(size=(40, 60))
    G[0, 0] = 1.0  # not all zero
    support = (G != 0).astype(np.int64)
    overlap = (support @ support.T) > 0
    np.fill_diagonal(overlap, False)
    rho = int(overlap.sum(axis=1).max())
    b = gdiv.bounds.sparse(G)
    assert (b.n, b.dim, b.max_degree) == (40, 60, rho)
    assert_close(b.batch_bound_lower, 40 / (rho + 1), rtol=1e-15)
    assert gdiv.bounds.sparse(G.astype(np.float32)) == b


def test_sparse_disjoint_supports():
    b = gdiv.bounds.sparse(np.eye(5))
    assert b.max_degree == 0 and b.batch_bound_lower == 5.0


def test_sparse_all_zero():
    with pytest.raises(gdiv.AllZeroError):
        gdiv.bounds.sparse(np.zeros((3, 3)))


def test_stability_step_convex():
    beta, n, B, bbar = 2.0, 100, 8, 5.0
    want = 2 / (beta * (1 + 1 / (n - 1) + (B - 1) / bbar))
    assert_close(gdiv.bounds.stability_step(beta, n, B, bbar), want, rtol=1e-15)
    assert gdiv.bounds.stability_step(beta, n, 1) == 2 / beta


def test_stability_step_strongly_convex():
    beta, lam, n, B, bbar = 2.0, 0.1, 100, 8, 5.0
    eq11 = 2 / ((beta + lam) * (1 + 1 / (n - 1) + (B - 1) / bbar))
    want = min(eq11, 1 / (2 * B * lam))
    assert_close(gdiv.bounds.stability_step(beta, n, B, bbar, strong_convexity=lam), want, rtol=1e-15)


def test_stability_step_bad_params():
    with pytest.raises(gdiv.ParamError):
        gdiv.bounds.stability_step(0.0, 10, 2)
    with pytest.raises(gdiv.ParamError):
        gdiv.bounds.stability_step(1.0, 10, 2, strong_convexity=-1.0)
    assert math.isfinite(gdiv.bounds.stability_step(1.0, 10, 2, math.inf))
