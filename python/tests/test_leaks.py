"""No leak: 10^5 calls grow the resident set by less than a few MB."""

from __future__ import annotations

import gc

import numpy as np

import gdiv
from conftest import CountingProducer, needs_arrow, pa, pyarrow_matrix, rss_bytes

LIMIT = 4 << 20  # 4 MiB
CALLS = 100_000


def growth(fn, calls: int = CALLS) -> int:
    for _ in range(calls // 10):  # warm up: allocator pools, caches
        fn()
    gc.collect()
    before = rss_bytes()
    for _ in range(calls):
        fn()
    gc.collect()
    return rss_bytes() - before


def test_stats_numpy_no_leak(rng):
    g = rng.normal(size=(8, 16))
    assert growth(lambda: gdiv.stats(g)) < LIMIT


def test_error_path_no_leak():
    z = np.zeros((4, 4))

    def call():
        try:
            gdiv.stats(z)
        except gdiv.AllZeroError:
            pass

    assert growth(call) < LIMIT


def test_mechanism_and_estimator_no_leak(rng):
    g = rng.normal(size=(8, 16))
    est = gdiv.Estimator(0.9)
    mech = gdiv.Dropout(0.5)

    def call():
        mech.apply_(g, seed=1)
        g[0, 0] = 1.0
        est.update(g) if est.steps < 10 else est.smoothed

    assert growth(call, CALLS // 2) < LIMIT


@needs_arrow
def test_arrow_no_leak(rng):
    arr = pyarrow_matrix(rng.normal(size=(8, 16)))
    before = pa.total_allocated_bytes()
    assert growth(lambda: gdiv.stats(arr)) < LIMIT
    assert pa.total_allocated_bytes() == before


@needs_arrow
def test_arrow_every_export_released(rng):
    prod = CountingProducer(rng.normal(size=(4, 4)))
    for _ in range(1000):
        gdiv.stats(prod)
    assert prod.array_releases == prod.schema_releases == 1000


def test_policy_and_reference_no_leak(rng):
    pol = gdiv.BatchSizePolicy(max_batch=64)
    X = rng.normal(size=(16, 3))
    y = rng.integers(0, 2, size=16)
    w = np.zeros(8)  # softmax, 2 classes × (3 features + bias)
    idx = np.array([1, 2, 3])

    def call():
        pol.next(8, 20.0, 3)
        pol.scale_lr(0.1, 8, 16)
        gdiv.reference.step(X, y, w, idx, lr=0.1)
        try:
            pol.next(0, 20.0, 0)
        except gdiv.ParamError:
            pass

    assert growth(call, CALLS // 10) < LIMIT


def test_reference_train_no_leak(rng):
    X = rng.normal(size=(32, 4))
    y = rng.integers(0, 3, size=32)

    def call():
        gdiv.reference.train(X, y, lr=0.05, batch=4, steps=5, record_indices=True)

    assert growth(call, 5000) < LIMIT
