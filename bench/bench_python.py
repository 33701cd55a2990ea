#!/usr/bin/env python3
"""Benchmarks of the Python package (printed tables and a PNG; no asserts).

1. Per-call overhead of ``gdiv.stats`` on a tiny array, validation included,
   with its parts (validation, the bare bridge call) and the other input kinds.
2. A size sweep from 1 KB to 1 GB (float32 gradients, rows of d = 256): the
   time of ``gdiv.stats`` next to the same statistics (Σ‖g_i‖², ‖Σ g_i‖² with
   float64 accumulation) computed by NumPy and by torch in the same run, the
   throughput of each, and the cost of gdiv's hand-off alone (validation and
   address), which stays flat because nothing is copied. gdiv runs on one
   thread; torch is timed with 1 thread and with its default intra-op threads
   and the better time is shown (the "Nt" after it says which).

Usage:
    python bench/bench_python.py [--max-bytes 1e9] [--dtype float32] [--png PATH]

Run it on a quiet machine; the numbers are medians of repeated runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import timeit
from typing import Callable, Dict, List

import numpy as np

import gdiv
from gdiv import _arrays
from gdiv._bridge import lib

try:
    import torch

    TORCH_THREADS = torch.get_num_threads()
except ImportError:  # pragma: no cover
    torch = None
try:
    import pyarrow as pa
except ImportError:  # pragma: no cover
    pa = None


def per_call(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Median seconds per call over `repeat` runs of `number` calls."""
    fn()
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number


def timed(fn: Callable[[], object], budget: float = 1.0, max_repeat: int = 15) -> float:
    """Median seconds of one call, repeated within about `budget` seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    reps = int(max(3, min(max_repeat, budget / max(first, 1e-9))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def numpy_stats(x: np.ndarray) -> tuple:
    # float64 accumulation: the obvious NumPy way, one pass per sum.
    s = np.einsum("ij,ij->", x, x, dtype=np.float64)
    col = x.sum(axis=0, dtype=np.float64)
    return float(s), float(col @ col)


def torch_stats(t) -> tuple:
    s = torch.linalg.vector_norm(t, dtype=torch.float64) ** 2
    col = t.sum(dim=0, dtype=torch.float64)
    return float(s), float(col @ col)


def fmt_time(s: float) -> str:
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1000 or unit == "GB":
            return f"{b:.0f} {unit}"
        b /= 1000
    return str(b)


def overhead_table() -> None:
    tiny = np.zeros((1, 4))
    tiny[0, 0] = 1.0
    out = np.empty(9)
    op = _arrays.operand(tiny)
    oaddr = out.ctypes.data
    rows = [
        ("gdiv.stats(numpy 1x4 float64)", lambda: gdiv.stats(tiny), 200_000),
        ("  validation + address only", lambda: _arrays.operand(tiny), 200_000),
        ("  bare bridge call (cgo + Go)", lambda: lib.Stats(oaddr, op[0], op[1], op[2], op[3], op[4]), 200_000),
        ("numpy: einsum + sum (same sums)", lambda: numpy_stats(tiny), 100_000),
    ]
    if torch is not None:
        tt = torch.from_numpy(tiny.copy())
        rows.append(("gdiv.stats(torch 1x4 float64)", lambda: gdiv.stats(tt), 100_000))
        rows.append(("torch: norm + sum (same sums)", lambda: torch_stats(tt), 20_000))
    if pa is not None:
        arr = pa.FixedSizeListArray.from_arrays(pa.array(tiny.reshape(-1)), 4)
        rows.append(("gdiv.stats(pyarrow 1x4, C Data)", lambda: gdiv.stats(arr), 50_000))
    rows.append(("Estimator.update(sums form)", _estimator_call(), 100_000))
    print("\nPer-call overhead (median; target for gdiv.stats on a tiny array: <= 5 µs)")
    print(f"{'call':<36} {'time':>10}")
    for name, fn, number in rows:
        print(f"{name:<36} {fmt_time(per_call(fn, number)):>10}")


def _estimator_call() -> Callable[[], object]:
    est = gdiv.Estimator(0.9)
    return lambda: est.update(batch_size=8, sum_sq_norms=10.0, sq_norm_of_sum=40.0)


def sweep(max_bytes: float, dtype: str) -> List[Dict[str, float]]:
    d = 256
    item = np.dtype(dtype).itemsize
    sizes = []
    b = 1000.0
    while b <= max_bytes * 1.0001:
        sizes.append(b)
        b *= 4 if b < 1e9 else 10
    if sizes[-1] < max_bytes * 0.99:
        sizes.append(max_bytes)
    rng = np.random.default_rng(0)
    results = []
    print(f"\nSize sweep: {dtype} gradients, d = {d}; time per call (median) and throughput")
    head = f"{'size':>8} {'n':>9} | {'gdiv':>9} {'GB/s':>6} | {'numpy':>9} {'GB/s':>6} | {'torch':>9} {'GB/s':>6}    | {'gdiv arrow':>10} | {'hand-off':>9} | {'check':>5}"
    print(head)
    print("-" * len(head))
    for size in sizes:
        n = max(1, int(round(size / (d * item))))
        x = rng.standard_normal((n, d), dtype=np.float32 if dtype == "float32" else np.float64)
        x += 0.01
        nbytes = x.nbytes
        budget = 1.0 if nbytes < 1e8 else 3.0
        r: Dict[str, float] = {"bytes": nbytes, "n": n}
        r["gdiv"] = timed(lambda: gdiv.stats(x), budget)
        r["numpy"] = timed(lambda: numpy_stats(x), budget)
        r["handoff"] = per_call(lambda: _arrays.operand(x), 2000, 5)
        st = gdiv.stats(x)
        s_np, t_np = numpy_stats(x)
        ok = abs(st.sum_sq_norms - s_np) <= 1e-9 * s_np and abs(st.sq_norm_of_sum - t_np) <= 1e-6 * t_np
        if torch is not None:
            # torch's intra-op threads can help or (on a busy machine) hurt:
            # report its better time of 1 thread and its default.
            tx = torch.from_numpy(x)
            best = None
            for threads in sorted({1, TORCH_THREADS}):
                torch.set_num_threads(threads)
                t = timed(lambda: torch_stats(tx), budget)
                if best is None or t < best[0]:
                    best = (t, threads)
            torch.set_num_threads(TORCH_THREADS)
            r["torch"], r["torch_threads"] = best
        if pa is not None:
            arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
            r["arrow"] = timed(lambda: gdiv.stats(arr), budget)
            del arr
        results.append(r)

        def cell(key: str) -> str:
            if key not in r:
                return f"{'-':>9} {'-':>6}"
            return f"{fmt_time(r[key]):>9} {nbytes / r[key] / 1e9:>6.2f}"

        arrow = fmt_time(r["arrow"]) if "arrow" in r else "-"
        tth = f"{int(r['torch_threads'])}t" if "torch_threads" in r else ""
        print(
            f"{fmt_size(nbytes):>8} {n:>9} | {cell('gdiv')} | {cell('numpy')} | {cell('torch')}{tth:>3} | "
            f"{arrow:>10} | {fmt_time(r['handoff']):>9} | {'ok' if ok else 'DIFF':>5}",
            flush=True,
        )
        del x
    return results


def plot(results: List[Dict[str, float]], path: str, dtype: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    b = np.array([r["bytes"] for r in results])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in (
        ("gdiv", "gdiv.stats (numpy, zero copy)"),
        ("arrow", "gdiv.stats (Arrow C Data)"),
        ("numpy", "NumPy, float64 accum."),
        ("torch", "torch, float64 accum."),
    ):
        if all(key in r for r in results):
            t = np.array([r[key] for r in results])
            ax1.loglog(b, t, marker="o", label=label)
            ax2.semilogx(b, b / t / 1e9, marker="o", label=label)
    ax1.loglog(b, [r["handoff"] for r in results], "k--", label="gdiv hand-off only (validation + address)")
    ax1.set_xlabel("input size (bytes)")
    ax1.set_ylabel("seconds per call")
    ax1.set_title(f"Time per call ({dtype}, d = 256)")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("input size (bytes)")
    ax2.set_ylabel("GB/s")
    ax2.set_title("Throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-bytes", type=float, default=1e9, help="largest input (default 1e9 = 1 GB)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--png", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "python_bench.png"))
    args = ap.parse_args()
    print(f"gdiv {gdiv.__version__}, Python {platform.python_version()}, numpy {np.__version__}", end="")
    if torch is not None:
        print(f", torch {torch.__version__} ({torch.get_num_threads()} threads)", end="")
    if pa is not None:
        print(f", pyarrow {pa.__version__}", end="")
    print(f"; {os.cpu_count()} CPUs, {platform.machine()}")
    overhead_table()
    results = sweep(args.max_bytes, args.dtype)
    plot(results, args.png, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
