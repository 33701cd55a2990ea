"""gdiv.torch.DiversityMonitor: hooks, scaling, AMP, degenerate steps,
mechanisms, the LR rule, logging, checkpoints, plots.

References are obviously correct and slow: a per-example autograd loop for
the sums Σ‖g_i‖² and ‖Σ g_i‖², NumPy for the estimates (conftest's oracle),
and the policy's own ``scale_lr`` for the learning rate. The agreement with
Go's reference trainer is in test_torch_ground_truth.py.

No GPU is available to this test suite: the device path is checked by (a)
running the device reductions on the ``meta`` device (they must stay there,
shape-only) and (b) spying on the Go bridge during a norms-mode step: only
the scalar exports may be called, never one that takes a buffer address.

Tolerances: float64 sums and estimates rtol 1e-10; Monte Carlo means within
4 standard errors.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from conftest import oracle_estimate

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402
import gdiv._bridge as bridge  # noqa: E402
import gdiv.plot  # noqa: E402
from gdiv.controller import step_seed as _step_seed  # noqa: E402
from gdiv.torch import (  # noqa: E402
    AdaptiveBatchSampler,
    CaptureError,
    DiversityMonitor,
    UnsupportedModuleError,
    per_example_grads,
)
from gdiv.torch._reduce import device_sums as _device_sums  # noqa: E402

torch.set_num_threads(1)

RTOL = 1e-10
REDUCTIONS = ["mean", "sum"]


def mlp(seed: int = 0, d: int = 6, h: int = 5, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k)).double()


def batch(b: int = 8, d: int = 6, k: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(0, k, (b,), generator=g)


def ce(out, y, reduction="mean"):
    return F.cross_entropy(out, y, reduction=reduction)


def loop_sums(model: nn.Module, x, y):
    """Σ‖∇ℓ_i‖² and ‖Σ ∇ℓ_i‖² by a per-example autograd loop, plus the rows."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        ce(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    G = torch.stack(rows).numpy()
    return float((G * G).sum()), float((G.sum(0) ** 2).sum()), G


def backward(model, x, y, reduction):
    model.zero_grad(set_to_none=True)
    loss = ce(model(x), y, reduction)
    loss.backward()
    return loss


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) + sum(
        len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters()
    )


# ------------------------------------------------------------ the sums ---


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_step_sums_and_estimate_match_per_example_loop(reduction):
    model = mlp()
    x, y = batch()
    want_s, want_t, G = loop_sums(model, x, y)
    mon = DiversityMonitor(model, loss_reduction=reduction, estimator_beta=0.0)
    backward(model, x, y, reduction)
    rec = mon.step()
    assert rec["sum_sq_norms"] == pytest.approx(want_s, rel=RTOL)
    assert rec["sq_norm_of_sum"] == pytest.approx(want_t, rel=RTOL)
    want = oracle_estimate(G)
    for key in ("m2", "g", "batch_bound"):
        assert rec[key] == pytest.approx(want[key], rel=1e-9), key
    assert rec["batch"] == 8 and rec["step"] == 1 and rec["examples"] == 8 and rec["skipped"] is None
    assert rec["diversity"] is None  # no dataset_size
    assert set(rec) == set(gdiv.torch.RECORD_FIELDS)


def test_module_without_rule_uses_fallback():
    class Scale(nn.Module):  # no registered rule: torch.func fallback
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(0.5, 1.5, 6, dtype=torch.float64))

        def forward(self, x):
            return x * self.w

    torch.manual_seed(0)
    model = nn.Sequential(Scale(), nn.Linear(6, 3).double())
    x, y = batch()
    want_s, want_t, _ = loop_sums(model, x, y)
    mon = DiversityMonitor(model)
    assert mon._norms.units["0"] == "fallback"
    backward(model, x, y, "mean")
    rec = mon.step()
    assert rec["sum_sq_norms"] == pytest.approx(want_s, rel=RTOL)
    assert rec["sq_norm_of_sum"] == pytest.approx(want_t, rel=RTOL)


def test_batch_norm_refusal_surfaces():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    x, y = batch()
    mon = DiversityMonitor(model)  # noqa: F841  (kept alive: dropping it removes the hooks)
    with pytest.raises(UnsupportedModuleError, match="BatchNorm"):
        model(x)
    full = DiversityMonitor(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double(), mode="full", loss_fn=ce)
    with pytest.raises(UnsupportedModuleError, match="BatchNorm"):
        full.full_backward(x, y)


# ---------------------------------------------------------------- hooks ---


def test_hooks_owned_idempotent_removable_and_context_manager():
    model = mlp()
    base = hook_count(model)
    mon = DiversityMonitor(model)
    attached = hook_count(model)
    assert attached > base and mon.attached
    mon.attach()
    assert hook_count(model) == attached  # idempotent
    mon.remove()
    assert hook_count(model) == base and not mon.attached
    mon.remove()  # twice is fine
    with DiversityMonitor(model, attach=False) as m2:
        assert hook_count(model) == attached and m2.attached
    assert hook_count(model) == base


def test_conv_fusion_follows_the_monitor():
    """Norms mode fuses convolutions while attached (fuse_conv=True, the
    default), not with fuse_conv=False; remove() restores the class; the
    step's statistics match either way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16, 3)).double()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    results = []
    for fuse in (True, False):
        mon = DiversityMonitor(model, fuse_conv=fuse)
        assert (type(model[0]) is nn.Conv2d) is not fuse and isinstance(model[0], nn.Conv2d)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        results.append(mon.step())
        mon.remove()
        assert type(model[0]) is nn.Conv2d
    for k in ("m2", "g"):
        assert results[0][k] == pytest.approx(results[1][k], rel=1e-12)


def test_eval_mode_is_inactive_and_step_after_eval_backward_raises():
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(model)
    model.eval()
    backward(model, x, y, "mean")
    with pytest.raises(CaptureError, match="eval mode"):
        mon.step()
    assert mon.steps == 0 and mon.history == []
    model.train()
    backward(model, x, y, "mean")
    assert mon.step()["step"] == 1
    with pytest.raises(CaptureError, match="nothing captured"):
        mon.step()  # one step per backward


def test_full_mode_refuses_eval_mode():
    model = mlp()
    mon = DiversityMonitor(model, mode="full", loss_fn=ce)
    model.eval()
    with pytest.raises(CaptureError, match="eval mode"):
        mon.full_backward(*batch())
    with pytest.raises(CaptureError, match="full_backward"):
        mon.step()


# ---------------------------------------------------------- the device ---


def test_device_reductions_stay_on_the_device():
    """No GPU here: on the meta device the reductions run shape-only and
    their result stays on that device (nothing is copied or read)."""
    model = mlp().to("meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    sq = torch.empty(8, dtype=torch.float64, device="meta")
    out = _device_sums(sq, list(model.parameters()))
    assert out.device.type == "meta" and out.shape == (2,) and out.dtype == torch.float64


def test_norms_mode_passes_only_scalars_to_go(monkeypatch):
    """A norms-mode step calls Go with two scalars; the exports that take a
    buffer address (stats, estimates from vectors, mechanisms) are never
    called — with the gradients on a GPU they would get a device pointer."""
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), mechanism=gdiv.Langevin(0.1), policy=gdiv.BatchSizePolicy(max_batch=64)
    )

    def refuse(*a, **k):
        raise AssertionError("a buffer address was passed to Go in norms mode")

    for name in ("Stats", "EstimateGrads", "EstimateNorms", "MechanismApply", "StatsDifferential"):
        monkeypatch.setattr(bridge.lib, name, refuse)
    backward(model, x, y, "mean")
    assert mon.step()["skipped"] is None


# ------------------------------------------------------------------- AMP ---


class FakeScaler:
    """The part of a GradScaler the monitor reads."""

    def __init__(self, scale: float) -> None:
        self.scale_value = scale

    def get_scale(self) -> float:
        return self.scale_value


def amp_scaler():
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        try:
            return amp.GradScaler("cpu", init_scale=2.0**12)
        except Exception:  # pragma: no cover - older torch
            pass
    return None


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("how", ["gradscaler", "gradscaler-unscaled", "fake-scaler"])
def test_amp_scaled_backward_gives_the_unscaled_estimates(reduction, how):
    x, y = batch()
    model = mlp()
    plain = DiversityMonitor(model, loss_reduction=reduction)
    backward(model, x, y, reduction)
    want = plain.step()
    plain.remove()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = FakeScaler(1024.0) if how == "fake-scaler" else amp_scaler()
    if scaler is None:
        pytest.skip("torch.amp.GradScaler('cpu') is not available")
    mon = DiversityMonitor(model, loss_reduction=reduction, grad_scaler=scaler, optimizer=opt)
    model.zero_grad(set_to_none=True)
    loss = ce(model(x), y, reduction)
    if how == "fake-scaler":
        (loss * scaler.scale_value).backward()
    else:
        scaler.scale(loss).backward()
        if how == "gradscaler-unscaled":
            scaler.unscale_(opt)  # .grad unscaled, the captured norms not
    got = mon.step()
    for key in ("sum_sq_norms", "sq_norm_of_sum", "m2", "g", "batch_bound"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    if how != "fake-scaler":
        scaler.step(opt)
        scaler.update()


def test_amp_overflow_is_skipped():
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(model, grad_scaler=FakeScaler(2.0**16))
    model.zero_grad(set_to_none=True)
    (ce(model(x), y) * math.inf).backward()
    rec = mon.step()
    assert rec["skipped"] == "non-finite" and mon.estimator.steps == 0


def test_full_mode_refuses_a_scaler():
    with pytest.raises(ValueError, match="grad_scaler"):
        DiversityMonitor(mlp(), mode="full", loss_fn=ce, grad_scaler=FakeScaler(2.0))


# ------------------------------------------------------- degenerate steps ---


def test_nan_loss_skip_leaves_estimator_and_policy_unchanged():
    model = mlp()
    x, y = batch()
    pol = gdiv.BatchSizePolicy(max_batch=64)
    mon = DiversityMonitor(model, policy=pol, batch_size=8)
    backward(model, x, y, "mean")
    mon.step()
    state, bs = mon.estimator.state_dict(), mon.batch_size
    model.zero_grad(set_to_none=True)
    (ce(model(x), y) * float("nan")).backward()
    rec = mon.step()
    assert rec["skipped"] == "non-finite" and rec["step"] == 2
    assert mon.estimator.state_dict() == state and mon.batch_size == bs == rec["next_batch"]


def test_nan_loss_raise_names_the_step():
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(model, on_nonfinite="raise")
    backward(model, x, y, "mean")
    mon.step()
    model.zero_grad(set_to_none=True)
    (ce(model(x), y) * float("nan")).backward()
    with pytest.raises(gdiv.NonFiniteError, match="step 2"):
        mon.step()


def test_full_mode_nan_skip():
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(model, mode="full", loss_fn=lambda o, t: ce(o, t) * float("nan"))
    rec = mon.step(inputs=x, targets=y)
    assert rec["skipped"] == "non-finite" and mon.estimator.steps == 0


def test_batch_of_one_warns_and_skips():
    model = mlp()
    x, y = batch(b=1)
    pol = gdiv.BatchSizePolicy(max_batch=64)
    mon = DiversityMonitor(model, policy=pol, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    backward(model, x, y, "mean")
    with pytest.warns(RuntimeWarning, match="batch of 1"):
        rec = mon.step()
    assert rec["skipped"] == "batch of 1" and rec["batch"] == 1 and mon.estimator.steps == 0
    assert mon.batch_size == mon.policy.min_batch == 2  # the policy never proposes 1


# ------------------------------------------------------------ full mode ---


def test_full_mode_over_the_memory_budget():
    mon = DiversityMonitor(mlp(), mode="full", loss_fn=ce, full_max_bytes=64)
    with pytest.raises(MemoryError, match="max_bytes"):
        mon.full_backward(*batch())


@pytest.mark.parametrize("mech", [gdiv.Dropout(0.5), gdiv.Quantize(1)], ids=["dropout", "quantize"])
def test_per_example_mechanisms_need_full_mode(mech):
    with pytest.raises(ValueError, match="mode='full'"):
        DiversityMonitor(mlp(), mechanism=mech)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mech", [gdiv.Dropout(0.3), gdiv.Quantize(2), gdiv.Langevin(0.1)], ids=["dropout", "quantize", "langevin"])
def test_full_mode_mechanism_rows_sum_into_grad(reduction, mech):
    """.grad is the sum (mean) of the mechanism's rows, and the estimate is
    that of those rows — rebuilt here with the same seed."""
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(model, mode="full", loss_fn=ce, mechanism=mech, loss_reduction=reduction, seed=42, estimator_beta=0.0)
    loss = mon.full_backward(x, y)
    assert loss.item() == pytest.approx(ce(model(x), y).item(), rel=1e-12)
    rec = mon.step(loss=loss)
    rows = per_example_grads(model, ce, x, y).contiguous()
    mech.apply_(rows, seed=_step_seed(42, 1))
    want_grad = rows.sum(0) / (8 if reduction == "mean" else 1)
    got_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-14)
    want = oracle_estimate(rows.numpy())
    for key in ("m2", "g", "batch_bound"):
        assert rec[key] == pytest.approx(want[key], rel=1e-9), key
    assert rec["loss"] == pytest.approx(loss.item())


# --------------------------------------------------------------- Langevin ---


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_langevin_norms_mode_shifts_m2_by_d_sigma2(reduction):
    """Norms mode adds one Gaussian of variance Bσ² to the summed gradient
    (σ²/B to the mean) and reports Σ‖g_i‖² + B·d·σ²: over seeds, M̂² is the
    clean one + d·σ² (exactly) and Ĝ is the clean one in expectation; the
    added noise has the right variance; and full mode's per-example noise
    agrees on E[M̂²] within a few standard errors."""
    model = mlp(d=4, h=3, k=2)
    x, y = batch(b=6, d=4, k=2)
    d = sum(p.numel() for p in model.parameters())
    std = 0.3
    clean = DiversityMonitor(model, loss_reduction=reduction, estimator_beta=0.0)
    backward(model, x, y, reduction)
    base = clean.step()
    base_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()
    clean.remove()

    mech = gdiv.Langevin(std)
    seeds = 300
    m2s, gs, noise = [], [], []
    for s in range(seeds):
        mon = DiversityMonitor(model, loss_reduction=reduction, mechanism=mech, estimator_beta=0.0, seed=s)
        backward(model, x, y, reduction)
        rec = mon.step()
        mon.remove()
        m2s.append(rec["m2"])
        gs.append(rec["g"])
        noise.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]) - base_grad)
    assert np.allclose(m2s, base["m2"] + d * std**2, rtol=RTOL)
    gs = np.array(gs)
    assert abs(gs.mean() - base["g"]) <= 4 * gs.std(ddof=1) / math.sqrt(seeds)
    noise = torch.stack(noise).numpy().ravel()
    want_var = mech.sum_noise_std(6, reduction=reduction) ** 2
    assert abs(noise.var() - want_var) <= 4 * want_var * math.sqrt(2 / noise.size)

    full_m2 = []
    for s in range(seeds // 3):
        mon = DiversityMonitor(model, mode="full", loss_fn=ce, loss_reduction=reduction, mechanism=mech, estimator_beta=0.0, seed=s)
        full_m2.append(mon.step(inputs=x, targets=y)["m2"])
    full_m2 = np.array(full_m2)
    assert abs(full_m2.mean() - (base["m2"] + d * std**2)) <= 4 * full_m2.std(ddof=1) / math.sqrt(len(full_m2))


def test_langevin_noise_is_seeded():
    x, y = batch()
    grads = []
    for seed in (5, 5, 6):
        model = mlp()
        mon = DiversityMonitor(model, mechanism=gdiv.Langevin(0.1), seed=seed)
        backward(model, x, y, "mean")
        mon.step()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.equal(grads[0], grads[1]) and not torch.equal(grads[0], grads[2])


# ------------------------------------------------------------ the LR rule ---


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
def test_lr_rule_applied_on_batch_change_for_mean(rule):
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.03}])
    pol = gdiv.BatchSizePolicy(max_batch=64, lr_rule=rule)
    mon = DiversityMonitor(model, optimizer=opt, policy=pol, batch_size=8)
    sizes = []
    for k in range(6):
        b = mon.batch_size
        sizes.append(b)
        x, y = batch(b=b, seed=k)
        backward(model, x, y, "mean")
        rec = mon.step()
        for g, lr0 in zip(opt.param_groups, (0.1, 0.03)):
            assert g["lr"] == pol.scale_lr(lr0, 8, b)
        assert rec["lr"] == opt.param_groups[0]["lr"]
        opt.step()
    assert len(set(sizes)) > 1, "the batch never changed"
    assert mon.lr_factor == pol.scale_lr(1.0, 8, sizes[-1])


def test_sum_reduction_never_changes_lr():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = DiversityMonitor(model, optimizer=opt, loss_reduction="sum", policy=gdiv.BatchSizePolicy(max_batch=64), batch_size=8)
    sizes = []
    for k in range(6):
        sizes.append(mon.batch_size)
        backward(model, *batch(b=mon.batch_size, seed=k), "sum")
        mon.step()
        assert opt.param_groups[0]["lr"] == 0.01
    assert len(set(sizes)) > 1 and mon.lr_factor == 1.0
    with pytest.raises(ValueError, match="sum step"):
        DiversityMonitor(mlp(), loss_reduction="sum", lr_rule="linear")


# -------------------------------------------------------------- logging ---


class Writer:
    def __init__(self) -> None:
        self.calls = []

    def add_scalar(self, tag, value, global_step=None):
        self.calls.append((tag, value, global_step))


def test_writer_receives_scalars():
    w = Writer()
    model = mlp()
    mon = DiversityMonitor(model, writer=w, dataset_size=100, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    x, _ = batch(b=32)
    y = (x[:, 0] > 0).long()  # a learnable rule: a clear signal at the start
    loss = backward(model, x, y, "mean")
    rec = mon.step(loss=loss)
    assert not rec["no_signal"]
    tags = {t: (v, s) for t, v, s in w.calls}
    for key in ("batch", "lr", "loss", "m2", "g", "batch_bound", "diversity", "noise_scale", "skipped"):
        assert f"gdiv/{key}" in tags and tags[f"gdiv/{key}"][1] == 1, key
    assert tags["gdiv/loss"][0] == pytest.approx(loss.item()) and tags["gdiv/batch"][0] == 32
    assert tags["gdiv/batch_bound"][0] == rec["batch_bound"] and tags["gdiv/skipped"][0] == 0.0
    assert all(isinstance(v, float) or isinstance(v, int) for _, v, _ in w.calls)


def test_plot_history_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = mlp()
    mon = DiversityMonitor(model, policy=gdiv.BatchSizePolicy(max_batch=32))
    for k in range(5):
        loss = backward(model, *batch(b=mon.batch_size, seed=k), "mean")
        mon.step(loss=loss)
    png = gdiv.plot.history(mon.history, tmp_path / "sub" / "h.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = gdiv.reference.train(*batch(b=40), problem="softmax", lr=0.1, batch=4, steps=5)
    both = gdiv.plot.history({"torch": mon.history, "go": res.history}, tmp_path / "both.png")
    assert both.stat().st_size > 1000
    with pytest.raises(ValueError, match="empty"):
        gdiv.plot.history([], tmp_path / "e.png")


# ----------------------------------------------------------- checkpoints ---


def test_state_dict_is_plain_data():
    model = mlp()
    mon = DiversityMonitor(model, policy=gdiv.BatchSizePolicy(max_batch=64), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    backward(model, *batch(b=mon.batch_size), "mean")
    mon.step()
    json.dumps(mon.state_dict(), allow_nan=True)
    other = DiversityMonitor(mlp(), mode="full", loss_fn=ce)
    with pytest.raises(ValueError, match="mode"):
        other.load_state_dict(mon.state_dict())


def _train(model, opt, mon, sampler, x_all, y_all, steps):
    """A loop over a DataLoader with the adaptive sampler; returns the batch sizes."""
    ds = torch.utils.data.TensorDataset(x_all, y_all)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    sizes = []
    while len(sizes) < steps:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            ce(model(x), y).backward()
            mon.step()
            opt.step()
            sizes.append(len(y))
            if len(sizes) == steps:
                break
    return sizes


@pytest.mark.parametrize("replacement", [True, False], ids=["replacement", "shuffle"])
def test_resume_makes_the_same_decisions(replacement):
    """2k steps uninterrupted vs k steps, state_dicts, fresh objects,
    load_state_dict, k more steps: the same batch sizes and weights."""
    x_all, y_all = batch(b=150, seed=9)
    pol = gdiv.BatchSizePolicy(max_batch=64, max_growth=1.5)

    def build():
        model = mlp(seed=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        kw = dict(dataset_size=150) if not replacement else {}
        mon = DiversityMonitor(model, optimizer=opt, policy=pol, mechanism=gdiv.Langevin(0.01), seed=7, batch_size=4, **kw)
        sampler = AdaptiveBatchSampler(150, mon, replacement=replacement, seed=11)
        return model, opt, mon, sampler

    k = 14
    model, opt, mon, sampler = build()
    full = _train(model, opt, mon, sampler, x_all, y_all, 2 * k)
    w_full = [p.detach().clone() for p in model.parameters()]
    assert len(set(full)) > 3, full

    model, opt, mon, sampler = build()
    first = _train(model, opt, mon, sampler, x_all, y_all, k)
    saved = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "mon": json.loads(json.dumps(mon.state_dict(), allow_nan=True)),
        "sampler": sampler.state_dict(),
    }
    model, opt, mon, sampler = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    mon.load_state_dict(saved["mon"])
    sampler.load_state_dict(saved["sampler"])
    second = _train(model, opt, mon, sampler, x_all, y_all, k)
    assert first + second == full
    for p, q in zip(model.parameters(), w_full):
        assert torch.equal(p.detach(), q)
    assert len(mon.history) == 2 * k and [r["step"] for r in mon.history] == list(range(1, 2 * k + 1))


# ---------------------------------------------------------- misuse errors ---


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(loss_reduction="none"), "loss_reduction"),
        (dict(mode="grads"), "mode"),
        (dict(mode="full"), "loss_fn"),
        (dict(loss_fn=ce), "loss_fn is for mode='full'"),
        (dict(sampling="shuffle"), "dataset_size"),
        (dict(on_nonfinite="ignore"), "on_nonfinite"),
        (dict(policy=gdiv.BatchSizePolicy(multiple_of=4), batch_size=6), "not allowed"),
        (dict(policy=gdiv.BatchSizePolicy(max_batch=500), dataset_size=100), "exceeds the 100 examples"),
        (dict(lr_rule="cubic"), "lr_rule"),
        (dict(seed=-1), "seed"),
    ],
    ids=["reduction", "mode", "full-no-loss", "loss-fn-norms", "shuffle-no-n", "nonfinite", "illegal-batch", "max-over-n", "lr-rule", "seed"],
)
def test_bad_options_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        DiversityMonitor(mlp(), **kw)


def test_type_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        DiversityMonitor(lambda x: x)
    with pytest.raises(TypeError, match="add_scalar"):
        DiversityMonitor(mlp(), writer=object())
    with pytest.raises(TypeError, match="BatchSizePolicy"):
        DiversityMonitor(mlp(), policy={"max_batch": 4})


def test_no_warnings_in_a_normal_step():
    model = mlp()
    mon = DiversityMonitor(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backward(model, *batch(), "mean")
        mon.step()
