"""The measurement cadence (measure_every): unmeasured steps do no capture
work, and a run with a cadence decides exactly what a bare controller fed the
same measured steps by hand decides; state_dict/resume across gaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch import nn

import gdiv
from gdiv.torch import DiversityMonitor, PerExampleNorms

torch.set_num_threads(1)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (b,), generator=g)


def loop_sums(model, x, y):
    """(Σ‖∇ℓ_i‖², ‖Σ∇ℓ_i‖²) by a per-example autograd loop."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    G = torch.stack(rows)
    return float((G * G).sum()), float((G.sum(0) ** 2).sum())


def test_unmeasured_steps_do_no_capture_work(monkeypatch):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = DiversityMonitor(model, optimizer=opt, measure_every=3)
    calls = []
    for name in ("_rule_norms", "_process", "_grad_hook"):
        orig = getattr(PerExampleNorms, name)
        monkeypatch.setattr(PerExampleNorms, name, lambda self, *a, _o=orig, _n=name: (calls.append(_n), _o(self, *a))[1])
    measured = []
    for k in range(7):
        x, y = batch(8, k)
        before = len(calls)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if not mon._norms.enabled:
            assert mon._norms._records == [] and not mon._norms._grad_params  # nothing captured
        rec = mon.step()
        measured.append(rec["skipped"] != "unmeasured")
        assert (len(calls) > before) == measured[-1]
        opt.step()
    assert measured == [True, False, False, True, False, False, True]
    assert [r["step"] for r in mon.history] == [1, 4, 7] and mon.steps == 7 and mon.examples == 56


@pytest.mark.parametrize("cadence", [3, "auto"])
def test_cadence_decides_like_a_controller_fed_by_hand(cadence):
    model = mlp()
    twin = mlp()
    pol = gdiv.BatchSizePolicy(max_batch=64, multiple_of=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt2 = torch.optim.SGD(twin.parameters(), lr=0.05)
    mon = DiversityMonitor(model, optimizer=opt, policy=pol, measure_every=cadence, max_measure_every=4, estimator_beta=0.5, seed=1)
    ctl = gdiv.Controller(policy=pol, loss_reduction="mean", lr_rule="linear", measure_every=cadence, max_measure_every=4, estimator_beta=0.5, seed=1)
    for k in range(24):
        b = mon.batch_size
        assert b == ctl.batch_size
        x, y = batch(b, k)
        measure = ctl.measure_next
        assert measure == mon._norms.enabled
        if measure:  # the oracle's sums, of ∇ℓ_i (a sum convention), from the twin model
            s, t = loop_sums(twin, x, y)
            d = ctl.observe(b, s, t)
        else:
            d = ctl.observe(b, 0.0, 0.0, unmeasured=True)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        rec = mon.step()
        assert rec["next_batch"] == d.next_batch and rec["skipped"] == d.skipped
        assert rec["batch_bound"] == pytest.approx(d.smoothed.batch_bound, rel=1e-9)
        opt.step()
        for g in opt2.param_groups:  # the twin follows the same lr and weights
            g["lr"] = opt.param_groups[0]["lr"]
        with torch.no_grad():
            for p, q in zip(twin.parameters(), model.parameters()):
                p.copy_(q)
    if cadence == 3:
        assert len(mon.history) == 8


def test_resume_across_gaps_is_identical():
    def run(model, opt, mon, k0, k1):
        out = []
        for k in range(k0, k1):
            x, y = batch(mon.batch_size, k)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            out.append(mon.step()["next_batch"])
            opt.step()
        return out

    def build():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return model, opt, DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(max_batch=64), measure_every="auto", seed=2)

    m, o, mon = build()
    full = run(m, o, mon, 0, 30)
    m, o, mon = build()
    first = run(m, o, mon, 0, 13)
    saved = json.loads(json.dumps({"m": m.state_dict() and None, "mon": mon.state_dict()}, allow_nan=True))
    weights = [p.detach().clone() for p in m.parameters()]
    m2, o2, mon2 = build()
    with torch.no_grad():
        for p, w in zip(m2.parameters(), weights):
            p.copy_(w)
    o2.load_state_dict(o.state_dict())
    mon2.load_state_dict(saved["mon"])
    assert first + run(m2, o2, mon2, 13, 30) == full
    assert [r["step"] for r in mon2.history] == [r["step"] for r in mon.history] + [r["step"] for r in mon2.history[len(mon.history) :]]


def test_bad_cadences_are_named():
    with pytest.raises(gdiv.ParamError, match="measure_every"):
        DiversityMonitor(mlp(), measure_every=0)
    with pytest.raises(gdiv.ParamError, match="measure_every"):
        DiversityMonitor(mlp(), measure_every=2.5)
    with pytest.raises(ValueError, match="norms mode"):
        DiversityMonitor(mlp(), mode="full", loss_fn=F.cross_entropy, measure_every=4)
    with pytest.raises(gdiv.ParamError, match="max_measure_every"):
        gdiv.Controller(measure_every="auto", max_measure_every=0)


def test_accumulation_on_an_unmeasured_step_counts_every_micro_batch():
    model = mlp()
    mon = DiversityMonitor(model, measure_every=2)
    x, y = batch(8, 0)
    F.cross_entropy(model(x), y).backward()
    mon.step()
    assert not mon._norms.enabled
    for _ in range(2):
        (F.cross_entropy(model(x), y) / 2).backward()
    rec = mon.step()
    assert rec["skipped"] == "unmeasured" and rec["batch"] == 16 and mon.examples == 24


def test_gaps_leave_batch_and_lr_alone_and_np_seeds_work():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(max_batch=64), measure_every=4, seed=np.uint64(5).item())
    sizes = []
    for k in range(9):
        sizes.append(mon.batch_size)
        x, y = batch(mon.batch_size, k)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        mon.step()
    # the batch changes only after measured steps 1, 5, 9 (so at steps 2, 6)
    changes = [i for i in range(1, 9) if sizes[i] != sizes[i - 1]]
    assert set(changes) <= {1, 5}
