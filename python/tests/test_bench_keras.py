"""The Keras step benchmark (bench/bench_keras.py) runs end to end: its quick
mode times plain Keras, gdiv.keras and the vectorized_map peer in one process
and writes the table, the JSON and the PNG. Nothing about the timings is
asserted (targets live in the benchmark), only that every row is there, every
ratio is a real, finite measurement, and the subprocess used this test's gdiv."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("matplotlib")

import gdiv  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_bench_keras_quick(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_keras.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for desc in ("| MLP 64-512-512-10 (tanh, relu) | 64 |", "| CNN 16×16×3, 2×conv3×3 + dense | 64 |"):
        assert desc in proc.stdout, proc.stdout
    assert "[1/2] mlp B=64" in proc.stderr and "[2/2] cnn B=64" in proc.stderr  # progress
    assert "TF Privacy" in proc.stdout
    assert f"gdiv from {os.path.dirname(gdiv.__file__)}" in proc.stdout  # the gdiv this test imported
    data = json.loads((tmp_path / "keras.json").read_text())
    assert [(r["model"], r["batch"]) for r in data["rows"]] == [("mlp", 64), ("cnn", 64)]
    for r in data["rows"]:
        assert r["plain_ms"] > 0 and r["rounds"] >= 10
        for v in ("gdiv", "full", "vmap", "plain2"):
            q = r[v]
            assert all(math.isfinite(q[k]) and q[k] > 0 for k in ("median", "q1", "q3", "min", "max"))
            assert q["min"] <= q["q1"] <= q["median"] <= q["q3"] <= q["max"]
        assert r["norms_rel_diff"] < 1e-4  # gdiv's Σ‖g_i‖² and the peer's agree (float32)
    assert (tmp_path / "bench_keras.png").stat().st_size > 5_000
