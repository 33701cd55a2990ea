"""The monitored step as one controller call, and the misuses it refuses
(issue 10: one Go call per step; issue 15: no silent wrong number, no
half-loaded state)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402
import gdiv._bridge as bridge  # noqa: E402
from gdiv.torch import CaptureError, DiversityMonitor  # noqa: E402

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def batch(b: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (b,), generator=g)


def backward(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


class CountingLib:
    """Counts every call into Go made through gdiv._bridge.lib."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list = []
        for name in bridge._NAMES:
            fn = getattr(bridge.lib, name)
            monkeypatch.setattr(bridge.lib, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def counted(*a, **k):
            self.calls.append(name)
            return fn(*a, **k)

        return counted


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(policy=gdiv.BatchSizePolicy(max_batch=64)),
        dict(policy=gdiv.BatchSizePolicy(max_batch=64, lr_rule="sqrt"), mechanism=gdiv.Langevin(0.05), dataset_size=100),
    ],
    ids=["measure", "policy", "policy-langevin-shuffle"],
)
def test_norms_mode_step_makes_one_go_call(monkeypatch, kw):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = DiversityMonitor(model, optimizer=opt, **kw)
    counter = CountingLib(monkeypatch)
    for k in range(4):
        x, y = batch(b=mon.batch_size or 8, seed=k)
        loss = backward(model, x, y)
        before = len(counter.calls)
        rec = mon.step(loss=loss)
        assert counter.calls[before:] == ["ControllerObserve"], counter.calls[before:]
        assert rec["skipped"] is None
        opt.step()


def test_full_mode_step_makes_two_go_calls(monkeypatch):
    """Full mode: the mechanism on the rows (in full_backward), the rows'
    sums (Stats) and the controller."""
    model = mlp()
    ce = F.cross_entropy
    mon = DiversityMonitor(model, mode="full", loss_fn=ce, mechanism=gdiv.Dropout(0.2), seed=3)
    counter = CountingLib(monkeypatch)
    mon.full_backward(*batch())
    assert counter.calls == ["MechanismApply"]
    mon.step()
    assert counter.calls == ["MechanismApply", "Stats", "ControllerObserve"]


def test_monitor_matches_a_bare_controller():
    """The monitor's decisions are the Controller's on the same sums."""
    model = mlp()
    pol = gdiv.BatchSizePolicy(max_batch=40, multiple_of=2)
    mon = DiversityMonitor(model, policy=pol, estimator_beta=0.5, seed=1)
    ctl = gdiv.Controller(policy=pol, estimator_beta=0.5, loss_reduction="mean", lr_rule="linear", seed=1)
    for k in range(5):
        x, y = batch(b=mon.batch_size, seed=k)
        backward(model, x, y)
        rec = mon.step()
        d = ctl.observe(rec["batch"], rec["sum_sq_norms"], rec["sq_norm_of_sum"])
        assert d.next_batch == rec["next_batch"] and d.smoothed.batch_bound == pytest.approx(rec["batch_bound"], rel=1e-12)


# ------------------------------------------------- refused, not wrong ---


def test_micro_batches_of_different_sizes_with_a_mean_loss_are_refused():
    """.grad weighs their examples 1/4 and 1/6: no one batch has these norms
    (equal micro-batches are exact: test_torch_accumulation.py)."""
    model = mlp()
    mon = DiversityMonitor(model)
    model.zero_grad()
    for k, b in enumerate((4, 6)):
        x, y = batch(b=b, seed=k)
        (F.cross_entropy(model(x), y) / 2).backward()
    with pytest.raises(CaptureError, match=r"micro-batches.*\[4, 6\] examples"):
        mon.step()
    # the refusal consumed the capture; the next ordinary step works
    backward(model, *batch())
    assert mon.step()["skipped"] is None


def test_full_backward_twice_is_refused():
    model = mlp()
    mon = DiversityMonitor(model, mode="full", loss_fn=F.cross_entropy)
    mon.full_backward(*batch())
    with pytest.raises(CaptureError, match="accumulation"):
        mon.full_backward(*batch())


def test_compiled_model_is_refused_and_attach_before_compile_works():
    model = mlp()
    x, y = batch()
    mon = DiversityMonitor(model, estimator_beta=0.0)
    backward(model, x, y)
    eager = mon.step()["sum_sq_norms"]
    compiled = torch.compile(model)
    with pytest.raises(ValueError, match="attach the monitor before compiling"):
        DiversityMonitor(compiled)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(compiled(x), y).backward()
    assert mon.step()["sum_sq_norms"] == pytest.approx(eager, rel=1e-12)


def test_deepcopy_and_pickle_are_refused_with_the_way_out():
    mon = DiversityMonitor(mlp())
    with pytest.raises(TypeError, match="deep-copied.*state_dict"):
        copy.deepcopy(mon)
    with pytest.raises(TypeError, match="pickled.*state_dict"):
        pickle.dumps(mon)


# ------------------------------------------------------- checkpoints ---


def trained(steps: int = 3):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(max_batch=64), dataset_size=200, seed=7)
    for k in range(steps):
        backward(model, *batch(b=mon.batch_size, seed=k))
        mon.step()
        opt.step()
    return mon


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("controller", "batch"), -5, "batch"),
        (("controller", "steps"), "many", "steps"),
        (("controller", "estimator", "ema_m2"), float("nan"), "ema_m2|non-finite"),
        (("controller", "estimator", "beta"), 1.5, "beta"),
        (("controller", "decisions"), 2.5, "decisions"),
        (("controller", "examples"), 2**60, "examples"),
        (("policy",), {"max_batch": 5, "min_batch": 10}, "min_batch"),
        (("policy",), "big", "policy"),
        (("lr_rule",), "cubic", "lr_rule"),
        (("seed",), -1, "seed"),
        (("base_lrs",), ["x"], "base_lrs"),
        (("lr_batch",), -5, "lr_batch"),
        (("history",), "none", "history"),
    ],
    ids=lambda v: str(v),
)
def test_failed_load_changes_nothing(path, value, match):
    mon = trained()
    good = mon.state_dict()
    other = trained(steps=5)
    before = json.dumps(other.state_dict(), allow_nan=True)
    bad = json.loads(json.dumps(good, allow_nan=True))
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(bad)
    assert json.dumps(other.state_dict(), allow_nan=True) == before
    other.load_state_dict(good)  # and a good state still loads
    assert other.state_dict()["controller"] == good["controller"]


@pytest.mark.parametrize("key", ["controller", "policy", "seed", "history"])
def test_missing_key_is_named(key):
    mon = trained()
    state = mon.state_dict()
    del state[key]
    with pytest.raises(gdiv.ParamError, match=key):
        trained(1).load_state_dict(state)


# A property test over random tampering: whatever a load does with a mutated
# state, it either succeeds or raises a ValueError/TypeError, and a failed
# load leaves state_dict() exactly as it was.

_BAD_VALUES = [-5, -1, 0, 1.5, 2**60, float("nan"), float("inf"), "many", None, True, [], {}, [1.0, "x"]]


def _paths(d, prefix=()):
    for k, v in d.items():
        if k == "history":
            yield prefix + (k,)
            continue
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))
        yield prefix + (k,)


def test_fuzz_failed_loads_change_nothing():
    import random

    rng = random.Random(12345)
    src = trained(steps=4).state_dict()
    paths = list(_paths(src))
    target = trained(steps=2)
    failures = 0
    for _ in range(300):
        bad = json.loads(json.dumps(src, allow_nan=True))
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            node = bad
            try:
                for key in path[:-1]:
                    node = node[key]
            except (TypeError, KeyError):
                continue
            if not isinstance(node, dict):
                continue
            if rng.random() < 0.15:
                node.pop(path[-1], None)
            else:
                node[path[-1]] = rng.choice(_BAD_VALUES)
        before = json.dumps(target.state_dict(), allow_nan=True)
        try:
            target.load_state_dict(bad)
        except (ValueError, TypeError):
            failures += 1
            assert json.dumps(target.state_dict(), allow_nan=True) == before
        else:  # an accepted state is a usable one: a further step works
            backward(target.model, *batch(b=target.batch_size))
            assert target.step()["step"] == target.steps
            target.load_state_dict(src)
    assert failures > 200  # most tamperings are refused
