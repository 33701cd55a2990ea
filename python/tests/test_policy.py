"""gdiv.BatchSizePolicy: Go's decisions, validation, LR rules, value semantics.

The hand-computed cases mirror gdiv/policy_test.go (TestPolicyNext, with Go's
zero fields written as the Python defaults); the invariants are those of
TestPolicyNextInvariants, checked over random inputs.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

import gdiv

inf = math.inf

# (id, policy settings, current, B̂_S (inf: no signal), step, want)
NEXT_CASES = [
    ("target δ·B_S+1 with δ = 1", {}, 10, 7, 0, 8),
    ("floor of δ·B_S+1", {}, 10, 12.7, 0, 13),
    ("delta 0.5", {"delta": 0.5}, 10, 30, 0, 16),
    ("delta 2", {"delta": 2}, 10, 7, 0, 15),
    ("target equals current", {}, 10, 9, 0, 10),
    ("clamp to max", {"max_batch": 12}, 10, 100, 0, 12),
    ("clamp to min", {"min_batch": 8}, 10, 0.5, 0, 8),
    ("B_S below 1 gives batch 1", {}, 2, 0.2, 0, 1),
    ("bounds win over growth (above max)", {"max_batch": 16}, 100, 1000, 0, 16),
    ("bounds win over growth (below min)", {"min_batch": 64, "max_batch": 128}, 4, 1000, 0, 128),
    ("growth limited to 2x", {}, 10, 1000, 0, 20),
    ("shrink limited to 1/2", {}, 10, 0, 0, 5),
    ("shrink limit rounds up", {}, 9, 0, 0, 5),
    ("growth 1.5", {"max_growth": 1.5}, 10, 1000, 0, 15),
    ("growth 1 moves one multiple", {"max_growth": 1}, 10, 1000, 0, 11),
    ("infinite growth jumps to target", {"max_growth": inf}, 10, 1000, 0, 1001),
    ("infinite growth shrinks to target", {"max_growth": inf}, 1000, 3, 0, 4),
    ("round down to multiple", {"multiple_of": 8}, 16, 30, 0, 24),
    ("round down 25 → 24", {"multiple_of": 8, "max_growth": inf}, 16, 24, 0, 24),
    ("round down below current", {"multiple_of": 8, "max_growth": inf}, 32, 20, 0, 16),
    ("never undercuts min: round up", {"multiple_of": 8, "min_batch": 3, "max_growth": inf}, 16, 0.5, 0, 8),
    ("min not a multiple", {"multiple_of": 4, "min_batch": 5, "max_growth": inf}, 12, 1, 0, 8),
    ("max not a multiple", {"multiple_of": 4, "max_batch": 30, "max_growth": inf}, 12, 1000, 0, 28),
    ("growth 1.5, multiple 8, grows one multiple", {"multiple_of": 8, "max_growth": 1.5}, 8, 1000, 0, 16),
    ("growth 1.5, multiple 8, shrinks one multiple", {"multiple_of": 8, "max_growth": 1.5}, 16, 4, 0, 8),
    ("growth 1.5, multiple 8, below next multiple", {"multiple_of": 8, "max_growth": 1.5}, 8, 14, 0, 8),
    ("shrink limit respected by rounding up", {"multiple_of": 4, "max_growth": 2}, 12, 0, 0, 8),
    ("hysteresis keeps small increase", {"hysteresis": 0.1}, 100, 104, 0, 100),
    ("hysteresis keeps small decrease", {"hysteresis": 0.1}, 100, 94, 0, 100),
    ("hysteresis lets 10% through", {"hysteresis": 0.1}, 100, 109, 0, 110),
    ("hysteresis lets large change through", {"hysteresis": 0.1}, 100, 70, 0, 71),
    ("no hysteresis: change by one", {}, 100, 100, 0, 101),
    ("hysteresis does not keep an illegal current", {"hysteresis": 0.5, "multiple_of": 8}, 100, 100, 0, 96),
    ("warm-up keeps the batch", {"warmup": 3}, 10, 1000, 2, 10),
    ("after warm-up", {"warmup": 3}, 10, 1000, 3, 20),
    ("warm-up legalizes an illegal current", {"warmup": 3, "multiple_of": 8, "max_batch": 64}, 100, 1000, 0, 64),
    ("warm-up rounds down to a multiple", {"warmup": 3, "multiple_of": 8}, 13, 1000, 0, 8),
    ("no signal goes to max", {"max_batch": 64, "max_growth": inf}, 10, inf, 0, 64),
    ("no signal grows by at most max_growth", {"max_batch": 64}, 10, inf, 0, 20),
    ("no signal without max doubles", {}, 10, inf, 0, 20),
    ("no signal at max stays", {"max_batch": 64}, 64, inf, 0, 64),
    ("no signal, multiple and max", {"max_batch": 100, "multiple_of": 16, "max_growth": inf}, 16, inf, 0, 96),
]


@pytest.mark.parametrize("settings,current,bs,step,want", [c[1:] for c in NEXT_CASES], ids=[c[0] for c in NEXT_CASES])
def test_next_hand_cases(settings, current, bs, step, want):
    p = gdiv.BatchSizePolicy(**settings)
    assert p.next(current, bs, step) == want
    # The same decision from an Estimate and from a mapping.
    no_signal = math.isinf(bs)
    est = gdiv.Estimate._make([0, 1.0, 0.0 if no_signal else 1.0 / max(bs, 1e-300), bs, bs - 1, no_signal])
    assert p.next(current, est, step) == want
    assert p.next(current, {"batch_bound": bs, "no_signal": no_signal}, step) == want


INVARIANT_POLICIES = [
    {},
    {"min_batch": 2, "max_batch": 1000, "multiple_of": 4},
    {"min_batch": 5, "max_batch": 203, "multiple_of": 8, "max_growth": 1.5, "hysteresis": 0.2},
    {"delta": 0.3, "min_batch": 7, "max_batch": 7},
    {"delta": 3, "multiple_of": 3, "max_growth": 4, "warmup": 2},
]


@pytest.mark.parametrize("settings", INVARIANT_POLICIES, ids=[str(i) for i in range(len(INVARIANT_POLICIES))])
def test_next_invariants(settings, rng):
    p = gdiv.BatchSizePolicy(**settings)
    lo = p.min_batch
    hi = p.max_batch or 2**53
    m, g = p.multiple_of, p.max_growth
    for _ in range(3000):
        cur = int(rng.integers(1, 301))
        bs = float(rng.choice([0, 0.3, 1, 2.5, 7, 33, 500, 1e6, 1e300, inf])) if rng.random() < 0.3 else float(np.exp(rng.uniform(-2, 12)))
        step = int(rng.integers(0, 4))
        got = p.next(cur, bs, step)
        assert lo <= got <= hi and got % m == 0, (settings, cur, bs, step, got)
        if lo <= cur <= hi and cur % m == 0:
            assert min(cur / g, cur - m) <= got <= max(cur * g, cur + m), (settings, cur, bs, step, got)
            smallest = -(-lo // m) * m
            if got > p.delta * bs + 1 and got > cur:
                assert got <= smallest, (settings, cur, bs, step, got)
        if step < p.warmup and lo <= cur <= hi and cur % m == 0:
            assert got == cur
        assert p.next(cur, bs, step) == got  # a pure function


def test_estimator_drives_policy():
    est = gdiv.Estimator(beta=0.9)
    p = gdiv.BatchSizePolicy(max_batch=64)
    # Before any update the smoothed estimate has no signal: grow.
    assert est.smoothed.no_signal
    assert p.next(8, est.smoothed, 0) == 16
    rng = np.random.default_rng(1)
    sm = est.update(rng.normal(3.0, 1.0, size=(32, 10)))  # strong signal: B̂_S small
    assert p.next(32, sm, 1) == p.next(32, sm.batch_bound, 1) < 32


@pytest.mark.parametrize(
    "settings,field",
    [
        ({"delta": -1}, "delta"),
        ({"delta": math.nan}, "delta"),
        ({"delta": inf}, "delta"),
        ({"min_batch": -1}, "min_batch"),
        ({"max_batch": -3}, "max_batch"),
        ({"min_batch": 10, "max_batch": 5}, "min_batch"),
        ({"multiple_of": -8}, "multiple_of"),
        ({"min_batch": 9, "max_batch": 15, "multiple_of": 8}, "multiple_of"),
        ({"hysteresis": -0.1}, "hysteresis"),
        ({"hysteresis": math.nan}, "hysteresis"),
        ({"max_growth": 0.5}, "max_growth"),
        ({"max_growth": math.nan}, "max_growth"),
        ({"warmup": -1}, "warmup"),
        ({"lr_rule": "cubic"}, "lr_rule"),
        ({"max_batch": 2**60}, "max_batch"),
        # Go's zero-value defaults do not apply in Python.
        ({"delta": 0}, "delta"),
        ({"min_batch": 0}, "min_batch"),
        ({"max_batch": 0}, "max_batch"),
        ({"multiple_of": 0}, "multiple_of"),
        ({"max_growth": 0}, "max_growth"),
    ],
    ids=lambda v: str(v),
)
def test_validation_names_the_field(settings, field):
    with pytest.raises(gdiv.ParamError, match=rf"^{field}\b") as ei:
        gdiv.BatchSizePolicy(**settings)
    assert isinstance(ei.value, ValueError)


def test_validation_go_messages():
    with pytest.raises(gdiv.ParamError, match=r"min batch = 10 > max batch = 5"):
        gdiv.BatchSizePolicy(min_batch=10, max_batch=5)
    with pytest.raises(gdiv.ParamError, match=r"no multiple of 8 in \[min batch, max batch\] = \[9, 15\]"):
        gdiv.BatchSizePolicy(min_batch=9, max_batch=15, multiple_of=8)


@pytest.mark.parametrize(
    "settings",
    [{"min_batch": 2.5}, {"warmup": "3"}, {"delta": "1"}, {"max_batch": 1.0}, {"multiple_of": True}, {"hysteresis": None}],
    ids=str,
)
def test_types(settings):
    with pytest.raises(TypeError):
        gdiv.BatchSizePolicy(**settings)


def test_keyword_only():
    with pytest.raises(TypeError):
        gdiv.BatchSizePolicy(1.0)  # type: ignore[misc]


def test_valid_edge_settings():
    gdiv.BatchSizePolicy(min_batch=16, max_batch=16)
    gdiv.BatchSizePolicy(max_growth=inf, hysteresis=0.0, lr_rule="SQRT ")
    p = gdiv.BatchSizePolicy(max_batch=np.int64(64), delta=np.float32(0.5))
    assert p.max_batch == 64 and p.delta == 0.5


def test_next_errors():
    p = gdiv.BatchSizePolicy()
    with pytest.raises(gdiv.ParamError, match="current batch = 0"):
        p.next(0, 5.0, 0)
    with pytest.raises(gdiv.ParamError, match="step = -1"):
        p.next(4, 5.0, -1)
    with pytest.raises(gdiv.ParamError, match="NaN"):
        p.next(4, math.nan, 0)
    # A negative batch bound is a caller's bug, not a small batch size (Go's
    # CheckNext refuses it and names the argument).
    for bad in (-5.0, -math.inf, {"batch_bound": -1e-9}):
        with pytest.raises(gdiv.ParamError, match="batch_bound") as e:
            p.next(8, bad, 0)
        assert e.value.field == "batch_bound"
    assert p.next(8, 0.0, 0) >= 1 and p.next(8, math.inf, 0) >= 8
    with pytest.raises(TypeError):
        p.next(4.5, 5.0, 0)
    with pytest.raises(TypeError):
        p.next(4, "5", 0)
    with pytest.raises(ValueError, match="batch_bound"):
        p.next(4, {"m2": 1.0}, 0)
    # A NaN batch bound with no_signal set is fine: no signal wins.
    assert p.next(4, {"batch_bound": math.nan, "no_signal": True}, 0) == 8


@pytest.mark.parametrize(
    "rule,old,new,want",
    [
        ("none", 32, 128, 0.1),
        ("linear", 32, 128, 0.4),
        ("linear", 128, 32, 0.025),
        ("linear", 50, 50, 0.1),
        ("sqrt", 32, 128, 0.2),
        ("sqrt", 128, 32, 0.05),
        ("sqrt", 1, 2, 0.1 * math.sqrt(2)),
    ],
)
def test_scale_lr(rule, old, new, want):
    got = gdiv.BatchSizePolicy(lr_rule=rule).scale_lr(0.1, old, new)
    assert math.isclose(got, want, rel_tol=1e-15)


def test_scale_lr_errors():
    p = gdiv.BatchSizePolicy()
    with pytest.raises(gdiv.ParamError, match="batches 0"):
        p.scale_lr(0.1, 0, 4)
    with pytest.raises(gdiv.ParamError, match="lr = -0.1"):
        p.scale_lr(-0.1, 2, 4)
    with pytest.raises(gdiv.ParamError, match=r"lr = \+Inf"):
        p.scale_lr(inf, 2, 4)


def test_defaults_and_repr():
    p = gdiv.BatchSizePolicy()
    assert p.state_dict() == {
        "delta": 1.0,
        "min_batch": 1,
        "max_batch": None,
        "multiple_of": 1,
        "hysteresis": 0.0,
        "max_growth": 2.0,
        "warmup": 0,
        "lr_rule": "linear",
    }
    assert eval(repr(p), {"BatchSizePolicy": gdiv.BatchSizePolicy, "inf": inf}) == p


def test_state_dict_round_trip_and_value_semantics():
    p = gdiv.BatchSizePolicy(delta=0.5, min_batch=8, max_batch=512, multiple_of=8, hysteresis=0.1, max_growth=inf, warmup=3, lr_rule="sqrt")
    s = p.state_dict()
    assert gdiv.BatchSizePolicy(**s) == p
    q = gdiv.BatchSizePolicy()
    q.load_state_dict(s)
    assert q == p and q.next(64, 1000.0, 5) == p.next(64, 1000.0, 5)
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.deepcopy(p) == p
    r = p.replace(max_batch=None)
    assert r.max_batch is None and p.max_batch == 512
    assert p != r and p != "policy"
    with pytest.raises(TypeError):
        hash(p)


def test_load_state_dict_is_atomic():
    p = gdiv.BatchSizePolicy(max_batch=64)
    before = p.state_dict()
    bad = dict(before, min_batch=128)
    with pytest.raises(gdiv.ParamError, match="^min_batch"):
        p.load_state_dict(bad)
    assert p.state_dict() == before
    with pytest.raises(ValueError, match="unknown"):
        p.load_state_dict(dict(before, beta=0.9))
    with pytest.raises(KeyError):
        p.load_state_dict({k: v for k, v in before.items() if k != "delta"})
    assert p.state_dict() == before


def test_trainer_decisions_are_the_policy_decisions():
    """reference.train's batch sequence is policy.next replayed on its own
    history (the Go trainer and the Python policy agree)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 6))
    y = rng.integers(0, 3, size=300)
    pol = gdiv.BatchSizePolicy(delta=0.5, max_batch=128, multiple_of=2, hysteresis=0.05, warmup=2)
    res = gdiv.reference.train(X, y, lr=0.02, policy=pol, examples=3000, seed=4, estimator_beta=0.8)
    h = res.history
    assert res.policy == pol.replace(min_batch=2)
    for k in range(res.steps - 1):
        est = {"batch_bound": h["batch_bound"][k], "no_signal": bool(h["no_signal"][k])}
        assert res.policy.next(int(h["batch"][k]), est, k) == h["batch"][k + 1]
    assert len(set(h["batch"].tolist())) > 2  # the policy acted
