"""One validator set (gdiv._validate) behind every entry point: seeds,
integers and real numbers are refused the same way everywhere — no
truncation of 1.5, no bools, no silent rounding above 2**53."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gdiv
from conftest import needs_torch, torch
from gdiv._validate import check_float, check_int, check_seed

BIG = 2**53 + 1  # a float64 rounds it to 2**53

# -- the validators ------------------------------------------------------------


@pytest.mark.parametrize("v", [0, 1, 2**63, 2**64 - 1, np.uint64(2**64 - 1), np.int64(7), np.uint8(3)], ids=repr)
def test_seed_accepts_integers(v):
    assert check_seed(v) == int(v) and type(check_seed(v)) is int


def test_seed_none_is_random():
    assert 0 <= check_seed(None) < 2**64


@pytest.mark.parametrize("v", [True, False, 1.5, 1.0, np.float64(2.0), "3", [1]], ids=repr)
def test_seed_refuses_non_integers(v):
    with pytest.raises(gdiv.ParamTypeError, match="seed") as e:
        check_seed(v)
    assert isinstance(e.value, TypeError) and isinstance(e.value, gdiv.ParamError) and e.value.field == "seed"


@pytest.mark.parametrize("v", [-1, 2**64, np.int64(-3)], ids=repr)
def test_seed_refuses_out_of_range(v):
    with pytest.raises(gdiv.ParamError, match=r"outside \[0, 2\*\*64\)") as e:
        check_seed(v)
    assert not isinstance(e.value, TypeError)


def test_int_rules():
    assert check_int("n", np.int32(4)) == 4
    for bad in (True, 2.0, 2.5, "2", None):
        with pytest.raises(gdiv.ParamTypeError, match="n = "):
            check_int("n", bad)
    with pytest.raises(gdiv.ParamError, match="above 2\\*\\*53") as e:
        check_int("n", BIG, f64=True)
    assert e.value.field == "n"
    assert check_int("n", BIG) == BIG  # not crossing as a float64: fine
    assert check_int("n", 2**53, f64=True) == 2**53
    with pytest.raises(gdiv.ParamError, match="≥ 1"):
        check_int("n", 0, lo=1)


def test_float_rules():
    assert check_float("x", np.float32(0.5)) == 0.5
    assert check_float("x", 3) == 3.0 and check_float("x", 2**60) == 2.0**60  # exact
    assert math.isnan(check_float("x", math.nan))  # Go decides where NaN is allowed
    for bad in (True, "1", None, 1j, object()):
        with pytest.raises(gdiv.ParamTypeError, match="real number"):
            check_float("x", bad)
    with pytest.raises(gdiv.ParamError, match="rounded"):
        check_float("x", BIG)


# -- the same rules at every entry point ---------------------------------------

SEED_CALLS = {
    "mechanism.apply_": lambda s: gdiv.Dropout(0.5).apply_(np.ones((2, 2)), seed=s),
    "mechanism.monte_carlo": lambda s: gdiv.Dropout(0.5).monte_carlo(np.ones((2, 2)), samples=4, seed=s),
    "controller": lambda s: gdiv.Controller(seed=s),
    "step_seed": lambda s: gdiv.step_seed(s, 1),
    "reference.train": lambda s: gdiv.reference.train(np.ones((4, 2)), np.array([0, 1, 0, 1]), lr=0.1, batch=2, steps=1, seed=s),
    "reference.initial_weights": lambda s: gdiv.reference.initial_weights("mlp", 2, 2, hidden=3, seed=s),
}


@pytest.mark.parametrize("call", SEED_CALLS.values(), ids=SEED_CALLS.keys())
@pytest.mark.parametrize("seed", [1.5, True, 2**64, -1], ids=["float", "bool", "2**64", "negative"])
def test_every_seed_is_checked_alike(call, seed):
    with pytest.raises(gdiv.ParamError, match="seed") as e:
        call(seed)
    assert e.value.field == "seed"


@pytest.mark.parametrize("call", SEED_CALLS.values(), ids=SEED_CALLS.keys())
def test_every_seed_takes_numpy_and_large_integers(call):
    call(np.uint64(2**64 - 1))
    call(2**63 + 12345)


@needs_torch
@pytest.mark.parametrize("seed", [1.5, True, 2**64, -1], ids=["float", "bool", "2**64", "negative"])
def test_sampler_seed(seed):
    from gdiv.torch import AdaptiveBatchSampler

    class Stub:
        batch_size = 2

    with pytest.raises(gdiv.ParamError, match="seed"):
        AdaptiveBatchSampler(5, Stub(), seed=seed)
    assert AdaptiveBatchSampler(5, Stub(), seed=np.uint64(2**64 - 1)).seed == 2**64 - 1


def test_integers_above_2_53_are_refused_not_rounded():
    with pytest.raises(gdiv.ParamError, match="2\\*\\*53") as e:
        gdiv.BatchSizePolicy(max_batch=BIG)
    assert e.value.field == "max_batch"
    with pytest.raises(gdiv.ParamError, match="2\\*\\*53"):
        gdiv.Controller(batch_size=BIG)
    with pytest.raises(gdiv.ParamError, match="2\\*\\*53"):
        gdiv.reference.train(np.ones((4, 2)), np.array([0, 1, 0, 1]), lr=0.1, batch=2, steps=BIG)
    with pytest.raises(gdiv.ParamError, match="2\\*\\*53"):
        gdiv.Estimator().load_state_dict(dict(gdiv.Estimator().state_dict(), steps=BIG))
    with pytest.raises(gdiv.ParamError, match="rounded"):
        gdiv.estimate_from_sums(4, BIG, 1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: gdiv.Quantize(1.5),
        lambda: gdiv.Quantize(True),
        lambda: gdiv.Dropout("0.5"),
        lambda: gdiv.Langevin(None),
        lambda: gdiv.Dropout(0.5).monte_carlo(np.ones((2, 2)), samples=4.5),
        lambda: gdiv.BatchSizePolicy(min_batch=2.5),
        lambda: gdiv.Controller(batch_size=2.5),
        lambda: gdiv.Controller(estimator_beta="0.9"),
        lambda: gdiv.estimate_from_sums(4.5, 1.0, 1.0),
        lambda: gdiv.estimate_two_scale(2, 1.0, 4.0, 0.5),
        lambda: gdiv.Estimator(beta=True),
        lambda: gdiv.reference.train(np.ones((4, 2)), np.array([0, 1, 0, 1]), lr=0.1, batch=2.0, steps=1),
    ],
    ids=[
        "levels",
        "levels-bool",
        "p-str",
        "std-None",
        "samples",
        "min_batch",
        "batch_size",
        "beta-str",
        "sums-batch",
        "two-scale",
        "est-beta",
        "ref-batch",
    ],
)
def test_wrong_types_are_param_type_errors(call):
    with pytest.raises(gdiv.ParamTypeError):
        call()


@needs_torch
def test_torch_integers_are_integers():
    assert gdiv.BatchSizePolicy(max_batch=torch.tensor(64)).max_batch == 64
