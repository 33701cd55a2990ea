"""gdiv.reference: the Go reference trainer from Python.

Checks determinism, fixed and adaptive batches, bit-for-bit replay of the
recorded batches through reference.step, an independent NumPy oracle of the
per-example losses/gradients and of one SGD step (and a torch model loaded
through ParamLayout), the seeded initial weights, the history, the errors,
and agreement with the CLI (`gdiv train`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gdiv
from conftest import needs_torch, torch
from gdiv import reference as ref

ROOT = Path(__file__).resolve().parents[2]


def make_data(n=120, d=5, k=3, seed=0):
    """Features and learnable class labels (a noisy linear rule)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.argmax(X @ rng.normal(size=(d, k)) + 0.5 * rng.normal(size=(n, k)), axis=1)
    return X, y


def labels_for(problem, X, rng):
    if problem == "leastsquares":
        return X @ rng.normal(size=X.shape[1]) + 0.1 * rng.normal(size=X.shape[0])
    if problem == "logistic":
        return (X[:, 0] + 0.3 * rng.normal(size=X.shape[0]) > 0).astype(np.int64)
    return rng.integers(0, 3, size=X.shape[0])


# ------------------------------------------------------------ NumPy oracle --


def _softmax_rows(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def oracle_loss_grad(problem, X, y, w, l2, intercept=True, hidden=None):
    """Per-example losses and gradients, written from the formulas and Go's
    documented layouts (gdiv/train/problem.go, gdiv/train/mlp.go) — not from
    ParamLayout."""
    n, d = X.shape
    s = d + int(intercept)
    Xt = np.hstack([X, np.ones((n, 1))]) if intercept else X
    if problem in ("leastsquares", "logistic", "softmax"):
        k = 3 if problem == "softmax" else 1
        Wfull = w.reshape(k, s)
        W = Wfull[:, :d]
        pen = 0.5 * l2 * np.sum(W * W)
        z = Xt @ Wfull.T  # (n, k)
        if problem == "leastsquares":
            r = z[:, 0] - y
            loss = 0.5 * r * r
            coef = r[:, None]
        elif problem == "logistic":
            zz = z[:, 0]
            loss = np.logaddexp(0, zz) - y * zz
            coef = (1 / (1 + np.exp(-zz)) - y)[:, None]
        else:
            m = z.max(axis=1)
            loss = m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - z[np.arange(n), y]
            coef = _softmax_rows(z)
            coef[np.arange(n), y] -= 1
        grads = coef[:, :, None] * Xt[:, None, :]  # (n, k, s)
        reg = np.zeros_like(Wfull)
        reg[:, :d] = l2 * W
        grads = grads + reg[None]
        return loss + pen, grads.reshape(n, -1)
    # mlp, tanh
    h, k = hidden, 3
    s2 = h + int(intercept)
    W1 = w[: h * s].reshape(h, s)
    W2 = w[h * s :].reshape(k, s2)
    a = Xt @ W1.T
    hv = np.tanh(a)
    ht = np.hstack([hv, np.ones((n, 1))]) if intercept else hv
    z = ht @ W2.T
    m = z.max(axis=1)
    loss = m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - z[np.arange(n), y]
    loss = loss + 0.5 * l2 * (np.sum(W1[:, :d] ** 2) + np.sum(W2[:, :h] ** 2))
    dz = _softmax_rows(z)
    dz[np.arange(n), y] -= 1
    g2 = dz[:, :, None] * ht[:, None, :]
    g2[:, :, :h] += l2 * W2[:, :h]
    da = (dz @ W2[:, :h]) * (1 - hv * hv)
    g1 = da[:, :, None] * Xt[:, None, :]
    g1[:, :, :d] += l2 * W1[:, :d]
    return loss, np.hstack([g1.reshape(n, -1), g2.reshape(n, -1)])


PROBLEM_KW = {
    "leastsquares": {},
    "logistic": {},
    "softmax": {},
    "mlp": {"hidden": 4},
}


@pytest.mark.parametrize("intercept", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("problem", list(PROBLEM_KW))
def test_loss_grad_matches_numpy_oracle(problem, intercept, rng):
    X = rng.normal(size=(25, 4))
    y = labels_for(problem, X, rng)
    lay = ref.param_layout(problem, 4, 3 if problem in ("softmax", "mlp") else None, intercept=intercept, **PROBLEM_KW[problem])
    w = rng.normal(scale=0.5, size=lay.n_params)
    losses, grads = ref.loss_grad(X, y, w, problem=problem, l2=0.01, intercept=intercept, **PROBLEM_KW[problem])
    want_l, want_g = oracle_loss_grad(problem, X, y, w, 0.01, intercept, PROBLEM_KW[problem].get("hidden"))
    np.testing.assert_allclose(losses, want_l, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads, want_g, rtol=1e-11, atol=1e-13)
    # A subset, with repeats, in the given order.
    idx = np.array([3, 0, 3, 24])
    l2_, g2_ = ref.loss_grad(X, y, w, problem=problem, l2=0.01, intercept=intercept, indices=idx, **PROBLEM_KW[problem])
    np.testing.assert_array_equal(l2_, losses[idx])
    np.testing.assert_array_equal(g2_, grads[idx])


def test_one_softmax_step_matches_numpy(rng):
    X, y = make_data(40, 6, 3)
    w = rng.normal(scale=0.3, size=3 * 7)
    idx = np.array([5, 1, 5, 39, 22])
    _, g = oracle_loss_grad("softmax", X, y, w, 1e-3)
    for step_rule, scale in (("sum", 0.1), ("mean", 0.1 / len(idx))):
        got = ref.step(X, y, w, idx, lr=0.1, step=step_rule, l2=1e-3)
        np.testing.assert_allclose(got, w - scale * g[idx].sum(axis=0), rtol=1e-13, atol=1e-15)
    # Projection onto the ball of radius 0.5 (eq. 3).
    got = ref.step(X, y, w, idx, lr=0.1, l2=1e-3, radius=0.5)
    free = w - 0.1 * g[idx].sum(axis=0)
    np.testing.assert_allclose(got, free * 0.5 / np.linalg.norm(free), rtol=1e-13)
    assert np.linalg.norm(got) == pytest.approx(0.5, rel=1e-14)


@needs_torch
@pytest.mark.parametrize("problem", ["softmax", "mlp", "logistic"])
def test_param_layout_loads_into_torch(problem, rng):
    """The torch model of ParamLayout.torch_keys, loaded with to_torch_state,
    computes Go's losses (an oracle independent of the NumPy one)."""
    nn = torch.nn
    X = rng.normal(size=(30, 5))
    y = labels_for(problem, X, rng)
    k = 3 if problem != "logistic" else None
    lay = ref.param_layout(problem, 5, k, hidden=6)
    w = ref.initial_weights(problem, 5, k, hidden=6, seed=9) + rng.normal(scale=0.1, size=lay.n_params)
    if problem == "mlp":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    else:
        model = nn.Linear(5, 3 if problem == "softmax" else 1).double()
    state = lay.to_torch_state(w)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in state.values())
    model.load_state_dict(state)  # torch tensors, as load_state_dict wants
    z = model(torch.from_numpy(X))
    yt = torch.from_numpy(np.asarray(y))
    if problem == "logistic":
        ce = nn.functional.binary_cross_entropy_with_logits(z[:, 0], yt.double(), reduction="none")
    else:
        ce = nn.functional.cross_entropy(z, yt, reduction="none")
    pen = sum(float((m.weight.detach() ** 2).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    want = ce.detach().numpy() + 0.5 * 1e-3 * pen
    losses, _ = ref.loss_grad(X, y, w, problem=problem, l2=1e-3, hidden=6)
    np.testing.assert_allclose(losses, want, rtol=1e-12)
    np.testing.assert_array_equal(lay.from_torch_state(model.state_dict()), w)


def test_param_layout_descriptions():
    lay = ref.param_layout("softmax", 4, 3)
    assert lay.n_params == 15 and len(lay.layers) == 1
    L = lay.layers[0]
    assert (L.offset, L.out_features, L.in_features, L.bias, L.stride) == (0, 3, 4, True, 5)
    w = np.arange(15.0)
    np.testing.assert_array_equal(L.weight(w), [[0, 1, 2, 3], [5, 6, 7, 8], [10, 11, 12, 13]])
    np.testing.assert_array_equal(L.bias_of(w), [4, 9, 14])
    np.testing.assert_array_equal(lay.pack(lay.unpack(w)), w)

    m = ref.param_layout("mlp", 4, 3, hidden=5, intercept=False)
    assert m.n_params == 5 * 4 + 3 * 5
    assert [(L.name, L.offset, L.size) for L in m.layers] == [("hidden", 0, 20), ("output", 20, 15)]
    assert set(m.unpack(np.zeros(35))) == {"hidden", "output"}
    assert "mlp: 35 parameters" in str(m)

    for problem, n_params in (("leastsquares", 5), ("logistic", 5)):
        assert ref.param_layout(problem, 4).n_params == n_params
    with pytest.raises(ValueError, match="n_classes"):
        ref.param_layout("softmax", 4)
    with pytest.raises(ValueError, match="problem"):
        ref.param_layout("svm", 4)
    with pytest.raises(gdiv.ShapeError):
        lay.unpack(np.zeros(14))


@needs_torch
def test_to_torch_state_is_what_load_state_dict_takes():
    nn = torch.nn
    lay = ref.param_layout("softmax", 4, 3)
    w = np.arange(15.0)
    state = lay.to_torch_state(w)
    assert set(state) == {"weight", "bias"} and all(isinstance(v, torch.Tensor) for v in state.values())
    model = nn.Linear(4, 3)  # float32: load_state_dict converts
    model.load_state_dict(state)
    np.testing.assert_array_equal(model.weight.detach().numpy(), [[0, 1, 2, 3], [5, 6, 7, 8], [10, 11, 12, 13]])
    np.testing.assert_array_equal(model.bias.detach().numpy(), [4, 9, 14])
    state["weight"][0, 0] = 99.0
    assert w[0] == 0.0  # copies, not views of w
    assert lay.to_torch_state(w, dtype=torch.float32)["bias"].dtype == torch.float32
    m = ref.param_layout("mlp", 4, 3, hidden=5, intercept=False)
    state = m.to_torch_state(np.zeros(35))
    assert set(state) == {"0.weight", "2.weight"}
    nn.Sequential(nn.Linear(4, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False)).load_state_dict(state)
    with pytest.raises(gdiv.ShapeError):
        lay.to_torch_state(np.zeros(14))


# ---------------------------------------------------------- initial weights --


def test_initial_weights_deterministic_per_seed():
    a = ref.initial_weights("mlp", 6, 4, hidden=8, seed=1)
    b = ref.initial_weights("mlp", 6, 4, hidden=8, seed=1)
    c = ref.initial_weights("mlp", 6, 4, hidden=8, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    lay = ref.param_layout("mlp", 6, 4, hidden=8)
    for L in lay.layers:
        np.testing.assert_array_equal(L.bias_of(a), 0)  # zero biases
        assert np.all(L.weight(a) != 0)
    # Glorot scale of the hidden layer: N(0, 2/(D+H)).
    relu = ref.initial_weights("mlp", 600, 4, hidden=200, activation="relu", seed=1)
    w1 = ref.param_layout("mlp", 600, 4, hidden=200, activation="relu").layers[0].weight(relu)
    assert np.std(w1) == pytest.approx(np.sqrt(2 / 600), rel=0.02)  # He for relu
    for problem, k in (("softmax", 3), ("logistic", None), ("leastsquares", None)):
        np.testing.assert_array_equal(ref.initial_weights(problem, 6, k, seed=5), 0)


def test_train_starts_from_initial_weights():
    X, y = make_data(60, 4, 3)
    kw = dict(problem="mlp", hidden=5, lr=0.05, batch=4, steps=20, seed=7, record_indices=True)
    a = ref.train(X, y, **kw)
    b = ref.train(X, y, w0=ref.initial_weights("mlp", 4, 3, hidden=5, seed=7), **kw)
    np.testing.assert_array_equal(a.weights, b.weights)
    w = ref.initial_weights("mlp", 4, 3, hidden=5, seed=7)
    for k, idx in enumerate(a.batches):
        w = ref.step(X, y, w, idx, problem="mlp", hidden=5, lr=a.history["lr"][k])
    np.testing.assert_array_equal(w, a.weights)


# -------------------------------------------------------------------- train --


def test_train_deterministic():
    X, y = make_data()
    kw = dict(
        lr=0.05,
        policy=gdiv.BatchSizePolicy(max_batch=64),
        examples=1500,
        seed=3,
        record_indices=True,
        estimator_beta=0.9,
        mechanism=gdiv.Langevin(0.01),
        sampling="shuffle",
    )
    a, b = ref.train(X, y, **kw), ref.train(X, y, **kw)
    np.testing.assert_array_equal(a.weights, b.weights)
    for key in ref.HISTORY_FIELDS:
        np.testing.assert_array_equal(a.history[key], b.history[key])
    assert len(a.batches) == len(b.batches) and all(np.array_equal(p, q) for p, q in zip(a.batches, b.batches))
    assert (a.initial_loss, a.final_loss, a.estimate) == (b.initial_loss, b.final_loss, b.estimate)
    c = ref.train(X, y, **dict(kw, seed=4))
    assert not np.array_equal(a.batches[0], c.batches[0])


def test_mechanism_does_not_change_batches():
    X, y = make_data()
    kw = dict(lr=0.05, batch=10, steps=30, seed=3, record_indices=True)
    plain = ref.train(X, y, **kw)
    drop = ref.train(X, y, mechanism=gdiv.Dropout(0.5), **kw)
    assert all(np.array_equal(p, q) for p, q in zip(plain.batches, drop.batches))
    assert not np.array_equal(plain.weights, drop.weights)


def test_fixed_batch():
    X, y = make_data(100)
    res = ref.train(X, y, lr=0.05, batch=7, examples=100, seed=1, record_indices=True, sampling="shuffle")
    assert res.steps == 15 and res.examples == 105  # ⌈100/7⌉ steps, the last batch whole
    np.testing.assert_array_equal(res.history["batch"], 7)
    assert [len(b) for b in res.batches] == [7] * 15
    # Shuffle: the first epoch (100 examples) has each example once.
    first = np.concatenate(res.batches)[:100]
    np.testing.assert_array_equal(np.sort(first), np.arange(100))
    assert res.policy is None
    assert res.final_loss < res.initial_loss


def test_adaptive_batch():
    X, y = make_data(200)
    pol = gdiv.BatchSizePolicy(max_growth=2.0)
    res = ref.train(X, y, lr=0.05, policy=pol, examples=4000, seed=2, record_indices=True, estimator_beta=0.5)
    h = res.history
    assert h["batch"][0] == 2  # the smallest batch the policy allows (min_batch raised to 2)
    assert h["batch"].max() > 16
    assert res.policy.min_batch == 2 and res.policy.max_batch == 200
    assert [len(b) for b in res.batches] == h["batch"].tolist()
    assert np.concatenate(res.batches).min() >= 0 and np.concatenate(res.batches).max() < 200
    assert res.examples == h["batch"].sum() >= 4000
    assert res.examples - h["batch"][-1] < 4000


@pytest.mark.parametrize(
    "problem,kw",
    [
        ("softmax", dict(step="sum", sampling="replacement")),
        ("softmax", dict(step="mean", sampling="shuffle", radius=1.5)),
        ("leastsquares", dict(step="sum", intercept=False)),
        ("logistic", dict(step="mean", l2=0.0)),
        ("mlp", dict(step="mean", hidden=6, activation="relu")),
    ],
    ids=["softmax-sum", "softmax-mean-shuffle-radius", "ls-nobias", "logistic-mean", "mlp-relu"],
)
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "policy"])
def test_replay_batches_bit_for_bit(problem, kw, adaptive, rng):
    X = rng.normal(size=(90, 5))
    y = labels_for(problem, X, rng)
    kw = dict(kw)
    step_rule = kw.pop("step")
    sampling = kw.pop("sampling", "replacement")
    radius = kw.pop("radius", 0.0)
    lr = 0.01 if problem == "leastsquares" else 0.05
    run = dict(problem=problem, lr=lr, step=step_rule, sampling=sampling, radius=radius, seed=11, record_indices=True, **kw)
    if adaptive:
        run.update(policy=gdiv.BatchSizePolicy(max_batch=32, lr_rule="sqrt"), examples=800, estimator_beta=0.7)
    else:
        run.update(batch=6, steps=60)
    res = ref.train(X, y, **run)
    k = 3 if problem in ("softmax", "mlp") else None
    w = ref.initial_weights(problem, 5, k, seed=11, **{a: kw[a] for a in ("hidden", "activation", "intercept") if a in kw})
    prob = {a: kw[a] for a in ("hidden", "activation", "intercept", "l2") if a in kw}
    for i, idx in enumerate(res.batches):
        w = ref.step(X, y, w, idx, problem=problem, lr=res.history["lr"][i], step=step_rule, radius=radius, **prob)
    np.testing.assert_array_equal(w, res.weights)
    if adaptive and step_rule == "mean":  # lr follows the policy's rule from the initial batch
        b0 = res.history["batch"][0]
        want = [res.policy.scale_lr(lr, int(b0), int(b)) for b in res.history["batch"]]
        np.testing.assert_array_equal(res.history["lr"], want)


def test_history_fields():
    X, y = make_data(80)
    res = ref.train(X, y, lr=0.05, batch=8, steps=25, eval_every=5, seed=1, estimator_beta=0.9)
    h = res.history
    assert tuple(h) == ref.HISTORY_FIELDS
    assert all(len(v) == 25 for v in h.values())
    for key in ("step", "examples", "batch"):
        assert h[key].dtype == np.int64
    for key in ("evaluated", "no_signal", "has_estimate"):
        assert h[key].dtype == bool
    np.testing.assert_array_equal(h["step"], np.arange(1, 26))
    np.testing.assert_array_equal(h["examples"], np.cumsum(h["batch"]))
    np.testing.assert_array_equal(h["evaluated"], np.arange(1, 26) % 5 == 0)
    np.testing.assert_array_equal(h["diversity"], h["batch_bound"] / 80)
    np.testing.assert_array_equal(h["lr"], 0.05)
    assert h["has_estimate"].all()
    assert h["loss"][-1] == res.final_loss
    assert h["loss"][0] == res.initial_loss  # carried forward until the first evaluation
    assert res.estimate.batch_bound == h["batch_bound"][-1] and res.estimate.batch == 0
    assert np.all(np.isfinite(h["batch_loss"]))
    assert res.batches is None
    # Batches of one have no estimate.
    one = ref.train(X, y, lr=0.05, batch=1, steps=3)
    assert not one.history["has_estimate"].any() and one.history["no_signal"].all()
    assert np.isinf(one.history["batch_bound"]).all()


def test_float32_and_array_likes_match_float64(rng):
    X = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    kw = dict(lr=0.05, batch=5, steps=20, seed=2)
    a = ref.train(X, y, **kw)
    b = ref.train(X.astype(np.float64), y.astype(np.float64), **kw)
    c = ref.train(X.astype(np.float64).tolist(), y.tolist(), **kw)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.weights, c.weights)
    X0 = X.copy()
    ref.train(X, y, **kw)
    np.testing.assert_array_equal(X, X0)  # read, never written


@needs_torch
def test_torch_cpu_inputs(rng):
    X = rng.normal(size=(40, 3))
    y = rng.integers(0, 2, size=40)
    kw = dict(problem="logistic", lr=0.1, batch=4, steps=10)
    a = ref.train(torch.from_numpy(X), torch.from_numpy(y), **kw)
    b = ref.train(X, y, **kw)
    np.testing.assert_array_equal(a.weights, b.weights)


# ------------------------------------------------------------------- errors --


def test_errors_are_named(rng):
    X, y = make_data(30, 3, 3)
    ok = dict(lr=0.1, batch=4, steps=5)
    with pytest.raises(gdiv.ParamError, match="learning rate = -0.1"):
        ref.train(X, y, **dict(ok, lr=-0.1))
    with pytest.raises(gdiv.ParamError, match="learning rate = 0"):
        ref.train(X, y, **dict(ok, lr=0))
    with pytest.raises(TypeError, match="lr"):
        ref.train(X, y, batch=4, steps=5)  # lr is required
    with pytest.raises(ValueError, match="problem = 'svm'"):
        ref.train(X, y, problem="svm", **ok)
    bad = y.copy()
    bad[4] = 3
    with pytest.raises(gdiv.LabelError, match="row 4: 3 is not a class index"):
        ref.train(X, bad, classes=3, **ok)
    binary = (y > 0).astype(np.int64)
    binary[4] = 2
    with pytest.raises(gdiv.LabelError, match="row 4: 2 is not a class index"):
        ref.train(X, binary, problem="logistic", **ok)
    half = y.astype(float)
    half[2] = 0.5
    with pytest.raises(gdiv.LabelError, match="row 2"):
        ref.train(X, half, **ok)
    with pytest.raises(gdiv.ShapeError, match="X has 30 rows but y has 29"):
        ref.train(X, y[:-1], **ok)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(gdiv.NonFiniteError, match="row 3, column 1"):
        ref.train(Xn, y, **ok)
    yn = y.astype(float)
    yn[7] = np.inf
    with pytest.raises(gdiv.NonFiniteError, match="labels .* row 7"):
        ref.train(X, yn, problem="leastsquares", **ok)
    with pytest.raises(gdiv.NonFiniteError, match="at step"):
        ref.train(X * 1e3, X[:, 0] * 1e3, problem="leastsquares", lr=10.0, batch=4, steps=50)
    with pytest.raises(gdiv.ParamError, match="stopping rule"):
        ref.train(X, y, lr=0.1, batch=4)
    with pytest.raises(gdiv.ParamError, match="batch = 0"):
        ref.train(X, y, lr=0.1, steps=4)
    with pytest.raises(gdiv.ParamError, match="exceeds the 30 examples"):
        ref.train(X, y, lr=0.1, batch=40, steps=4, sampling="shuffle")
    with pytest.raises(gdiv.ShapeError, match="w0"):
        ref.train(X, y, w0=np.zeros(5), **ok)
    with pytest.raises(ValueError, match="step = 'avg'"):
        ref.train(X, y, step="avg", **ok)
    with pytest.raises(ValueError, match="sampling"):
        ref.train(X, y, sampling="stratified", **ok)
    with pytest.raises(TypeError, match="policy"):
        ref.train(X, y, policy={"delta": 1}, **ok)
    with pytest.raises(TypeError, match="mechanism"):
        ref.train(X, y, mechanism="dropout", **ok)
    with pytest.raises(ValueError, match="seed"):
        ref.train(X, y, seed=-1, **ok)
    with pytest.raises(gdiv.ParamError, match="estimator beta"):
        ref.train(X, y, estimator_beta=1.0, **ok)
    with pytest.raises(gdiv.ParamError, match="initial batch = 3"):
        ref.train(X, y, lr=0.1, batch=3, steps=5, policy=gdiv.BatchSizePolicy(multiple_of=2))
    with pytest.raises(ValueError, match="C-contiguous"):
        ref.train(np.asfortranarray(X), y, **ok)
    with pytest.raises(gdiv.EmptyInputError):
        ref.train(X[:0], y[:0], **ok)


def test_step_and_loss_grad_errors():
    X, y = make_data(30, 3, 3)
    w = np.zeros(12)
    with pytest.raises(gdiv.ParamError, match=r"indices\[1\] = 50 is outside \[0, 30\)"):
        ref.step(X, y, w, [1, 50], lr=0.1)
    with pytest.raises(gdiv.ParamError, match=r"indices\[0\] = -1"):
        ref.loss_grad(X, y, w, indices=[-1])
    with pytest.raises(TypeError, match="indices"):
        ref.step(X, y, w, [1.0, 2.0], lr=0.1)
    with pytest.raises(gdiv.EmptyInputError):
        ref.step(X, y, w, [], lr=0.1)
    with pytest.raises(gdiv.ParamError, match="learning rate"):
        ref.step(X, y, w, [1], lr=0.0)
    with pytest.raises(gdiv.ShapeError, match="w has shape"):
        ref.loss_grad(X, y, np.zeros(11))
    with pytest.raises(gdiv.NonFiniteError, match=r"w\[2\]"):
        ref.loss_grad(X, y, np.array([0, 0, np.nan] + [0] * 9))
    with pytest.raises(gdiv.NonFiniteError, match="loss of example 0"):
        ref.step(X, y, np.full(12, 1e200), [0, 1], lr=0.1, l2=1.0)


# ---------------------------------------------------------------------- CLI --


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    go = shutil.which(os.environ.get("GO", "go"))
    if go is None:
        pytest.skip("the go command is not on PATH")
    exe = tmp_path_factory.mktemp("cli") / "gdiv"
    subprocess.run([go, "build", "-o", str(exe), "./cmd/gdiv"], cwd=ROOT, check=True, capture_output=True)
    return exe


def run_cli(exe, csv, *args):
    out = subprocess.run(
        [str(exe), "train", "--data", str(csv), "--no-standardize", "--quiet", "--format", "json", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    "problem,cli_args,kw",
    [
        ("softmax", ["--batch", "8", "--steps", "40"], dict(batch=8, steps=40)),
        (
            "leastsquares",
            ["--batch", "5", "--epochs", "2", "--step", "mean", "--sampling", "shuffle"],
            dict(batch=5, examples=160, step="mean", sampling="shuffle"),
        ),
        ("logistic", ["--policy", "diversity", "--max-batch", "32", "--epochs", "10"], dict(policy=gdiv.BatchSizePolicy(max_batch=32), examples=800)),
        (
            "mlp",
            ["--batch", "4", "--steps", "30", "--hidden", "6", "--mechanism", "dropout", "--p", "0.3"],
            dict(batch=4, steps=30, hidden=6, mechanism=gdiv.Dropout(0.3)),
        ),
    ],
    ids=["softmax", "leastsquares-mean-shuffle", "logistic-policy", "mlp-dropout"],
)
def test_cli_and_python_agree(cli, tmp_path, problem, cli_args, kw, rng):
    """`gdiv train` on a CSV of the same X, y gives the same losses: same
    seed, same streams (the MLP's initial weights included), no
    standardization."""
    X = rng.normal(size=(80, 4))
    y = labels_for(problem, X, rng)
    csv = tmp_path / "data.csv"
    np.savetxt(csv, np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    classes = {"leastsquares": "0", "logistic": "2"}.get(problem, "3")
    got = run_cli(cli, csv, "--problem", problem, "--classes", classes, "--lr", "0.03", "--seed", "5", "--l2", "0.001", "--beta", "0.9", *cli_args)
    res = ref.train(X, y, problem=problem, lr=0.03, seed=5, l2=0.001, estimator_beta=0.9, **kw)
    assert got["steps"] == res.steps and got["examples"] == res.examples
    assert got["initial_loss"] == res.initial_loss
    assert got["final_loss"] == res.final_loss
    assert got["final_batch"] == res.history["batch"][-1]


def test_threads_run_independent_trainings():
    """Calls release the GIL; concurrent runs give the serial results."""
    import threading

    X, y = make_data(100)
    seeds = list(range(8))
    kw = dict(lr=0.05, policy=gdiv.BatchSizePolicy(max_batch=50), examples=2000, estimator_beta=0.9)
    want = {s: ref.train(X, y, seed=s, **kw).weights for s in seeds}
    got, errors = {}, []

    def work(s):
        try:
            got[s] = ref.train(X, y, seed=s, **kw).weights
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in seeds:
        np.testing.assert_array_equal(got[s], want[s])


# ---------------------------------------------------------------- progress --


def test_train_progress_on_stderr(capfd):
    X, y = make_data(60, 4, 3)
    ref.train(X, y, lr=0.05, batch=4, steps=200, progress=True)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("train: ")]
    assert 2 <= len(lines) <= 22 and "100.0%" in lines[-1] and "step    200" in lines[-1], err
    ref.train(X, y, lr=0.05, batch=4, steps=50, progress=False)
    ref.train(X, y, lr=0.05, batch=4, steps=50)  # default: stderr is not a terminal here
    assert "train: " not in capfd.readouterr().err
    with pytest.raises(TypeError, match="progress"):
        ref.train(X, y, lr=0.05, batch=4, steps=5, progress="yes")


# -------------------------------------------------------------------- plots --


def test_plot_history_draws_only_evaluated_losses(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    import gdiv.plot

    X, y = make_data(60, 4, 3)
    res = ref.train(X, y, lr=0.05, batch=4, steps=40, eval_every=10)
    ev = res.history["evaluated"]
    assert 0 < ev.sum() < len(ev)  # some steps carry the loss forward
    drawn = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), real_savefig(self, *a, **k))[1])
    gdiv.plot.history(res.history, tmp_path / "h.png")
    (line,) = drawn[0].axes[0].get_lines()
    np.testing.assert_array_equal(line.get_xdata(), res.history["examples"][ev])
    np.testing.assert_array_equal(line.get_ydata(), res.history["loss"][ev])
    assert (tmp_path / "h.png").stat().st_size > 0
