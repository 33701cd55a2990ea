"""The smoke test both digits main jobs share (examples/torch_digits.py,
examples/keras_digits.py): run with --quick, the table (one row per method,
the documented columns, sane numbers, the adaptive run learning like the
small batch in fewer steps) and the PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["method", "steps", "examples", "train loss", "train acc", "test loss", "test acc", "mean batch", "wall s"]


def check_digits_example(name: str, methods: List[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--quick", "--out", str(tmp_path)],
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
    for line in lines[head + 2 : head + 2 + len(methods)]:
        method = next(m for m in sorted(methods, key=len, reverse=True) if line.startswith(m))
        rows[method] = line[len(method) :].split()
    assert list(rows) == methods
    for method, cells in rows.items():
        assert len(cells) == len(COLUMNS) - 1, (method, cells)
        steps, examples = int(cells[0]), int(cells[1])
        train_loss, test_acc, mean_batch = float(cells[2]), float(cells[5]), float(cells[6])
        assert steps > 0 and examples >= 6 * 1438 - 1 and 0 < train_loss < 5 and 0 <= test_acc <= 1
        assert mean_batch == pytest.approx(examples / steps, rel=1e-2)
    # The adaptive runs learn like the small batch, in fewer steps.
    assert int(rows["adaptive"][0]) < int(rows["fixed 16"][0])
    assert float(rows["adaptive"][2]) < 2 * float(rows["fixed 16"][2])
    png = tmp_path / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in proc.stdout
