"""Smoke test of the main job, examples/torch_digits.py --quick: it runs,
prints the table (one row per method, the documented columns) and writes
the PNG (the checks: _example_digits.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from _example_digits import check_digits_example  # noqa: E402


def test_torch_digits_quick(tmp_path):
    check_digits_example("torch_digits", ["fixed 16", "fixed 512", "fixed 512, lr×32", "adaptive", "adaptive+Langevin"], tmp_path)
