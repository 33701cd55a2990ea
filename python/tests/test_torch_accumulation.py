"""Gradient accumulation: several forward/backward passes (micro-batches)
before one monitor.step() are one batch of all their examples — checked
against the whole batch in one pass and the per-example autograd loop."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402
from gdiv.torch import DiversityMonitor  # noqa: E402

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def data(b: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (b,), generator=g)


def loop_sums(model, x, y):
    """(Σ‖g_i‖², ‖Σ g_i‖²) of ℓ_i = cross-entropy of example i, by autograd one example at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    sum_sq = 0.0
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        sum_sq += sum(float(g.square().sum()) for g in gs)
        for t, g in zip(total, gs):
            t += g
    return sum_sq, sum(float(t.square().sum()) for t in total)


# unequal micro-batches with a mean loss are refused (test_torch_monitor_step.py)
@pytest.mark.parametrize(
    "reduction, sizes",
    [("mean", (4, 4)), ("mean", (3, 3, 3)), ("sum", (4, 4)), ("sum", (5, 2, 1))],
    ids=["mean-2x4", "mean-3x3", "sum-2x4", "sum-5-2-1"],
)
def test_micro_batches_are_one_batch(reduction, sizes):
    b = sum(sizes)
    x, y = data(b)
    model = mlp()
    mon = DiversityMonitor(model, loss_reduction=reduction, estimator_beta=0.0)
    k = len(sizes)
    model.zero_grad(set_to_none=True)
    start = 0
    for m in sizes:  # the usual recipe: each micro-batch's mean loss divided by k
        xs, ys = x[start : start + m], y[start : start + m]
        loss = F.cross_entropy(model(xs), ys, reduction=reduction)
        (loss / k if reduction == "mean" else loss).backward()
        start += m
    rec = mon.step()
    want_sum_sq, want_sq_sum = loop_sums(model, x, y)
    assert rec["batch"] == b and mon.examples == b
    assert rec["sum_sq_norms"] == pytest.approx(want_sum_sq, rel=1e-10)
    assert rec["sq_norm_of_sum"] == pytest.approx(want_sq_sum, rel=1e-10)
    # and the whole batch in one pass, as the controller sees it
    ref = DiversityMonitor(mlp(), loss_reduction=reduction, estimator_beta=0.0)
    model2 = ref.model
    model2.zero_grad(set_to_none=True)
    F.cross_entropy(model2(x), y, reduction=reduction).backward()
    one = ref.step()
    for key in ("sum_sq_norms", "sq_norm_of_sum", "m2", "g", "batch_bound"):
        assert rec[key] == pytest.approx(one[key], rel=1e-10), key


def test_accumulated_adaptive_run_decides_as_the_whole_batch_run():
    """Ten adaptive steps, each as two micro-batches of B/2 and as one batch
    of B: the same batch sizes, estimates and LRs."""
    pol = gdiv.BatchSizePolicy(min_batch=4, max_batch=32, multiple_of=2, warmup=1)
    runs = []
    for split in (False, True):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = DiversityMonitor(model, optimizer=opt, policy=pol, estimator_beta=0.5, batch_size=8)
        recs = []
        for step in range(10):
            x, y = data(mon.batch_size, seed=step)
            opt.zero_grad(set_to_none=True)
            if split:
                h = x.shape[0] // 2
                for sl in (slice(0, h), slice(h, None)):
                    (F.cross_entropy(model(x[sl]), y[sl]) / 2).backward()
            else:
                F.cross_entropy(model(x), y).backward()
            recs.append(mon.step())
            opt.step()
        runs.append(recs)
    a, b = runs
    assert [r["batch"] for r in a] == [r["batch"] for r in b]
    assert len({r["batch"] for r in a}) > 1, "the run should change its batch size"
    for ra, rb in zip(a, b):
        for key in ("batch_bound", "lr", "m2", "g"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-9), key


def test_standalone_norms_still_describe_the_last_pass():
    """PerExampleNorms outside a monitor keeps its contract: the last batch."""
    from gdiv.torch import PerExampleNorms

    model = mlp()
    pen = PerExampleNorms(model, loss_reduction="sum")
    for k in (3, 5):
        x, y = data(k, seed=k)
        F.cross_entropy(model(x), y, reduction="sum").backward()
    assert pen.sq_norms().shape == (5,)


def test_micro_batches_under_a_memory_cap_are_one_batch():
    """micro_batches(batch, 4): 10 examples as 4+3+3, each mean loss weighted
    by its size — the norms and .grad of one pass over the 10."""
    from gdiv.torch import micro_batches

    x, y = data(10)
    model = mlp()
    mon = DiversityMonitor(model, estimator_beta=0.0)
    sizes = []
    for (xm, ym), w in micro_batches((x, y), 4, model=model, monitor=mon):
        sizes.append(len(xm))
        (F.cross_entropy(model(xm), ym) * w).backward()
    assert sizes == [4, 3, 3]
    rec = mon.step()
    want_sum_sq, want_sq_sum = loop_sums(model, x, y)
    assert rec["batch"] == 10
    assert rec["sum_sq_norms"] == pytest.approx(want_sum_sq, rel=1e-10)
    assert rec["sq_norm_of_sum"] == pytest.approx(want_sq_sum, rel=1e-10)
    # without the monitor's knowledge the same unequal split is refused
    for xm, ym in ((x[:4], y[:4]), (x[4:], y[4:])):
        (F.cross_entropy(model(xm), ym) / 2).backward()
    with pytest.raises(Exception, match="micro_batches"):
        mon.step()
    with pytest.raises(ValueError, match="max_size"):
        next(micro_batches(x, 0))
    with pytest.raises(ValueError, match="differ"):
        next(micro_batches((x, y[:3]), 4))
