"""Interleaved timing shared by the step benchmarks (bench_step.py,
bench_ddp.py): rounds of one step per variant, the order rotating each
round, grouped in blocks whose ratio is each variant's summed step time over
the baseline's (the first variant) in the same rounds."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

BLOCK = 10  # rounds per timed block


def interleaved_blocks(
    step: Callable[[str], float], order: Sequence[str], go_on: Callable[[int], bool]
) -> Tuple[Dict[str, List[float]], int, List[float]]:
    """Run rounds of ``step(v)`` (seconds) for every variant v of ``order``
    until ``go_on(rounds)``, asked after each block, says stop. Returns
    ({variant: its block ratios over order[0]}, rounds, the baseline's step times)."""
    base, rest = order[0], list(order[1:])
    sums = {v: 0.0 for v in order}
    ratios: Dict[str, List[float]] = {v: [] for v in rest}
    base_t: List[float] = []
    r = 0
    while True:
        k = r % len(order)
        for v in list(order[k:]) + list(order[:k]):
            t = step(v)
            sums[v] += t
            if v == base:
                base_t.append(t)
        r += 1
        if r % BLOCK == 0:
            for v in rest:
                ratios[v].append(sums[v] / sums[base])
            sums = {v: 0.0 for v in order}
            if not go_on(r):
                return ratios, r, base_t


def until(budget_s: float, min_rounds: int, max_rounds: int = 1 << 30) -> Callable[[int], bool]:
    """A go_on for interleaved_blocks: at least min_rounds, then until
    budget_s seconds have passed (from this call), at most max_rounds."""
    start = time.perf_counter()
    return lambda r: r < max_rounds and (r < min_rounds or time.perf_counter() - start < budget_s)


def spread(ratios: List[float]) -> Dict[str, float]:
    """The median and quartiles of the block ratios."""
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2]}
