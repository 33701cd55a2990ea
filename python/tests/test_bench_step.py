"""The user-step benchmark (bench/bench_step.py) runs end to end: its smoke
mode times the README's monitored step against the plain step in worker
processes and writes the table, the JSON and the PNG. Nothing about the
timings is asserted (targets live in the benchmark), only that every number
it reports is a real, finite measurement."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_bench_step_smoke(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_step.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| README MLP 64-64-10 (tanh) | 16 | sgd |" in proc.stdout
    assert "[1/1] readme-mlp B=16 sgd" in proc.stderr  # progress
    data = json.loads((tmp_path / "step.json").read_text())
    (row,) = data["rows"]
    for alloc in ("default", "tuned"):
        r = row[alloc]
        assert "error" not in r, r
        assert r["rounds"] >= 10 and r["plain_ms"] > 0
        for v in ("gdiv1", "gdiv10", "plain2"):
            q = r[v]
            assert all(math.isfinite(q[k]) and q[k] > 0 for k in ("median", "q1", "q3"))
            assert q["q1"] <= q["median"] <= q["q3"]
        assert "error" not in data["epoch"][alloc] and data["epoch"][alloc]["median"] > 0
    assert (tmp_path / "step.png").stat().st_size > 1000
