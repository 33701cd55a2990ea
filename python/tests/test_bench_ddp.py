"""The DDP benchmark (bench/bench_ddp.py) runs end to end on 2 gloo ranks:
its smoke mode writes the table, the JSON and the PNG, and gdiv issues
exactly one collective per measured step in both modes (counted, not
timed; timings are never asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ddp_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ddp.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "ddp.json").read_text())
    assert len(rows) == 1 and rows[0]["world"] == 2
    for v in ("norms", "two_scale"):
        cell = rows[0][v]
        assert cell["collectives"] == 1
        assert all(math.isfinite(cell[k]) and cell[k] > 0 for k in ("median", "q1", "q3"))
    assert "collectives/step" in proc.stdout
    assert (tmp_path / "ddp.png").stat().st_size > 5_000
