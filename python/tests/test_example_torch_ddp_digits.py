"""Smoke test of the distributed main job: torchrun --nproc_per_node 2
examples/torch_ddp_digits.py --quick runs on the CPU (gloo), prints the
table (one row per method) and writes the PNG; the ranks' decisions are
compared by the example itself (it fails if they differ)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["fixed 16", "adaptive norms", "adaptive two_scale"]


def test_torch_ddp_digits_quick(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "examples" / "torch_ddp_digits.py"), "--quick", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method"))
    rows = [line for line in lines[head + 2 : head + 2 + len(METHODS)]]
    for name, row in zip(METHODS, rows):
        assert row.startswith(name), row
        cells = row[len(name) :].split()
        assert len(cells) == 8 and all(float(c) >= 0 for c in cells), row
    assert "every rank made the same decisions" in proc.stdout
    assert (tmp_path / "torch_ddp_digits.png").stat().st_size > 10_000


def test_without_torchrun_it_says_how_to_launch(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "torch_ddp_digits.py"), "--quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "torchrun" in proc.stderr
