"""What the digits examples share (torch_digits.py, keras_digits.py): the
data split, the progress line, the run record and the results table."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "testdata" / "digits.csv"


def load_digits(seed: int, test_fraction: float = 0.2):
    """testdata/digits.csv (1797 8×8 images, 10 classes) split (seeded) and
    standardized with the training split's statistics: ((X, y), (X, y)),
    float32 and int64 NumPy arrays."""
    raw = np.loadtxt(DATA, delimiter=",", skiprows=1)
    X, y = raw[:, :64], raw[:, 64].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    mu, sd = X[train].mean(0), X[train].std(0)
    sd[sd == 0] = 1.0  # constant border pixels
    Z = ((X - mu) / sd).astype(np.float32)
    return (Z[train], y[train]), (Z[test], y[test])


class Progress:
    """A one-line progress printer (no dependency): rewrites the line on a
    terminal, prints a line per quarter otherwise."""

    def __init__(self, label: str, total: int, stream=sys.stderr) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.tty = stream.isatty()
        self.t0 = self.last = time.perf_counter()
        self.quarter = 0

    def update(self, done: int, **info: Any) -> None:
        now = time.perf_counter()
        frac = min(1.0, done / self.total)
        extra = "  ".join(f"{k} {v}" for k, v in info.items())
        line = f"{self.label:<14} [{'#' * int(24 * frac):<24}] {100 * frac:5.1f}%  {extra}"
        if self.tty and (now - self.last > 0.1 or frac >= 1):
            self.stream.write("\r" + line[:110].ljust(110))
            self.stream.flush()
            self.last = now
        elif not self.tty and int(4 * frac) > self.quarter:
            self.quarter = int(4 * frac)
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Run:
    name: str
    steps: int = 0
    examples: int = 0
    batches: List[int] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)  # for gdiv.plot.history
    result: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def table(results: Dict[str, List[Run]]) -> str:
    """One row per method: means over seeds (± the standard deviation where
    seeds differ visibly)."""

    def cell(vals: List[float], fmt: str) -> str:
        m = float(np.mean(vals))
        if len(vals) < 2:
            return format(m, fmt)
        return f"{format(m, fmt)}±{format(float(np.std(vals)), fmt)}"

    w = 15 if any(len(v) > 1 for v in results.values()) else 8
    head = (
        f"{'method':<18} {'steps':>6} {'examples':>8} {'train loss':>{w}} {'train acc':>{w}} "
        f"{'test loss':>{w}} {'test acc':>{w}} {'mean batch':>10} {'wall s':>6}"
    )
    rows = [head, "-" * len(head)]
    for name, runs in results.items():
        r = lambda k: [x.result[k] for x in runs]  # noqa: E731
        rows.append(
            f"{name:<18} {np.mean([x.steps for x in runs]):>6.0f} {np.mean([x.examples for x in runs]):>8.0f} "
            f"{cell(r('train_loss'), '.4f'):>{w}} {cell(r('train_acc'), '.4f'):>{w}} "
            f"{cell(r('test_loss'), '.4f'):>{w}} {cell(r('test_acc'), '.4f'):>{w}} "
            f"{np.mean([x.examples / x.steps for x in runs]):>10.1f} {np.mean([x.seconds for x in runs]):>6.2f}"
        )
    return "\n".join(rows)


def report(results: Dict[str, List[Run]], note: str, png: Path, title: str) -> Path:
    """Print the table and the note, write the history PNG (the first seed's
    runs) and say where; returns the PNG's path."""
    import gdiv.plot

    print()
    print(table(results))
    print("\n" + note)
    path = gdiv.plot.history({name: runs[0].history for name, runs in results.items()}, png, title=title)
    print(f"wrote {path}")
    return path
