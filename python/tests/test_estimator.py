"""Estimates against the NumPy oracle; the smoothing is a ratio of EMAs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gdiv
from conftest import assert_close, needs_torch, oracle_estimate, torch


def check(est: gdiv.Estimate, want: dict, rtol: float = 1e-9) -> None:
    assert est.batch == want["batch"] and est.no_signal == want["no_signal"]
    for k in ("m2", "g", "batch_bound", "noise_scale"):
        assert_close(getattr(est, k), want[k], rtol=rtol, atol=1e-12, what=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_estimate_matches_oracle(rng, dtype):
    for b in (2, 3, 17, 128):
        g = rng.normal(0.3, 1.0, size=(b, 9)).astype(dtype)
        check(gdiv.estimate(g), oracle_estimate(g.astype(np.float64)))
        check(gdiv.estimate(g, dataset_size=1000), oracle_estimate(g.astype(np.float64), dataset_size=1000))


def test_estimate_full_dataset_without_replacement_is_exact(rng):
    g = rng.normal(0.5, 1.0, size=(10, 4))
    e = gdiv.estimate(g, dataset_size=10)
    st = gdiv.stats(g)
    assert_close(e.g, st.g, rtol=1e-12)
    assert_close(e.m2, st.m2, rtol=1e-12)


def test_estimate_from_norms_and_sums_agree(rng):
    g = rng.normal(0.2, 1.0, size=(24, 11))
    want = gdiv.estimate(g)
    sq = np.sum(g * g, axis=1)
    check(gdiv.estimate_from_norms(sq, g.sum(axis=0)), want.to_dict())
    check(gdiv.estimate_from_norms(sq, g.mean(axis=0), reduction="mean"), want.to_dict())
    check(gdiv.estimate_from_norms(sq.astype(np.float32), g.sum(axis=0).astype(np.float32)), want.to_dict(), rtol=1e-5)
    st = gdiv.stats(g)
    check(gdiv.estimate_from_sums(24, st.sum_sq_norms, st.sq_norm_of_sum), want.to_dict())
    # The batch gradient may have any (contiguous) shape: it is flattened.
    check(gdiv.estimate_from_norms(sq, g.sum(axis=0).reshape(1, 11)), want.to_dict())


@needs_torch
def test_estimate_from_norms_torch(rng):
    g = rng.normal(0.2, 1.0, size=(16, 5))
    want = gdiv.estimate(g)
    t = torch.from_numpy(g)
    check(gdiv.estimate_from_norms((t * t).sum(dim=1), t.mean(dim=0), reduction="mean"), want.to_dict())


def test_estimate_from_norms_rejects_negative_norm():
    with pytest.raises(gdiv.ParamError, match=r"sq_norms\[1\]"):
        gdiv.estimate_from_norms(np.array([1.0, -1.0, 2.0]), np.ones(3))


def test_estimate_from_norms_rejects_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        gdiv.estimate_from_norms(np.ones(3), np.ones(3), reduction="avg")


def test_no_signal():
    # Cancelling gradients: Ĝ < 0, no evidence of signal.
    g = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    e = gdiv.estimate(g)
    assert e.no_signal and e.g < 0 and math.isinf(e.batch_bound)


def test_two_scale_matches_oracle():
    bs, sqs, bb, sqb = 4, 3.0, 32, 1.2
    e = gdiv.estimate_two_scale(bs, sqs, bb, sqb)
    gg = (bb * sqb - bs * sqs) / (bb - bs)
    tr = (sqs - sqb) / (1 / bs - 1 / bb)
    assert e.batch == bb
    assert_close(e.g, gg, rtol=1e-12)
    assert_close(e.m2, tr + gg, rtol=1e-12)
    assert_close(e.batch_bound, (tr + gg) / gg, rtol=1e-12)


def test_two_scale_with_one_example_per_rank_is_estimate_batch(rng):
    g = rng.normal(0.4, 1.0, size=(20, 6))
    st = gdiv.stats(g)
    e = gdiv.estimate_two_scale(1, st.sum_sq_norms / 20, 20, st.sq_norm_of_sum / 400)
    check(e, gdiv.estimate(g).to_dict())


def test_estimator_is_a_ratio_of_debiased_emas(rng):
    beta = 0.8
    est = gdiv.Estimator(beta=beta)
    assert est.steps == 0 and est.smoothed.no_signal and math.isinf(est.smoothed.batch_bound)
    m2s, gs = [], []
    for t in range(1, 15):
        g = rng.normal(0.5, 1.0, size=(16, 4))
        sm = est.update(g)
        per = oracle_estimate(g)
        check(est.last, per)
        m2s.append(per["m2"])
        gs.append(per["g"])
        w = np.array([(1 - beta) * beta ** (t - 1 - i) for i in range(t)])
        ema_m2 = np.dot(w, m2s) / (1 - beta**t)
        ema_g = np.dot(w, gs) / (1 - beta**t)
        assert sm.batch == 0 and est.steps == t
        assert_close(sm.m2, ema_m2, rtol=1e-9)
        assert_close(sm.g, ema_g, rtol=1e-9)
        assert_close(sm.batch_bound, ema_m2 / ema_g, rtol=1e-9)
        assert sm == est.smoothed


def test_estimator_forms_agree(rng):
    g = rng.normal(0.5, 1.0, size=(10, 3))
    sq = np.sum(g * g, axis=1)
    st = gdiv.stats(g)
    a, b, c = gdiv.Estimator(0.5), gdiv.Estimator(0.5), gdiv.Estimator(0.5)
    for _ in range(3):
        ra = a.update(g)
        rb = b.update(sq_norms=sq, batch_grad=g.sum(axis=0))
        rc = c.update(batch_size=10, sum_sq_norms=st.sum_sq_norms, sq_norm_of_sum=st.sq_norm_of_sum)
    for k in ("m2", "g", "batch_bound"):
        assert_close(getattr(rb, k), getattr(ra, k), rtol=1e-12)
        assert_close(getattr(rc, k), getattr(ra, k), rtol=1e-12)


def test_estimator_without_replacement(rng):
    g = rng.normal(0.5, 1.0, size=(10, 3))
    est = gdiv.Estimator(0.0, dataset_size=100)
    sm = est.update(g)
    check(est.last, oracle_estimate(g, dataset_size=100))
    assert est.dataset_size == 100 and sm.m2 == est.last.m2


def test_estimator_two_scale_update():
    est = gdiv.Estimator(0.0)
    sm = est.update_two_scale(4, 3.0, 32, 1.2)
    assert sm.g == gdiv.estimate_two_scale(4, 3.0, 32, 1.2).g


def test_state_dict_round_trip(rng):
    a = gdiv.Estimator(0.9)
    for _ in range(5):
        a.update(rng.normal(0.5, 1.0, size=(8, 3)))
    sd = a.state_dict()
    assert set(sd) == {"beta", "steps", "ema_m2", "ema_g", "weight", "dataset_size", "skipped"}
    b = gdiv.Estimator(0.5)
    b.load_state_dict(sd)
    assert b.state_dict() == sd and b.beta == 0.9
    g = rng.normal(0.5, 1.0, size=(8, 3))
    assert a.update(g) == b.update(g)


def test_load_state_dict_rejects_bad_state():
    est = gdiv.Estimator(0.9)
    good = est.state_dict()
    with pytest.raises(gdiv.ParamError, match="steps"):
        est.load_state_dict(dict(good, steps=-1))
    with pytest.raises(gdiv.ParamError, match="weight"):
        est.load_state_dict(dict(good, steps=3, weight=0.0))
    with pytest.raises(gdiv.NonFiniteError):
        est.load_state_dict(dict(good, ema_m2=float("nan")))
    with pytest.raises(gdiv.ParamError, match="integer"):
        est.load_state_dict(dict(good, steps=1.5))
    assert est.state_dict() == good  # unchanged after failures


def _trained(rng, n=5, **kw):
    est = gdiv.Estimator(0.9, **kw)
    for _ in range(n):
        est.update(rng.normal(0.5, 1.0, size=(8, 3)))
    return est


@pytest.mark.parametrize(
    "field, value, err",
    [
        ("ema_m2", -5, gdiv.ParamError),
        ("ema_m2", float("inf"), gdiv.NonFiniteError),
        ("ema_g", float("nan"), gdiv.NonFiniteError),
        ("beta", 1.0, gdiv.ParamError),
        ("steps", -1, gdiv.ParamError),
        ("weight", 2.0, gdiv.ParamError),
        ("steps", "many", gdiv.ParamError),  # a bare int() error before
        ("ema_m2", "x", gdiv.ParamError),  # a bare float() error before
        ("beta", None, gdiv.ParamError),
        ("weight", [1.0], gdiv.ParamError),
        ("dataset_size", 0, gdiv.ParamError),
        ("dataset_size", 2.5, gdiv.ParamError),
        ("skipped", "many", gdiv.ParamError),
        ("skipped", -1, gdiv.ParamError),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_load_state_dict_names_the_bad_field(rng, field, value, err):
    est = _trained(rng, dataset_size=100)
    before = est.state_dict()
    with pytest.raises(err) as e:
        est.load_state_dict(dict(before, **{field: value}))
    assert getattr(e.value, "field", None) == field, e.value
    assert est.state_dict() == before  # atomic: nothing changed


def test_negative_ema_m2_never_gives_a_negative_bound(rng):
    est = _trained(rng)
    with pytest.raises(gdiv.ParamError, match="ema_m2"):
        est.load_state_dict(dict(est.state_dict(), ema_m2=-5))
    assert est.smoothed.batch_bound > 0


def test_load_state_dict_missing_or_not_a_dict(rng):
    est = _trained(rng)
    before = est.state_dict()
    sd = dict(before)
    del sd["ema_g"]
    with pytest.raises(gdiv.ParamError, match="ema_g") as e:
        est.load_state_dict(sd)
    assert e.value.field == "ema_g"
    with pytest.raises(gdiv.ParamError, match="mapping"):
        est.load_state_dict([1, 2, 3])  # type: ignore[arg-type]
    assert est.state_dict() == before


def test_failed_load_leaves_state_unchanged_fuzz(rng):
    """Property: whatever a tampered state holds, load_state_dict either
    succeeds or raises a gdiv error, and a failure changes nothing."""
    est = _trained(rng, n=7, dataset_size=50)
    values = [
        -5,
        -1e-300,
        0,
        0.5,
        1,
        1.5,
        2**53 + 1,
        1e308,
        float("nan"),
        float("inf"),
        -float("inf"),
        True,
        None,
        "3",
        [],
        np.float32(0.25),
        np.int64(-2),
    ]
    keys = list(est.state_dict())
    for _ in range(400):
        before = est.state_dict()
        bad = dict(before)
        for k in rng.choice(keys, size=int(rng.integers(1, 4)), replace=False):
            bad[str(k)] = values[int(rng.integers(len(values)))]
        if rng.random() < 0.1:
            del bad[keys[int(rng.integers(len(keys)))]]
        try:
            est.load_state_dict(bad)
        except gdiv.GdivError:
            assert est.state_dict() == before, bad
        else:
            assert est.state_dict()["steps"] >= 0 and est.state_dict()["ema_m2"] >= 0
            est.load_state_dict(before)  # back to a trained state for the next round


@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_estimator_pickles_through_its_state(rng, copier):
    import copy
    import pickle

    est = _trained(rng, dataset_size=100, on_nonfinite="skip")
    est.update(np.array([[np.nan, 1.0], [1.0, 1.0]]))  # one skipped batch
    twin = pickle.loads(pickle.dumps(est)) if copier == "pickle" else copy.deepcopy(est)
    assert twin.state_dict() == est.state_dict() and twin.skipped == 1 and twin.last == est.last
    g = rng.normal(0.5, 1.0, size=(8, 3))
    assert twin.update(g) == est.update(g)
    assert twin.update(np.array([[np.nan, 1.0], [1.0, 1.0]])) == est.smoothed  # still skips


def test_nonfinite_raise_or_skip():
    bad = np.array([[1.0, np.nan], [0.0, 1.0]])
    good = np.array([[1.0, 0.5], [0.5, 1.0]])
    with pytest.raises(gdiv.NonFiniteError):
        gdiv.Estimator(0.9).update(bad)
    est = gdiv.Estimator(0.9, on_nonfinite="skip")
    est.update(good)
    before = est.state_dict()
    sm = est.update(bad)
    assert est.skipped == 1 and est.steps == 1 and sm == est.smoothed
    assert {k: v for k, v in est.state_dict().items() if k != "skipped"} == {k: v for k, v in before.items() if k != "skipped"}


def test_update_argument_forms_are_exclusive():
    est = gdiv.Estimator()
    with pytest.raises(ValueError, match="exactly one"):
        est.update()
    with pytest.raises(ValueError, match="exactly one"):
        est.update(np.ones((2, 2)), sum_sq_norms=1.0, sq_norm_of_sum=1.0, batch_size=2)
    with pytest.raises(ValueError, match="both"):
        est.update(sq_norms=np.ones(2))
    with pytest.raises(ValueError, match="together"):
        est.update(sum_sq_norms=1.0)
