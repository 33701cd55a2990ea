"""gdiv.Controller (Go's gdiv.Controller through one bridge call per step)
against independent oracles: the per-batch estimate, the Estimator, the
policy's decision and the LR rule, each computed separately."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import gdiv


def sums(rng, b, d=5):
    g = rng.normal(size=(b, d)) + 0.3
    return float((g * g).sum()), float((g.sum(0) ** 2).sum())


def test_observe_is_estimate_smoothing_and_policy():
    rng = np.random.default_rng(0)
    pol = gdiv.BatchSizePolicy(max_batch=200, multiple_of=4, warmup=1)
    ctl = gdiv.Controller(policy=pol, estimator_beta=0.7, batch_size=8, loss_reduction="sum", seed=1)
    est = gdiv.Estimator(0.7)
    adjusted = ctl.policy
    assert adjusted.min_batch == 2 and adjusted.max_batch == 200  # min_batch raised to 2, like Go's trainer
    for k in range(6):
        b = ctl.batch_size
        s, t = sums(rng, b)
        d = ctl.observe(b, s, t)
        want = gdiv.estimate_from_sums(b, s, t)
        assert d.estimate.m2 == pytest.approx(want.m2, rel=1e-13) and d.estimate.g == pytest.approx(want.g, rel=1e-13)
        est.update(batch_size=b, sum_sq_norms=s, sq_norm_of_sum=t)
        assert d.smoothed.batch_bound == pytest.approx(est.smoothed.batch_bound, rel=1e-12)
        assert d.next_batch == adjusted.next(b, est.smoothed, k) == ctl.batch_size
        assert d.step == k + 1 and d.lr_factor == 1.0 and d.skipped is None
    assert ctl.steps == ctl.decisions == 6


def test_mean_loss_and_loss_scales_are_converted_by_go():
    """Sums of a mean loss are B² too small and AMP sums scale² too large:
    Go converts both, so the decisions equal the plain sum-loss ones."""
    rng = np.random.default_rng(1)
    plain = gdiv.Controller(estimator_beta=0.5)
    mean = gdiv.Controller(estimator_beta=0.5, loss_reduction="mean")
    for b in (8, 12, 16):
        s, t = sums(rng, b)
        a = plain.observe(b, s, t)
        c = mean.observe(b, s / b**2 * 4.0, t / b**2 * 16.0, mean=True, norms_scale=2.0, grad_scale=4.0)
        assert c.sum_sq_norms == pytest.approx(a.sum_sq_norms, rel=1e-13)
        assert c.smoothed.batch_bound == pytest.approx(a.smoothed.batch_bound, rel=1e-12)


@pytest.mark.parametrize("rule, want", [("linear", 4.0), ("sqrt", 2.0), ("none", 1.0)])
def test_lr_factor_from_the_first_batch(rule, want):
    ctl = gdiv.Controller(loss_reduction="mean", lr_rule=rule)
    rng = np.random.default_rng(2)
    assert ctl.observe(8, *sums(rng, 8)).lr_factor == 1.0
    assert ctl.observe(32, *sums(rng, 32)).lr_factor == pytest.approx(want, rel=1e-15)
    assert ctl.first_batch == 8 and ctl.lr_factor == pytest.approx(want)


def test_skips_leave_estimate_and_policy_alone():
    ctl = gdiv.Controller(policy=gdiv.BatchSizePolicy(max_batch=64))
    rng = np.random.default_rng(3)
    ctl.observe(8, *sums(rng, 8))
    before = ctl.state_dict()
    d = ctl.observe(8, math.nan, 1.0)
    assert d.skipped == "non-finite" and math.isnan(d.sum_sq_norms)
    assert ctl.observe(1, 1.0, 1.0).skipped == "batch of 1"
    after = ctl.state_dict()
    assert after["estimator"] == before["estimator"] and after["batch"] == before["batch"]
    assert after["steps"] == before["steps"] + 2 and after["decisions"] == before["decisions"]


def test_step_seeds_are_a_fixed_stream():
    a = [gdiv.step_seed(42, k) for k in range(1, 6)]
    assert a == [gdiv.step_seed(42, k) for k in range(1, 6)] and len(set(a)) == 5
    assert a != [gdiv.step_seed(43, k) for k in range(1, 6)]
    ctl = gdiv.Controller(seed=42)
    assert ctl.next_seed == a[0]
    ctl.observe(4, 3.0, 1.0)
    assert ctl.next_seed == a[1]
    with pytest.raises(gdiv.ParamError, match="seed"):
        gdiv.step_seed(1.5, 1)


def test_state_round_trip_and_pickle_continue_identically():
    rng = np.random.default_rng(4)
    ctl = gdiv.Controller(policy=gdiv.BatchSizePolicy(max_batch=100), dataset_size=100, seed=5, loss_reduction="mean", lr_rule="linear")
    for _ in range(3):
        ctl.observe(ctl.batch_size, *sums(rng, ctl.batch_size))
    twin = pickle.loads(pickle.dumps(ctl))
    fresh = gdiv.Controller(**ctl.settings, seed=5)
    fresh.load_state_dict(ctl.state_dict())
    for _ in range(3):
        s = sums(rng, ctl.batch_size)
        b = ctl.batch_size
        outs = [c.observe(b, *s) for c in (ctl, twin, fresh)]
        assert len({(o.next_batch, o.smoothed.batch_bound, o.lr_factor) for o in outs}) == 1
        assert len({c.next_seed for c in (ctl, twin, fresh)}) == 1


@pytest.mark.parametrize(
    "key, value, field",
    [("batch", -5, "batch"), ("steps", 1.5, "steps"), ("decisions", -1, "decisions"), ("batch", 7, "batch")],
)
def test_bad_state_is_refused_atomically(key, value, field):
    ctl = gdiv.Controller(policy=gdiv.BatchSizePolicy(max_batch=64, multiple_of=2), seed=1)
    ctl.observe(2, 3.0, 1.0)
    before = ctl.state_dict()
    bad = dict(before, **{key: value})
    with pytest.raises(gdiv.ParamError, match=field):
        ctl.load_state_dict(bad)
    assert ctl.state_dict() == before


@pytest.mark.parametrize("key, value", [("ema_m2", -5.0), ("steps", "many"), ("weight", None), ("beta", 2**53 + 1)])
def test_bad_estimator_state_is_refused_atomically(key, value):
    ctl = gdiv.Controller(policy=gdiv.BatchSizePolicy(max_batch=64), seed=1)
    ctl.observe(4, 3.0, 1.0)
    before = ctl.state_dict()
    bad = dict(before, estimator=dict(before["estimator"], **{key: value}))
    with pytest.raises(gdiv.ParamError, match=key):
        ctl.load_state_dict(bad)
    assert ctl.state_dict() == before


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(estimator_beta=1.0), "estimator_beta"),
        (dict(sampling="shuffle"), "sampling"),
        (dict(lr_rule="linear", loss_reduction="sum"), "lr_rule"),
        (dict(policy=gdiv.BatchSizePolicy(max_batch=500), dataset_size=100, sampling="shuffle"), "max_batch"),
        (dict(policy=gdiv.BatchSizePolicy(multiple_of=4), batch_size=6), "batch_size"),
        (dict(langevin_std=-1.0), "langevin_std"),
        (dict(lr_warmup_steps=-1), "lr_warmup_steps"),
    ],
)
def test_settings_errors_name_the_field_as_data(kw, field):
    with pytest.raises(gdiv.ParamError) as ei:
        gdiv.Controller(**kw)
    assert getattr(ei.value, "field", None) == field and str(ei.value).startswith(field)


def test_bad_observation_changes_nothing():
    ctl = gdiv.Controller(dataset_size=10, sampling="shuffle")
    before = ctl.state_dict()
    for args in ((0, 1.0, 1.0), (4, -1.0, 1.0), (11, 1.0, 1.0)):
        with pytest.raises(gdiv.ParamError):
            ctl.observe(*args)
    assert ctl.state_dict() == before


def test_adascale_factor_is_the_gain_of_the_estimate_before_the_step():
    """σ̂² = M̂² − Ĝ and Ĝ after step 1 give r = (σ² + G)/(σ²/S + G) at step 2."""
    pol = gdiv.BatchSizePolicy(min_batch=8, max_batch=64, lr_rule="adascale")
    ctl = gdiv.Controller(policy=pol, estimator_beta=0.0, loss_reduction="mean", lr_rule="adascale", batch_size=8, seed=0)
    d1 = ctl.observe(8, 40.0, 100.0)
    assert d1.lr_factor == 1.0  # no estimate before the first step
    est = ctl.smoothed
    s = 16 / 8
    sigma2 = est.m2 - est.g
    want = (sigma2 + est.g) / (sigma2 / s + est.g)
    d2 = ctl.observe(16, 80.0, 300.0)
    assert d2.lr_factor == pytest.approx(want, rel=1e-14)
    assert 1 < d2.lr_factor < s
    with pytest.raises(gdiv.ParamError, match="adascale"):
        pol.scale_lr(0.1, 8, 16)


def test_max_lr_factor_caps_the_rule():
    pol = gdiv.BatchSizePolicy(min_batch=8, max_batch=128)
    ctl = gdiv.Controller(policy=pol, loss_reduction="mean", lr_rule="linear", batch_size=8, max_lr_factor=4, seed=0)
    ctl.observe(8, 40.0, 100.0)
    assert ctl.observe(64, 40.0, 100.0).lr_factor == 4.0  # 8× the batch, capped at 4
    assert ctl.observe(16, 40.0, 100.0).lr_factor == 2.0  # below the cap: the rule's
    for bad in (0, 0.5, float("inf"), float("nan")):
        with pytest.raises(gdiv.ParamError) as e:
            gdiv.Controller(loss_reduction="mean", lr_rule="linear", max_lr_factor=bad)
        assert e.value.field == "max_lr_factor"


def test_monitor_passes_max_lr_factor_through():
    torch = pytest.importorskip("torch")
    from gdiv.torch import DiversityMonitor

    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = DiversityMonitor(m, optimizer=opt, max_lr_factor=2.5, lr_rule="linear")  # no policy: the batch is what runs
    assert mon.controller.settings["max_lr_factor"] == 2.5
    for b in (8, 64):  # 8× the first batch: the linear rule's 8, capped at 2.5
        x, y = torch.randn(b, 3), torch.randint(0, 2, (b,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        rec = mon.step()
    assert rec["lr"] == pytest.approx(0.25) and opt.param_groups[0]["lr"] == pytest.approx(0.25)


def _no_signal(ctl):
    """One step of no signal (Ĝ < 0): the policy doubles the batch."""
    b = ctl.batch_size
    return ctl.observe(b, float(b), 0.0)


def test_lr_warmup_ramps_after_each_increase():
    """W = 4, linear rule from B₀ = 8, the batch doubling 8 → 16 → 32 → 64:
    each increase ramps from the factor of the step before it, the W-th
    step reaches the rule's factor (hand-computed, as Go's test)."""
    pol = gdiv.BatchSizePolicy(min_batch=8, max_batch=64)
    ctl = gdiv.Controller(policy=pol, estimator_beta=0.0, loss_reduction="mean", lr_rule="linear", lr_warmup_steps=4, seed=0)
    assert ctl.settings["lr_warmup_steps"] == 4
    got = [(d.batch, d.lr_factor) for d in (_no_signal(ctl) for _ in range(7))]
    f3 = 1.9375
    want = [(8, 1.0), (16, 1.25), (32, f3), (64, f3 + (8 - f3) / 4), (64, f3 + 2 * (8 - f3) / 4), (64, f3 + 3 * (8 - f3) / 4), (64, 8.0)]
    assert [b for b, _ in got] == [b for b, _ in want]
    assert [f for _, f in got] == pytest.approx([f for _, f in want], rel=1e-15)
    st = ctl.state_dict()
    assert st["ramp_from"] == 0.0 and st["ramp_left"] == 0
    d = ctl.observe(64, 64.0, 64.0**2)  # all gradients equal: B̂_S = 1, the batch halves
    assert d.next_batch == 32 and _no_signal(ctl).lr_factor == 4.0  # the decrease at once


def test_lr_warmup_state_round_trip_mid_ramp():
    """A checkpoint mid-ramp (state_dict, pickle) continues identically; a
    state from before the warm-up existed (no ramp keys) loads as no ramp;
    a bad ramp is refused atomically, naming the field."""
    pol = gdiv.BatchSizePolicy(min_batch=8, max_batch=64)
    kw = dict(policy=pol, estimator_beta=0.0, loss_reduction="mean", lr_rule="linear", lr_warmup_steps=4, seed=3)
    ctl = gdiv.Controller(**kw)
    for _ in range(4):
        _no_signal(ctl)
    st = ctl.state_dict()
    assert st["ramp_from"] == 1.9375 and st["ramp_left"] == 3
    twin = pickle.loads(pickle.dumps(ctl))
    fresh = gdiv.Controller(**ctl.settings, seed=3)
    fresh.load_state_dict(st)
    for _ in range(4):
        assert len({_no_signal(c).lr_factor for c in (ctl, twin, fresh)}) == 1

    old = {k: v for k, v in st.items() if k not in ("ramp_from", "ramp_left")}
    legacy = gdiv.Controller(**kw)
    legacy.load_state_dict(old)
    assert legacy.state_dict()["ramp_left"] == 0
    assert _no_signal(legacy).lr_factor == 8.0  # no ramp in progress: the rule's factor

    before = fresh.state_dict()
    for key, value in (("ramp_left", 9), ("ramp_left", -1), ("ramp_from", -2.0), ("ramp_left", 1.5)):
        with pytest.raises(gdiv.ParamError) as e:
            fresh.load_state_dict(dict(st, **{key: value}))
        assert e.value.field == key or key in str(e.value)
        assert fresh.state_dict() == before


def test_monitor_passes_lr_warmup_steps_through():
    """The monitor's optimizer follows the ramp: 4 → 8 after the first
    step, the lr going 0.1 → 0.2 (the linear rule) over W = 3 steps."""
    torch = pytest.importorskip("torch")
    from gdiv.torch import DiversityMonitor

    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    pol = gdiv.BatchSizePolicy(min_batch=4, max_batch=8)
    mon = DiversityMonitor(m, optimizer=opt, policy=pol, lr_warmup_steps=3, seed=0)
    assert mon.controller.settings["lr_warmup_steps"] == 3
    recs = []
    for _ in range(5):
        b = mon.batch_size
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(torch.randn(b, 3)), torch.randint(0, 2, (b,))).backward()
        recs.append(mon.step())
        assert opt.param_groups[0]["lr"] == recs[-1]["lr"]
        opt.step()
    assert [r["batch"] for r in recs] == [4, 8, 8, 8, 8]
    assert [r["lr"] for r in recs] == pytest.approx([0.1, 0.1 * (1 + 1 / 3), 0.1 * (1 + 2 / 3), 0.2, 0.2], rel=1e-12)
