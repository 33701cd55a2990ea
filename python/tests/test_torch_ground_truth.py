"""gdiv.torch.DiversityMonitor against Go's reference trainer (the ground truth).

The same problem written as a torch.nn model in float64 — logistic regression
(``nn.Linear(D, 1)`` + BCE-with-logits), softmax regression
(``nn.Linear(D, K)`` + cross-entropy) and the MLP
(``Linear → Tanh → Linear`` + cross-entropy) — on the same data (a
standardized subset of testdata/digits.csv), from the same initial weights
(``reference.initial_weights`` loaded through ``param_layout(...).to_torch_state``)
and fed the same example indices (``reference.train(..., record_indices=True).batches``)
must reproduce the Go trainer's weights and its history: the smoothed m2, g,
batch bound and diversity, the learning rate and, with a policy, every batch
size the monitor decides (the test asserts that the monitor's
``batch_size`` equals the size of Go's next batch before feeding it).

Sum step (``loss_reduction="sum"``, torch lr = γ) and mean step
(``loss_reduction="mean"``, Go's MeanStep: the monitor rescales the lr with
the policy's rule from the first batch). Sampling with replacement (Go's
default; the monitor's ``sampling="replacement"``) and shuffled epochs (Go's
"shuffle"; the monitor's finite-population estimator). Norms mode and full
mode (per-example gradients through ``torch.func``).

l2 = 0 throughout: an L2 penalty added to the loss outside the modules
bypasses the per-example hooks (see gdiv.torch.monitor), and full mode's
``loss_fn`` sees one example's output, not the weights.

Tolerances: weights ‖w − w_go‖ ≤ 1e-9·‖w_go‖ and elementwise within
1e-9·max|w_go|; m2, g, batch_bound, diversity, lr within 1e-9 relative (+Inf
equal); batch sizes and no_signal exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402
from conftest import digits_standardized  # noqa: E402
from gdiv import reference as ref  # noqa: E402
from gdiv.torch import DiversityMonitor  # noqa: E402

torch.set_num_threads(1)

RTOL = 1e-9
HIDDEN = 12
STEPS = 60
SEED = 3


@pytest.fixture(scope="module")
def digits():
    return digits_standardized(300)


def torch_model(problem: str, d: int, k: int) -> nn.Module:
    if problem == "logistic":
        m = nn.Linear(d, 1)
    elif problem == "softmax":
        m = nn.Linear(d, k)
    else:
        m = nn.Sequential(nn.Linear(d, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, k))
    return m.double()


def loss_of(problem: str, reduction: str):
    if problem == "logistic":
        return lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y.to(out.dtype), reduction=reduction)
    return lambda out, y: F.cross_entropy(out, y, reduction=reduction)


def close(got, want, what: str) -> None:
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, what
    inf = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf) and np.array_equal(got[inf], want[inf]), f"{what}: infinities differ"
    fin = ~inf
    err = np.abs(got[fin] - want[fin])
    bad = err > RTOL * np.abs(want[fin])
    assert not bad.any(), f"{what}: max relative error {np.max(err / np.abs(want[fin]))} > {RTOL} at {np.flatnonzero(bad)[:5]}"


CASES = [
    pytest.param(p, s, a, "replacement", "norms", 0.9, id=f"{p}-{s}-{'adaptive' if a else 'fixed'}")
    for p in ("logistic", "softmax", "mlp")
    for s in ("sum", "mean")
    for a in (False, True)
] + [
    pytest.param("softmax", "mean", True, "shuffle", "norms", 0.9, id="softmax-mean-adaptive-shuffle"),
    pytest.param("mlp", "sum", True, "shuffle", "norms", 0.9, id="mlp-sum-adaptive-shuffle"),
    pytest.param("mlp", "mean", True, "replacement", "norms", 0.0, id="mlp-mean-adaptive-beta0"),
    pytest.param("mlp", "mean", True, "replacement", "full", 0.9, id="mlp-mean-adaptive-full"),
    pytest.param("logistic", "sum", False, "replacement", "full", 0.9, id="logistic-sum-fixed-full"),
]
# Mechanisms whose draws go row by row (Langevin, Quantize): Go's trainer
# applies them one example at a time, full mode to the (B, P) rows at once,
# both seeded by the controller's step seeds — the same draws, where Go's
# parameter layout has torch's column order (logistic: weight, then bias;
# softmax and the MLP store their weights transposed, so the same draws land
# on other coordinates there).
MECH_CASES = [
    pytest.param("logistic", step, True, "replacement", "full", 0.9, m, id=f"logistic-{step}-adaptive-full-{name}")
    for step in ("sum", "mean")
    for name, m in (("langevin", gdiv.Langevin(0.05)), ("quantize", gdiv.Quantize(4)))
]


@pytest.mark.parametrize(
    "problem, step, adaptive, sampling, mode, beta, mechanism", [pytest.param(*c.values, None, id=c.id) for c in CASES] + MECH_CASES
)
def test_monitor_reproduces_reference_trainer(digits, problem, step, adaptive, sampling, mode, beta, mechanism):
    X, y = digits
    if problem == "logistic":
        y = y % 2  # even vs odd
    n, d = X.shape
    k = None if problem == "logistic" else 10
    policy = gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0) if adaptive else None
    lr = {"sum": 0.02, "mean": 0.3}[step]
    res = ref.train(
        X,
        y,
        problem=problem,
        l2=0.0,
        hidden=HIDDEN,
        lr=lr,
        step=step,
        batch=8,
        policy=policy,
        steps=STEPS,
        sampling=sampling,
        seed=SEED,
        estimator_beta=beta,
        record_indices=True,
        classes=k,
        mechanism=mechanism,
    )
    hist = res.history
    if adaptive:  # the run must exercise the policy
        assert len(set(hist["batch"].tolist())) > 3

    w0 = ref.initial_weights(problem, d, k, hidden=HIDDEN, seed=SEED)
    layout = ref.param_layout(problem, d, k, hidden=HIDDEN)
    model = torch_model(problem, d, 10)
    model.load_state_dict({name: torch.as_tensor(v) for name, v in layout.to_torch_state(w0).items()})
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = loss_of(problem, step)
    monitor = DiversityMonitor(
        model,
        loss_reduction=step,
        mode=mode,
        policy=res.policy,  # the policy Go applied (min_batch 2, max_batch capped)
        optimizer=opt,
        batch_size=8,
        estimator_beta=beta,
        dataset_size=n,
        sampling=sampling,
        loss_fn=loss_of(problem, "mean") if mode == "full" else None,
        mechanism=mechanism,
        seed=SEED,
    )
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    recs = []
    for j, idx in enumerate(res.batches):
        assert monitor.batch_size == len(idx), f"step {j + 1}: monitor decided {monitor.batch_size}, Go used {len(idx)}"
        ii = torch.as_tensor(idx)
        opt.zero_grad(set_to_none=True)
        if mode == "full":
            rec = monitor.step(inputs=Xt[ii], targets=yt[ii])
        else:
            loss_fn(model(Xt[ii]), yt[ii]).backward()
            rec = monitor.step()
        recs.append(rec)
        opt.step()

    assert [r["skipped"] for r in recs] == [None] * STEPS
    w = layout.from_torch_state(model.state_dict())
    assert np.linalg.norm(w - res.weights) <= RTOL * np.linalg.norm(res.weights)
    assert np.max(np.abs(w - res.weights)) <= RTOL * np.max(np.abs(res.weights))
    got = {key: [r[key] for r in recs] for key in recs[0]}
    np.testing.assert_array_equal(got["batch"], hist["batch"])
    np.testing.assert_array_equal(got["examples"], hist["examples"])
    np.testing.assert_array_equal(got["no_signal"], hist["no_signal"])
    for key in ("m2", "g", "batch_bound", "diversity", "lr"):
        close(got[key], hist[key], key)
    # The smoothed state ends where Go's does.
    close([monitor.estimator.smoothed.batch_bound], [res.estimate.batch_bound], "final batch_bound")


def test_reference_policy_adjustments_match(digits):
    """The monitor adjusts a policy as Go's trainer does: min_batch ≥ 2,
    max_batch None → n; and picks Go's initial batch (the smallest legal)."""
    X, y = digits
    n = X.shape[0]
    pol = gdiv.BatchSizePolicy(min_batch=1, multiple_of=3)
    res = ref.train(X, y, problem="softmax", l2=0.0, lr=0.01, policy=pol, steps=2, record_indices=True)
    mon = DiversityMonitor(nn.Linear(64, 10).double(), policy=pol, dataset_size=n, sampling="replacement")
    assert mon.policy == res.policy
    assert mon.batch_size == len(res.batches[0]) == 3


@pytest.mark.parametrize("problem", ["softmax", "mlp"])
def test_adascale_rule_matches_the_reference_trainer(digits, problem):
    """lr_rule="adascale": the LR factor follows the estimate (AdaScale's
    gain, between 1 and the linear rule's B/B₀); the monitor and Go's trainer
    set the same rate at every step and end at the same weights."""
    X, y = digits
    n, d = X.shape
    policy = gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0, lr_rule="adascale")
    res = ref.train(
        X, y, problem=problem, l2=0.0, hidden=HIDDEN, lr=0.3, step="mean", batch=8, policy=policy, steps=STEPS,
        seed=SEED, estimator_beta=0.9, record_indices=True, classes=10,
    )  # fmt: skip
    hist = res.history
    w0 = ref.initial_weights(problem, d, 10, hidden=HIDDEN, seed=SEED)
    layout = ref.param_layout(problem, d, 10, hidden=HIDDEN)
    model = torch_model(problem, d, 10)
    model.load_state_dict({name: torch.as_tensor(v) for name, v in layout.to_torch_state(w0).items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    monitor = DiversityMonitor(
        model, policy=res.policy, optimizer=opt, batch_size=8, estimator_beta=0.9, dataset_size=n, sampling="replacement", seed=SEED
    )
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    recs = []
    for idx in res.batches:
        assert monitor.batch_size == len(idx)
        ii = torch.as_tensor(idx)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(Xt[ii]), yt[ii]).backward()
        recs.append(monitor.step())
        opt.step()
    close([r["lr"] for r in recs], hist["lr"], "lr")
    close([r["batch_bound"] for r in recs], hist["batch_bound"], "batch_bound")
    w = layout.from_torch_state(model.state_dict())
    assert np.linalg.norm(w - res.weights) <= RTOL * np.linalg.norm(res.weights)
    # the gain lies between 1 and the linear rule's, and is not either one throughout
    factors = np.array([r["lr"] for r in recs]) / 0.3
    linear = np.array([r["batch"] for r in recs]) / recs[0]["batch"]
    assert np.all(factors >= 1 - 1e-12) and np.all(factors <= linear + 1e-12)
    assert np.any((factors > 1 + 1e-6) & (factors < linear - 1e-6))


@pytest.mark.parametrize("rule", ["linear", "adascale"])
def test_lr_warmup_matches_the_reference_trainer(digits, rule):
    """lr_warmup_steps: after each batch change the rate ramps over W steps
    (Go's ControllerSettings.LRWarmupSteps); the monitor and Go's trainer
    set the same rate at every step, decide the same batches and end at the
    same weights, and the ramp holds some rates below the rule's."""
    X, y = digits
    n, d = X.shape
    W = 4
    policy = gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0, lr_rule=rule)
    res = ref.train(
        X, y, problem="mlp", l2=0.0, hidden=HIDDEN, lr=0.3, step="mean", batch=8, policy=policy, steps=STEPS,
        seed=SEED, estimator_beta=0.9, record_indices=True, classes=10, lr_warmup_steps=W,
    )  # fmt: skip
    hist = res.history
    assert len(set(hist["batch"].tolist())) > 3
    w0 = ref.initial_weights("mlp", d, 10, hidden=HIDDEN, seed=SEED)
    layout = ref.param_layout("mlp", d, 10, hidden=HIDDEN)
    model = torch_model("mlp", d, 10)
    model.load_state_dict({name: torch.as_tensor(v) for name, v in layout.to_torch_state(w0).items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    monitor = DiversityMonitor(
        model, policy=res.policy, optimizer=opt, batch_size=8, estimator_beta=0.9, dataset_size=n, sampling="replacement",
        seed=SEED, lr_warmup_steps=W,
    )  # fmt: skip
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    recs = []
    for j, idx in enumerate(res.batches):
        assert monitor.batch_size == len(idx), f"step {j + 1}: monitor decided {monitor.batch_size}, Go used {len(idx)}"
        ii = torch.as_tensor(idx)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(Xt[ii]), yt[ii]).backward()
        recs.append(monitor.step())
        opt.step()
    close([r["lr"] for r in recs], hist["lr"], "lr")
    close([r["batch_bound"] for r in recs], hist["batch_bound"], "batch_bound")
    w = layout.from_torch_state(model.state_dict())
    assert np.linalg.norm(w - res.weights) <= RTOL * np.linalg.norm(res.weights)
    if rule == "linear":  # the ramp holds rates below the linear rule's after an increase
        factors = np.array([r["lr"] for r in recs]) / 0.3
        linear = np.array([r["batch"] for r in recs]) / recs[0]["batch"]
        assert np.all(factors <= linear + 1e-12) and np.sum(factors < linear - 1e-6) >= W
