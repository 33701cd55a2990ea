"""mode="two_scale": McCandlish's unbiased pair from each backward pass's own
gradient and the accumulated one — no per-example gradients, so any model
(train-mode BatchNorm included). Checked against gradients computed by
autograd, exact enumeration of every draw (unbiasedness), and, under DDP,
the one-process run with the ranks' shares as micro-batches."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402
from gdiv.torch import CaptureError, DiversityMonitor  # noqa: E402

torch.set_num_threads(1)


def mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)]
    if bn:
        layers.insert(1, nn.BatchNorm1d(5))
    return nn.Sequential(*layers).double()


def data(b: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (b,), generator=g)


def sq(grads) -> float:
    return sum(float(g.square().sum()) for g in grads)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("k", [2, 4])
def test_the_pair_from_autograd(reduction, k):
    b = 3
    x, y = data(k * b)
    model = mlp()
    mon = DiversityMonitor(model, mode="two_scale", loss_reduction=reduction, estimator_beta=0.0)
    for m in range(k):
        loss = F.cross_entropy(model(x[m * b : (m + 1) * b]), y[m * b : (m + 1) * b], reduction=reduction)
        (loss / k if reduction == "mean" else loss).backward()
    rec = mon.step()
    params = list(model.parameters())
    # the oracle: each micro-batch's mean gradient, and the whole batch's
    small = sum(sq(torch.autograd.grad(F.cross_entropy(model(x[m * b : (m + 1) * b]), y[m * b : (m + 1) * b]), params)) for m in range(k)) / k
    big = sq(torch.autograd.grad(F.cross_entropy(model(x), y), params))
    want = gdiv.estimate_two_scale(b, small, k * b, big)
    assert rec["batch"] == k * b
    assert rec["m2"] == pytest.approx(want.m2, rel=1e-10)
    assert rec["g"] == pytest.approx(want.g, rel=1e-10, abs=1e-14)


def enumerate_two_scale(n: int, draws, seed: int, **monitor_kw):
    """A linear model's n examples; every draw of 4 as 2 micro-batches of 2
    through the monitor. Returns (mean Ĝ, mean M̂², the population's ‖G‖²
    and M² = mean ‖g_i‖², the number of draws)."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 1).double()
    xs = torch.randn(n, 3, dtype=torch.float64)
    ys = torch.randn(n, 1, dtype=torch.float64)
    params = list(model.parameters())
    per = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.mse_loss(model(xs[i : i + 1]), ys[i : i + 1]), params)]) for i in range(n)]
    G = torch.stack(per).mean(0)
    mon = DiversityMonitor(model, mode="two_scale", estimator_beta=0.0, **monitor_kw)
    assert mon.sampling == ("shuffle" if "dataset_size" in monitor_kw else "replacement")
    gs, m2s = [], []
    for draw in draws:
        model.zero_grad(set_to_none=True)
        idx = list(draw)
        for half in (idx[:2], idx[2:]):
            (F.mse_loss(model(xs[half]), ys[half]) / 2).backward()
        rec = mon.step()
        gs.append(rec["g"])
        m2s.append(rec["m2"])
    m2 = float(torch.stack([p.square().sum() for p in per]).mean())
    return sum(gs) / len(gs), sum(m2s) / len(m2s), float(G.square().sum()), m2, len(gs)


def test_unbiased_by_exact_enumeration():
    """Every ordered draw of 4 examples (with replacement) from 3, as 2
    micro-batches of 2: the mean of the estimates is ‖G‖² and trΣ + ‖G‖² of
    the 3 examples' gradients, exactly."""
    g, m2, want_g, want_m2, draws = enumerate_two_scale(3, itertools.product(range(3), repeat=4), seed=3)
    assert draws == 81
    assert g == pytest.approx(want_g, rel=1e-10)
    assert m2 == pytest.approx(want_m2, rel=1e-10)


def test_unbiased_without_replacement_by_exact_enumeration():
    """Shuffled epochs (dataset_size given): every ordered draw of 4 distinct
    examples out of 5, as 2 micro-batches of 2: the finite-population pair
    is exactly unbiased (the i.i.d. pair would underestimate G)."""
    g, m2, want_g, want_m2, draws = enumerate_two_scale(5, itertools.permutations(range(5), 4), seed=4, dataset_size=5)
    assert draws == 120
    assert g == pytest.approx(want_g, rel=1e-10)
    assert m2 == pytest.approx(want_m2, rel=1e-10)


def test_train_mode_batchnorm_is_monitored():
    model = mlp(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = DiversityMonitor(model, mode="two_scale", optimizer=opt, policy=gdiv.BatchSizePolicy(min_batch=8, max_batch=64, multiple_of=4))
    for step in range(6):
        x, y = data(mon.batch_size, seed=step)
        opt.zero_grad(set_to_none=True)
        h = x.shape[0] // 2
        for sl in (slice(0, h), slice(h, None)):
            (F.cross_entropy(model(x[sl]), y[sl]) / 2).backward()
        rec = mon.step()
        opt.step()
        assert rec["skipped"] is None and rec["m2"] == rec["m2"]  # finite, not NaN
    # norms mode refuses the same model, naming BatchNorm
    m2 = mlp(bn=True)
    mon2 = DiversityMonitor(m2)
    with pytest.raises(Exception, match="BatchNorm"):
        F.cross_entropy(m2(x), y).backward()
        mon2.step()


def test_one_local_gradient_is_refused_clearly():
    model = mlp()
    mon = DiversityMonitor(model, mode="two_scale")
    F.cross_entropy(model(data(8)[0]), data(8)[1]).backward()
    with pytest.raises(CaptureError, match="at least 2 local gradients"):
        mon.step()


def test_unequal_micro_batches_and_mechanisms_are_refused():
    model = mlp()
    mon = DiversityMonitor(model, mode="two_scale")
    x, y = data(7)
    (F.cross_entropy(model(x[:4]), y[:4]) / 2).backward()
    (F.cross_entropy(model(x[4:]), y[4:]) / 2).backward()
    with pytest.raises(CaptureError, match=r"\[4, 3\] examples"):
        mon.step()
    with pytest.raises(ValueError, match="no mechanism"):
        DiversityMonitor(mlp(), mode="two_scale", mechanism=gdiv.Langevin(0.1))


def test_two_scale_agrees_with_norms_mode_within_its_variance():
    """The same 40 steps (fixed weights) measured both ways: the two-scale
    M̂² and Ĝ are unbiased estimates of what the per-example norms estimate."""
    model = mlp()
    two = DiversityMonitor(model, mode="two_scale", estimator_beta=0.0)
    ref = mlp()
    norms = DiversityMonitor(ref, estimator_beta=0.0)
    a, c = [], []
    for step in range(40):
        x, y = data(16, seed=100 + step)
        model.zero_grad(set_to_none=True)
        for q in range(4):
            (F.cross_entropy(model(x[4 * q : 4 * q + 4]), y[4 * q : 4 * q + 4]) / 4).backward()
        a.append(two.step()["m2"])
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x), y).backward()
        c.append(norms.step()["m2"])
    ta, tc = torch.tensor(a), torch.tensor(c)
    se = (ta.var() / len(a) + tc.var() / len(c)).sqrt()
    assert abs(float(ta.mean() - tc.mean())) < 4 * float(se)


def test_ddp_two_scale_equals_one_process_with_the_shares_as_micro_batches(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import _ddp_worker
    from test_torch_ddp import identical, ok, spawn

    cfg = {"batch": 8, "adaptive": True, "steps": 8, "multiple_of": 2, "mode": "two_scale"}
    res = ok(*spawn(2, cfg, tmp_path))
    assert identical(res[0]["records"], res[1]["records"])
    one = _ddp_worker.train(dict(cfg, micro=2), 0, 0)
    for ra, rb in zip(res[0]["records"], one["records"]):
        assert ra["batch"] == rb["batch"] and ra["next_batch"] == rb["next_batch"]
        for key in ("m2", "g", "batch_bound", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-10), key
    for name, w in one["weights"].items():
        torch.testing.assert_close(res[0]["weights"][name], w, rtol=1e-10, atol=1e-12)
    # and a train-mode BatchNorm model under DDP
    bn = tmp_path / "bn"
    bn.mkdir()
    res = ok(*spawn(2, dict(cfg, bn=True), bn))
    assert identical(res[0]["records"], res[1]["records"])
    assert all(r["skipped"] is None for r in res[0]["records"])
