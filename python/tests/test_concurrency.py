"""Threads call Go in parallel correctly; a forked child fails fast and clearly."""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import threading
import time

import numpy as np
import pytest

import gdiv
from conftest import assert_stats, oracle_stats


def test_threads_get_correct_results(rng):
    inputs = [rng.normal(i % 3, 1.0, size=(200 + 13 * i, 64)).astype(np.float32 if i % 2 else np.float64) for i in range(16)]
    wants = [oracle_stats(g.astype(np.float64)) for g in inputs]
    errors = []
    start = threading.Barrier(8)

    def work(tid: int) -> None:
        try:
            start.wait()
            for k in range(300):
                i = (tid * 7 + k) % len(inputs)
                assert_stats(gdiv.stats(inputs[i]), wants[i], rtol=1e-9)
                if k % 10 == 0:
                    h = inputs[i].copy()
                    gdiv.Langevin(0.5).apply_(h, seed=k)
                    ref = inputs[i].copy()
                    gdiv.Langevin(0.5).apply_(ref, seed=k)
                    np.testing.assert_array_equal(h, ref)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_threads_overlap_in_go(rng):
    # The GIL is released during Go calls: 4 threads on 4 large arrays take
    # well under 4× one call on 2+ cores. Only checks correctness strictly;
    # overlap is reported, not asserted (shared CI machines are noisy).
    g = rng.normal(size=(2000, 2000))
    want = gdiv.stats(g)
    out = []
    ts = [threading.Thread(target=lambda: out.append(gdiv.stats(g))) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == [want] * 4


def _child_calls_gdiv(w: int) -> None:
    try:
        gdiv.stats(np.eye(3))
        msg = b"no error"
    except gdiv.ForkError as e:
        msg = b"ForkError: " + str(e).encode()
    except BaseException as e:  # noqa: BLE001
        msg = repr(e).encode()
    os.write(w, msg[:4000])
    os._exit(0)


def test_forked_child_gets_fork_error_fast():
    gdiv.stats(np.eye(3))  # the Go runtime is running in the parent
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        _child_calls_gdiv(w)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 20)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("forked child did not answer within 20 s")
    msg = os.read(r, 8192).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert time.monotonic() - t0 < 10
    assert msg.startswith("ForkError"), msg
    assert "spawn" in msg and "fork" in msg


def _mp_worker(q) -> None:
    try:
        gdiv.stats(np.eye(2))
        q.put("no error")
    except gdiv.ForkError:
        q.put("ForkError")


def test_multiprocessing_fork_context_gets_fork_error():
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_mp_worker, args=(q,))
    p.start()
    p.join(20)
    if p.is_alive():
        p.kill()
        pytest.fail("forked multiprocessing child hung")
    assert q.get(timeout=5) == "ForkError"
    assert not gdiv.in_forked_child()


def _spawn_worker(n: int) -> float:
    import numpy as np

    import gdiv

    return gdiv.stats(np.ones((n, 2))).batch_bound


def test_spawn_context_works():
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.map(_spawn_worker, [3]) == [1.0]
