"""The Keras and the PyTorch monitors on the same run agree: the MLP of the
ground-truth tests (float64, mean loss, adaptive policy), the same initial
weights and the same example indices (Go's trainer's), trained once by
gdiv.keras (model.fit) in this process and once by gdiv.torch in a
subprocess: the same batch decisions, m2, g, batch bound, lr and final
weights within 1e-9 relative. (Each also equals Go's trainer:
test_keras_ground_truth.py, test_torch_ground_truth.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("torch")  # in the subprocess

import gdiv  # noqa: E402
import gdiv.keras as gk  # noqa: E402
from conftest import digits_standardized  # noqa: E402
from gdiv import reference as ref  # noqa: E402

HERE = Path(__file__).resolve().parent
HIDDEN, SEED, STEPS = 12, 5, 30


def test_keras_and_torch_monitors_agree_on_the_same_run():
    X, y = digits_standardized(240)
    policy = gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0)
    res = ref.train(
        X,
        y,
        problem="mlp",
        l2=0.0,
        hidden=HIDDEN,
        lr=0.3,
        step="mean",
        batch=8,
        policy=policy,
        steps=STEPS,
        seed=SEED,
        record_indices=True,
        classes=10,
    )
    w0 = ref.initial_weights("mlp", 64, 10, hidden=HIDDEN, seed=SEED)
    state = ref.param_layout("mlp", 64, 10, hidden=HIDDEN).to_torch_state(w0)
    batches = [list(map(int, idx)) for idx in res.batches]
    job = {
        "X": X.tolist(), "y": y.tolist(), "state": {k: np.asarray(v).tolist() for k, v in state.items()}, "hidden": HIDDEN,
        "lr": 0.3, "policy": res.policy.state_dict(), "batch": 8, "seed": SEED, "batches": batches,
    }  # fmt: skip
    proc = subprocess.run([sys.executable, str(HERE / "_torch_run.py")], input=json.dumps(job), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_run = json.loads(proc.stdout.strip().splitlines()[-1])

    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        d1, d2 = keras.layers.Dense(HIDDEN, activation="tanh"), keras.layers.Dense(10)
        model = keras.Sequential([keras.Input((64,)), d1, d2])
        for layer, pre in ((d1, "0."), (d2, "2.")):
            layer.kernel.assign(np.asarray(state[pre + "weight"]).T)
            layer.bias.assign(np.asarray(state[pre + "bias"]))
        model.compile(optimizer=keras.optimizers.SGD(0.3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        mon = gk.DiversityMonitor(model, policy=res.policy, batch_size=8, estimator_beta=0.9, dataset_size=len(y), sampling="replacement", seed=SEED)
        opts = tf.data.Options()
        opts.autotune.enabled = False
        opts.experimental_optimization.inject_prefetch = False
        spec = (tf.TensorSpec((None, 64), tf.float64), tf.TensorSpec((None,), tf.int64))
        ds = tf.data.Dataset.from_generator(lambda: ((X[i], y[i]) for i in batches), output_signature=spec).with_options(opts)
        model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[gk.DiversityCallback(mon)])
        weights = {"0.weight": d1.kernel.numpy().T, "0.bias": d1.bias.numpy(), "2.weight": d2.kernel.numpy().T, "2.bias": d2.bias.numpy()}
    finally:
        keras.config.set_floatx(old)
        keras.config.set_dtype_policy(old_policy)

    kh, th = mon.history, torch_run["history"]
    assert len(kh) == len(th) == STEPS
    assert [r["batch"] for r in kh] == [r["batch"] for r in th] and len({r["batch"] for r in kh}) > 3
    assert [r["next_batch"] for r in kh] == [r["next_batch"] for r in th]
    for key in ("m2", "g", "batch_bound", "diversity", "lr", "sum_sq_norms", "sq_norm_of_sum"):
        np.testing.assert_allclose([r[key] for r in kh], [r[key] for r in th], rtol=1e-9, err_msg=key)
    for k, w in weights.items():
        np.testing.assert_allclose(w, np.asarray(torch_run["weights"][k]), rtol=1e-9, atol=1e-12, err_msg=k)
