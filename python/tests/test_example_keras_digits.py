"""Smoke test of the main job, examples/keras_digits.py --quick (the Keras main job): it runs,
prints the table (one row per method, the documented columns) and writes
the PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["fixed 16", "fixed 512", "fixed 512, lr×32", "adaptive", "adaptive+Langevin"]
COLUMNS = ["method", "steps", "examples", "train loss", "train acc", "test loss", "test acc", "mean batch", "wall s"]


def test_keras_digits_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "keras_digits.py"), "--quick", "--out", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method"))
    for col in COLUMNS:
        assert col in lines[head]
    rows = {}
    for line in lines[head + 2 : head + 2 + len(METHODS)]:
        name = next(m for m in sorted(METHODS, key=len, reverse=True) if line.startswith(m))
        rows[name] = line[len(name) :].split()
    assert list(rows) == METHODS
    for name, cells in rows.items():
        assert len(cells) == len(COLUMNS) - 1, (name, cells)
        steps, examples = int(cells[0]), int(cells[1])
        train_loss, test_acc, mean_batch = float(cells[2]), float(cells[5]), float(cells[6])
        assert steps > 0 and examples >= 6 * 1438 - 1 and 0 < train_loss < 5 and 0 <= test_acc <= 1
        assert mean_batch == pytest.approx(examples / steps, rel=1e-2)
    # The adaptive runs learn like the small batch, in fewer steps.
    assert int(rows["adaptive"][0]) < int(rows["fixed 16"][0])
    assert float(rows["adaptive"][2]) < 2 * float(rows["fixed 16"][2])
    png = tmp_path / "keras_digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in proc.stdout
