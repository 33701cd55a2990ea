"""tf.distribute.MirroredStrategy with 2 replicas (two logical CPU devices)
gives the same numbers and decisions as one replica with the whole batch:
the batches (global, rounded to multiples of 2 by Go), Σ‖g_i‖², ‖Σg_i‖²,
the smoothed bound, the lr and the final weights, within 1e-10 relative
(the all-reduce adds in another order). Run in a subprocess: the logical
devices must be set before TensorFlow starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_two_replicas_equal_one_with_the_whole_batch(reduction):
    out = subprocess.run([sys.executable, str(HERE / "_keras_mirrored.py"), reduction], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for pair in (("mirrored", "single"), ("mirrored_l2", "single_l2")):  # without and with an L2 regularizer
        m, s = res[pair[0]], res[pair[1]]
        assert m["world"] == 2 and s["world"] == 1 and m["policy_multiple"] == 2
        assert len(m["records"]) == len(s["records"]) == 36
        for key in ("batch", "next_batch"):  # the same decisions
            assert [r[key] for r in m["records"]] == [r[key] for r in s["records"]], (pair, key)
        for key in ("sum_sq_norms", "sq_norm_of_sum", "batch_bound", "lr", "loss"):
            np.testing.assert_allclose([r[key] for r in m["records"]], [r[key] for r in s["records"]], rtol=1e-10, err_msg=f"{pair} {key}")
        for wm, ws in zip(m["weights"], s["weights"]):
            np.testing.assert_allclose(wm, ws, rtol=1e-10, atol=1e-12)
    if reduction == "sum":
        return
    # AdaptiveBatches under the strategy: global batches of multiples of 2, each a decision of one of the
    # steps just before (tf.distribute reads one batch ahead, two at a pass's start)
    a = res["adaptive"]["records"]
    assert len(a) > 20 and len({r["batch"] for r in a}) > 3
    assert all(r["batch"] % 2 == 0 for r in a)
    assert all(a[k]["batch"] in {r["next_batch"] for r in a[k - 3 : k]} for k in range(3, len(a)))
    # two_scale (a model with train-mode BatchNormalization): each step's estimate is McCandlish's pair
    # from the replicas' local gradients and the global one (β = 0: the smoothed estimate is the step's)
    ts = res["two_scale"]
    for got, want in zip(ts["got"], ts["want"]):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-9)
    assert ts["skipped"].count(None) == len(ts["skipped"])
