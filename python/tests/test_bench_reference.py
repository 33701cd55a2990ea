"""The benchmark's hand-fused reference (bench/bench_torch.py, hand_fused) is
quoted as the floor of gdiv norms' approach, so it must compute the same
thing: per-example squared norms equal to the per-example loop, and the
gradients it leaves in ``.grad`` equal to plain autograd's, on the
benchmark's two models (float64; float32 within rounding)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from test_torch_norms import assert_norms, loop_sq_norms  # noqa: E402

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_torch.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_torch_under_test", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ce_per_example(out, y):
    return F.cross_entropy(out, y, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_hand_fused_matches_the_loop_and_autograd(name: str, dtype: torch.dtype) -> None:
    bt = _bench()
    base = bt.build_model(name).to(dtype)
    x, y = bt.make_data(6)
    x = x.to(dtype)
    plain = copy.deepcopy(base)
    fused = copy.deepcopy(base)
    parts = bt.hand_fused(fused)

    F.cross_entropy(fused(x), y).backward()
    got = torch.stack(parts).sum(0) * 6.0**2  # mean loss: per-example gradients are 1/B of ∇ℓ_i
    F.cross_entropy(plain(x), y).backward()
    rtol = 1e-10 if dtype is torch.float64 else 1e-5
    for (n, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=rtol * float(p.grad.abs().max()), msg=n)

    want = loop_sq_norms(copy.deepcopy(base), x, y, _ce_per_example)
    assert_norms(got, want, dtype)
