"""The policy validation harness (bench/validate_policy.py) runs end to end:
its smoke mode trains every method on one pair, prints the table with a
verdict for each adaptive method, and writes the JSON and the PNG. The
verdicts themselves are results, not asserted."""

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


def test_validate_policy_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "validate_policy.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "validate_policy.json").read_text())
    (pair,) = res.values()
    rows = pair["rows"]
    assert set(rows) == {
        "fixed 16",
        "fixed 512",
        "fixed 512, lr×32",
        "adaptive",
        "adaptive, adascale",
        "adaptive+Langevin",
        "adaptive, burn-in 10",
        "adaptive, max lr 4×",
        "adaptive, lr warm-up 5",
        "adaptive, lr warm-up 20",
        "adaptive, warm-up 20, max lr 8×",
    }
    for r in rows.values():
        assert r["steps"] > 0 and math.isfinite(r["sim_s"]) and r["sim_s"] > 0
    assert rows["fixed 16"]["mean_batch"] == 16
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith("adaptive")]
    assert len(verdicts) == 8 and all(any(v in line for v in ("wins", "ties", "loses")) for line in verdicts)
    assert (tmp_path / "validate_policy.png").stat().st_size > 10_000
