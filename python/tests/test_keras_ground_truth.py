"""gdiv.keras.DiversityMonitor against Go's reference trainer (the ground truth).

The same problems as test_torch_ground_truth.py, written as Keras models in
float64 — logistic regression (``Dense(1)`` + binary cross-entropy on the
logits), softmax regression (``Dense(K)`` + cross-entropy) and the MLP
(``Dense(H, tanh) → Dense(K)``) — on the same data, from the same initial
weights (``reference.initial_weights``; Keras kernels are the transposed torch
weights) and fed the same example indices (``reference.train(...,
record_indices=True).batches``), through ``model.fit`` (the monitored
``train_step``, batches from a ``tf.data`` pipeline) and through a custom
``GradientTape`` loop (:meth:`DiversityMonitor.gradient`). They must
reproduce the Go trainer's weights and history: the smoothed m2, g, batch
bound and diversity, the learning rate and every batch size the monitor
decides. With the mean step the MLP also carries Go's L2 penalty, as a Keras
``kernel_regularizer`` (Go's (λ/2)‖W‖² in every f_i, biases not penalized):
the monitor adds its gradient to the per-example norms exactly.

Tolerances: weights within 1e-9 relative (norm and max), m2, g, batch_bound,
diversity, lr within 1e-9 relative (+Inf equal); batch sizes exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import gdiv  # noqa: E402
import gdiv.keras as gk  # noqa: E402
from conftest import digits_standardized  # noqa: E402
from gdiv import reference as ref  # noqa: E402

RTOL = 1e-9
HIDDEN = 12
STEPS = 40
SEED = 3


@pytest.fixture(autouse=True)
def float64():
    """Keras makes the optimizer's learning rate (and its other variables) in floatx."""
    old, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(policy)


@pytest.fixture(scope="module")
def digits():
    return digits_standardized(300)


def keras_model(problem, d, k, w0, l2):
    layout = ref.param_layout(problem, d, None if problem == "logistic" else k, hidden=HIDDEN)
    state = layout.to_torch_state(w0)  # torch names and (out, in) weights
    reg = keras.regularizers.L2(l2 / 2) if l2 else None
    if problem == "mlp":
        layers = [
            keras.layers.Dense(HIDDEN, activation="tanh", dtype="float64", kernel_regularizer=reg),
            keras.layers.Dense(k, dtype="float64", kernel_regularizer=reg),
        ]
        names = ["0", "2"]
    else:
        layers = [keras.layers.Dense(1 if problem == "logistic" else k, dtype="float64", kernel_regularizer=reg)]
        names = [None]
    model = keras.Sequential([keras.Input((d,), dtype="float64"), *layers])
    for layer, name in zip(layers, names):
        pre = "" if name is None else name + "."
        layer.kernel.assign(np.asarray(state[pre + "weight"]).T)
        layer.bias.assign(np.asarray(state[pre + "bias"]))
    return model, layout, layers, names


def weights_of(layout, layers, names):
    state = {}
    for layer, name in zip(layers, names):
        pre = "" if name is None else name + "."
        state[pre + "weight"] = np.asarray(layer.kernel.numpy()).T
        state[pre + "bias"] = np.asarray(layer.bias.numpy())
    return layout.from_torch_state(state)


def loss_of(problem, step):
    red = "sum" if step == "sum" else "sum_over_batch_size"
    if problem == "logistic":
        return keras.losses.BinaryCrossentropy(from_logits=True, reduction=red)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=red)


def close(got, want, what):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, what
    inf = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf) and np.array_equal(got[inf], want[inf]), f"{what}: infinities differ"
    err = np.abs(got[~inf] - want[~inf])
    bad = err > RTOL * np.abs(want[~inf])
    assert not bad.any(), f"{what}: max relative error {np.max(err / np.abs(want[~inf]))} > {RTOL} at {np.flatnonzero(bad)[:5]}"


CASES = [
    pytest.param(p, s, a, "replacement", path, None, id=f"{p}-{s}-{'adaptive' if a else 'fixed'}-{path}")
    for p in ("logistic", "softmax", "mlp")
    for s in ("sum", "mean")
    for a in (False, True)
    for path in ("fit", "loop")
    if path == "fit" or a
] + [
    pytest.param("mlp", "mean", True, "shuffle", "fit", None, id="mlp-mean-adaptive-shuffle-fit"),
    pytest.param("mlp", "mean", True, "l2", "fit", None, id="mlp-mean-adaptive-l2-fit"),
    pytest.param("softmax", "mean", True, "l2", "loop", None, id="softmax-mean-adaptive-l2-loop"),
    # full mode (per-example gradients through vectorized_map, summed in Go): without a mechanism, and with
    # Quantize, whose per-example draws Go's trainer makes with the same step seeds — the same draws where
    # the parameter layout has Go's order (logistic: the kernel's column, then the bias)
    pytest.param("mlp", "mean", True, "replacement", "full", None, id="mlp-mean-adaptive-full"),
    pytest.param("logistic", "sum", True, "replacement", "full", "quantize", id="logistic-sum-adaptive-full-quantize"),
    pytest.param("logistic", "mean", True, "replacement", "full", "quantize", id="logistic-mean-adaptive-full-quantize"),
]


@pytest.mark.parametrize("problem, step, adaptive, variant, path, mech", CASES)
def test_keras_monitor_reproduces_reference_trainer(digits, problem, step, adaptive, variant, path, mech):
    X, y = digits
    if problem == "logistic":
        y = y % 2
    n, d = X.shape
    k = None if problem == "logistic" else 10
    sampling = "shuffle" if variant == "shuffle" else "replacement"
    l2 = 2.0**-7 if variant == "l2" else 0.0  # Keras's L2 casts its factor through float32: a power of 2 stays exact
    policy = gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0) if adaptive else None
    lr = {"sum": 0.02, "mean": 0.3}[step]
    mechanism = gdiv.Quantize(4) if mech == "quantize" else None
    res = ref.train(
        X, y, problem=problem, l2=l2, hidden=HIDDEN, lr=lr, step=step, batch=8, policy=policy, steps=STEPS,
        sampling=sampling, seed=SEED, estimator_beta=0.9, record_indices=True, classes=k, mechanism=mechanism,
    )  # fmt: skip
    hist = res.history
    if adaptive:
        assert len(set(hist["batch"].tolist())) > 3
    w0 = ref.initial_weights(problem, d, k, hidden=HIDDEN, seed=SEED)
    model, layout, layers, names = keras_model(problem, d, 10, w0, l2)
    loss = loss_of(problem, step)
    opt = keras.optimizers.SGD(lr)
    model.compile(optimizer=opt, loss=loss)
    monitor = gk.DiversityMonitor(
        model, policy=res.policy, batch_size=8, estimator_beta=0.9, dataset_size=n, sampling=sampling, seed=SEED,
        optimizer=opt if path == "loop" else None, mode="full" if path == "full" else "norms", mechanism=mechanism,
    )  # fmt: skip
    assert monitor.loss_reduction == step
    yk = y.astype(np.float64)[:, None] if problem == "logistic" else y
    decided = []
    if path in ("fit", "full"):

        def batches():
            for idx in res.batches:
                decided.append(monitor.batch_size)
                yield X[idx], yk[idx]

        spec = (tf.TensorSpec((None, d), tf.float64), tf.TensorSpec((None, 1) if problem == "logistic" else (None,), tf.as_dtype(yk.dtype)))
        opts = tf.data.Options()  # as gdiv.keras.AdaptiveBatches: no read-ahead, each batch after the decision before it
        opts.autotune.enabled = False
        opts.experimental_optimization.inject_prefetch = False
        ds = tf.data.Dataset.from_generator(batches, output_signature=spec).with_options(opts)
        model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[gk.DiversityCallback(monitor)])
    else:

        @tf.function(reduce_retracing=True)
        def train_step(xb, yb):
            with monitor.recording(), tf.GradientTape() as tape:
                out = model(xb, training=True)
                value = loss(yb, out) + tf.add_n(model.losses) if model.losses else loss(yb, out)
            grads = monitor.gradient(tape, value)
            opt.apply_gradients(zip(grads, model.trainable_variables))

        for idx in res.batches:
            decided.append(monitor.batch_size)
            train_step(tf.constant(X[idx]), tf.constant(yk[idx]))
        monitor.raise_pending()
    assert decided == [len(idx) for idx in res.batches], "the monitor's decisions differ from Go's batches"
    recs = monitor.history
    assert len(recs) == STEPS and [r["skipped"] for r in recs] == [None] * STEPS
    w = weights_of(layout, layers, names)
    assert np.linalg.norm(w - res.weights) <= RTOL * np.linalg.norm(res.weights)
    assert np.max(np.abs(w - res.weights)) <= RTOL * np.max(np.abs(res.weights))
    got = {key: [r[key] for r in recs] for key in recs[0]}
    np.testing.assert_array_equal(got["batch"], hist["batch"])
    np.testing.assert_array_equal(got["examples"], hist["examples"])
    for key in ("m2", "g", "batch_bound", "diversity", "lr"):
        close(got[key], hist[key], key)
