"""gdiv.keras.DiversityMonitor as users meet it: the norms of whole models
(rules and fallback together, through fit and a custom loop) against a
per-example GradientTape loop; bad input; checkpoints and resume; the
callback; AdaptiveBatches; gdiv without TensorFlow.

The oracle: for each example i, ∇θ ℓ_i on the example alone; the monitor's
record holds Σ_i ‖∇ℓ_i‖² and ‖Σ_i ∇ℓ_i‖² (the mean loss's B² undone by
Go). float64 models: 1e-10 relative.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import gdiv  # noqa: E402
import gdiv.keras as gk  # noqa: E402

RTOL = 1e-10


@pytest.fixture(autouse=True)
def float64():
    old, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(7)
    yield
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(policy)


def oracle(model, loss_obj, x, y):
    """(Σ‖∇ℓ_i‖², ‖Σ∇ℓ_i‖²) from one example at a time."""
    total, s = 0.0, None
    for i in range(len(x)):
        with tf.GradientTape() as t:
            li = loss_obj(y[i : i + 1], model(x[i : i + 1], training=True))
        g = t.gradient(li, model.trainable_variables)
        flat = np.concatenate([np.ravel(tf.convert_to_tensor(v).numpy()) for v in g])
        total += float(flat @ flat)
        s = flat if s is None else s + flat
    return total, float(s @ s)


class Scale(keras.layers.Layer):
    """A layer without a rule (the fallback): x·tanh(w) + b."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal")
        self.b = self.add_weight(shape=(shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * tf.tanh(self.w) + self.b


def seq_model(v=11, t=6, d=8):
    ids = keras.Input((t,), dtype="int32")
    h = keras.layers.Embedding(v, d)(ids)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Dense(d, activation="gelu")(h)
    h = Scale()(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(3)(h))


def cnn_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )


def data(kind, b=7, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "seq":
        return rng.integers(0, 11, (b, 6)).astype("int32"), rng.integers(0, 3, b)
    return rng.normal(size=(b, 8, 8, 1)), rng.integers(0, 5, b)


@pytest.mark.parametrize("kind", ["seq", "cnn"])
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
@pytest.mark.parametrize("path", ["fit", "loop"])
def test_whole_model_norms_equal_the_per_example_loop(kind, reduction, path):
    model = seq_model() if kind == "seq" else cnn_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    x, y = data(kind)
    want = oracle(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"), x, y)
    opt = keras.optimizers.SGD(0.0)  # the weights stay: the oracle's
    model.compile(optimizer=opt, loss=loss)
    mon = gk.DiversityMonitor(model, optimizer=opt if path == "loop" else None, seed=0)
    if path == "fit":
        model.train_on_batch(x, y)
    else:
        with mon.recording(), tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        opt.apply_gradients(zip(mon.gradient(tape, value), model.trainable_variables))
    rec = mon.history[-1]
    assert rec["batch"] == len(x) and rec["skipped"] is None
    np.testing.assert_allclose([rec["sum_sq_norms"], rec["sq_norm_of_sum"]], want, rtol=RTOL)


class PositionEmbedding(keras.layers.Layer):
    """Token embeddings plus position embeddings looked up with arange(T) — a batch of none, broadcast
    over the batch afterwards (the pattern that makes per-layer norms undefined)."""

    def __init__(self, vocab, length, dim):
        super().__init__()
        self.tok = keras.layers.Embedding(vocab, dim)
        self.pos = keras.layers.Embedding(length, dim)
        self.length = length

    def call(self, ids):
        return self.tok(ids) + self.pos(keras.ops.arange(self.length))


def other_models():
    """Architectures beyond the rules: each (model, x, y, the units' classes, * = the fallback)."""
    rng = np.random.default_rng(1)
    seq, y = rng.normal(size=(5, 6, 4)), rng.integers(0, 3, 5)
    inp = keras.Input((6, 4))
    h = keras.layers.MultiHeadAttention(2, 3)(inp, inp)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization()(h + inp))
    ids = keras.Input((6,), dtype="int32")
    pe = keras.layers.GlobalAveragePooling1D()(PositionEmbedding(11, 6, 4)(ids))
    return {
        "lstm": (keras.Sequential([keras.Input((6, 4)), keras.layers.LSTM(5), keras.layers.Dense(3)]), seq, y, ["LSTM*", "Dense"]),
        "bidirectional-gru": (
            keras.Sequential([keras.Input((6, 4)), keras.layers.Bidirectional(keras.layers.GRU(3)), keras.layers.Dense(3)]),
            seq,
            y,
            ["GRU*", "GRU*", "Dense"],
        ),
        "time-distributed": (
            keras.Sequential(
                [keras.Input((6, 4)), keras.layers.TimeDistributed(keras.layers.Dense(5)), keras.layers.Flatten(), keras.layers.Dense(3)]
            ),
            seq,
            y,
            ["TimeDistributed*", "Dense"],
        ),
        "attention": (keras.Model(inp, keras.layers.Dense(3)(h)), seq, y, ["EinsumDense*"] * 4 + ["LayerNormalization", "Dense"]),
        "position-embedding": (
            keras.Model(ids, keras.layers.Dense(3)(pe)),
            rng.integers(0, 11, (5, 6)).astype("int32"),
            y,
            ["Dense", "PositionEmbedding*"],
        ),
        "separable-grouped": (
            keras.Sequential(
                [
                    keras.Input((8, 8, 4)),
                    keras.layers.SeparableConv2D(4, 3),
                    keras.layers.Conv2D(4, 3, groups=2, activation="relu"),
                    keras.layers.GroupNormalization(2),
                    keras.layers.Flatten(),
                    keras.layers.Dense(3),
                ]
            ),
            rng.normal(size=(5, 8, 8, 4)),
            y,
            ["SeparableConv2D*", "Conv2D", "GroupNormalization*", "Dense"],
        ),
    }


@pytest.mark.parametrize("name", list(other_models()))
def test_other_architectures_equal_the_per_example_loop(name):
    model, x, y, units = other_models()[name]
    want = oracle(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"), x, y)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    mon = gk.DiversityMonitor(model, seed=0)
    assert [type(u.layer).__name__ + ("*" if u.rule is None else "") for u in mon._taps.units] == units
    model.train_on_batch(x, y)
    rec = mon.history[-1]
    np.testing.assert_allclose([rec["sum_sq_norms"], rec["sq_norm_of_sum"]], want, rtol=1e-9)


def test_units_cover_every_variable_once():
    mon = gk.DiversityMonitor(seq_model(), loss_reduction="mean")
    kinds = {type(u.layer).__name__: u.rule is None for u in mon._taps.units}
    assert kinds == {"Embedding": False, "LayerNormalization": False, "Dense": False, "Scale": True}
    mon.remove()
    assert not mon.attached and "call" not in mon.model.layers[3].__dict__


def test_float32_model_within_float32_rounding():
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    model = cnn_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = data("cnn")
    x = x.astype("float32")
    want = oracle(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"), x, y)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    mon = gk.DiversityMonitor(model, seed=0)
    model.train_on_batch(x, y)
    rec = mon.history[-1]
    np.testing.assert_allclose([rec["sum_sq_norms"], rec["sq_norm_of_sum"]], want, rtol=1e-4)


def test_mixed_precision_undoes_the_loss_scale():
    """mixed_float16: Keras wraps the optimizer in a LossScaleOptimizer (scale 32768); the norms are
    those of the unscaled loss, equal to a float32 loop to float16 rounding."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3, dtype="float32")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    mon = gk.DiversityMonitor(model, seed=0)
    x, y = np.random.default_rng(0).normal(size=(6, 8)).astype("float32"), np.arange(6) % 3
    model.train_on_batch(x, y)
    keras.config.set_dtype_policy("float32")
    ref = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)])
    ref.set_weights(model.get_weights())
    want = oracle(ref, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"), x, y)
    rec = mon.history[-1]
    assert float(model.optimizer.dynamic_scale) > 1000
    np.testing.assert_allclose([rec["sum_sq_norms"], rec["sq_norm_of_sum"]], want, rtol=1e-2)


# -- Langevin ---------------------------------------------------------------------


def loop_step(model, mon, x, y, loss):
    with mon.recording(), tf.GradientTape() as tape:
        value = loss(y, model(x, training=True))
    grads = mon.gradient(tape, value)
    return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy()) for g in grads])


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
def test_langevin_shifts_m2_by_d_sigma2_and_adds_the_right_noise(reduction):
    """As gdiv.torch's norms mode: one Gaussian on the batch gradient (variance from
    Langevin.sum_noise_std), M̂² = the clean one + d·σ² exactly, Ĝ unbiased (over seeds)."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])
    x, y = np.random.default_rng(0).normal(size=(6, 4)), np.arange(6) % 2
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    red = "sum" if reduction == "sum" else "mean"
    d = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    clean = gk.DiversityMonitor(model, loss_reduction=red, estimator_beta=0.0)
    g0 = loop_step(model, clean, x, y, loss)
    base = clean.history[-1]
    clean.remove()
    mech = gdiv.Langevin(0.3)
    m2s, gs, noise = [], [], []
    for seed in range(100):
        mon = gk.DiversityMonitor(model, loss_reduction=red, mechanism=mech, estimator_beta=0.0, seed=seed)
        noise.append(loop_step(model, mon, x, y, loss) - g0)
        mon.remove()
        m2s.append(mon.history[-1]["m2"])
        gs.append(mon.history[-1]["g"])
    np.testing.assert_allclose(m2s, base["m2"] + d * 0.3**2, rtol=1e-9)
    gs = np.array(gs)
    assert abs(gs.mean() - base["g"]) <= 4 * gs.std(ddof=1) / math.sqrt(len(gs))
    noise = np.array(noise).ravel()
    want = mech.sum_noise_std(6, reduction=red) ** 2
    assert abs(noise.var() - want) <= 4 * want * math.sqrt(2 / noise.size)


def test_langevin_draws_follow_the_seed_and_resume():
    x, y = np.random.default_rng(0).normal(size=(6, 4)), np.arange(6) % 3
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = mlp()
    runs = []
    for seed in (5, 5, 6):
        mon = gk.DiversityMonitor(model, loss_reduction="mean", mechanism=gdiv.Langevin(0.1), seed=seed)
        runs.append([loop_step(model, mon, x, y, loss) for _ in range(2)])
        mon.remove()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0], runs[2][0]) and not np.array_equal(runs[0][0], runs[0][1])
    # a resumed monitor draws the second step's noise
    mon = gk.DiversityMonitor(model, loss_reduction="mean", mechanism=gdiv.Langevin(0.1), seed=5)
    loop_step(model, mon, x, y, loss)
    state = mon.state_dict()
    mon.remove()
    again = gk.DiversityMonitor(model, loss_reduction="mean", mechanism=gdiv.Langevin(0.1), seed=5)
    again.load_state_dict(state)
    np.testing.assert_array_equal(loop_step(model, again, x, y, loss), runs[0][1])


# -- bad input -------------------------------------------------------------------


def test_sparse_input_is_refused_with_the_layer_named():
    inp = keras.Input((6,), sparse=True)
    model = keras.Model(inp, keras.layers.Dense(3)(inp))
    compiled(model)
    gk.DiversityMonitor(model)
    x = tf.sparse.from_dense(np.eye(4, 6))
    with pytest.raises(gk.UnsupportedLayerError, match="(?i)sparse"):
        model.train_on_batch(x, np.zeros(4))


def mlp():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)])


def compiled(model=None, **kw):
    model = model or mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1, **kw), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_uncompiled_model_needs_a_reduction():
    with pytest.raises(ValueError, match="not compiled"):
        gk.DiversityMonitor(mlp())
    assert gk.DiversityMonitor(mlp(), loss_reduction="sum").loss_reduction == "sum"


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="not built"):
        gk.DiversityMonitor(keras.Sequential([keras.layers.Dense(3)]), loss_reduction="mean")


def test_train_mode_batchnorm_is_refused_with_advice():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    compiled(model)
    gk.DiversityMonitor(model)
    with pytest.raises(gk.UnsupportedLayerError, match="(?s)BatchNormalization.*LayerNormalization"):
        model.train_on_batch(np.ones((4, 4)), np.zeros(4))


def test_frozen_batchnorm_runs_per_example():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.layers[1].trainable = False  # Keras runs a frozen BatchNormalization in inference mode
    compiled(model)
    mon = gk.DiversityMonitor(model)
    model.train_on_batch(np.random.default_rng(0).normal(size=(6, 4)), np.arange(6) % 3)
    assert mon.history[-1]["skipped"] is None


def test_shared_layer_is_refused():
    shared = keras.layers.Dense(4)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(shared(shared(inp))))
    compiled(model)
    gk.DiversityMonitor(model)
    with pytest.raises(gk.UnsupportedLayerError, match="called 2 times"):
        model.train_on_batch(np.ones((3, 4)), np.zeros(3))


def test_batch_of_one_warns_and_is_not_estimated():
    model = compiled()
    mon = gk.DiversityMonitor(model)
    with pytest.warns(RuntimeWarning, match="batch of 1"):
        model.train_on_batch(np.ones((1, 4)), np.zeros(1))
    assert mon.history[-1]["skipped"] == "batch of 1"


def test_nan_loss_is_skipped_or_raised():
    model = compiled()
    mon = gk.DiversityMonitor(model)
    x = np.ones((4, 4))
    x[0, 0] = np.nan
    model.train_on_batch(x, np.zeros(4))
    assert mon.history[-1]["skipped"] == "non-finite"
    model = compiled()
    mon = gk.DiversityMonitor(model, on_nonfinite="raise")
    before = list(warnings.filters)
    with pytest.raises(gdiv.NonFiniteError, match="non-finite"):
        model.fit(x, np.zeros(4), batch_size=4, verbose=0, callbacks=[gk.DiversityCallback(mon)])
    assert warnings.filters == before  # the callback's filter is gone with the error


def test_lr_schedule_with_an_lr_rule_is_refused():
    sched = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(sched), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="schedule"):
        gk.DiversityMonitor(model, policy=gdiv.BatchSizePolicy(max_batch=64))
    gk.DiversityMonitor(model, policy=gdiv.BatchSizePolicy(max_batch=64), lr_rule="none")


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="per-example gradients"):
        gk.DiversityMonitor(compiled(), mechanism=gdiv.Dropout(0.1))
    with pytest.raises(gdiv.ParamError, match="measure_every"):
        gk.DiversityMonitor(compiled(), measure_every=0)
    with pytest.raises(ValueError, match="reduction"):
        m = mlp()
        m.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(reduction="none"))
        gk.DiversityMonitor(m)


def test_full_mode_refusals():
    with pytest.raises(ValueError, match="mode='full'"):
        gk.DiversityMonitor(compiled(), mechanism=gdiv.Quantize(2))
    reg = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.01))])
    compiled(reg)
    gk.DiversityMonitor(reg, mode="full", mechanism=gdiv.Dropout(0.5))
    with pytest.raises(ValueError, match="regularizers"):
        reg.train_on_batch(np.ones((3, 4)), np.zeros(3))
    model = compiled()
    gk.DiversityMonitor(model, mode="full", full_max_bytes=1000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="full_max_bytes"):
        model.train_on_batch(np.ones((64, 4)), np.zeros(64))


def test_full_mode_dropout_applies_in_go_per_example():
    """Dropout(p) on each example's gradient, in Go, in the buffer TensorFlow handed over: the applied
    batch gradient is the sum of the dropped rows — reproduced from the per-example gradients and the
    step's seed with gdiv.Dropout.apply on a copy."""
    model = compiled()
    x, y = np.random.default_rng(0).normal(size=(5, 4)), np.arange(5) % 3
    w0 = [w.copy() for w in model.get_weights()]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    for i in range(5):
        with tf.GradientTape() as t:
            li = loss(y[i : i + 1], model(x[i : i + 1], training=True))
        rows.append(np.concatenate([np.ravel(g.numpy()) for g in t.gradient(li, model.trainable_variables)]))
    mech = gdiv.Dropout(0.5)
    mon = gk.DiversityMonitor(model, mode="full", mechanism=mech, seed=9)
    seed = mon.controller.next_seed
    model.train_on_batch(x, y)
    dropped = mech.apply(np.array(rows), seed=seed)
    step = np.concatenate([np.ravel(a - b) for a, b in zip(w0, model.get_weights())]) / 0.1  # SGD(0.1)
    np.testing.assert_allclose(step, dropped.mean(0), rtol=1e-9, atol=1e-12)
    st = gdiv.stats(dropped)
    np.testing.assert_allclose([mon.history[-1]["sum_sq_norms"], mon.history[-1]["sq_norm_of_sum"]], [st.sum_sq_norms, st.sq_norm_of_sum], rtol=1e-9)


def test_gradient_outside_recording_is_refused():
    model = compiled()
    mon = gk.DiversityMonitor(model)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(np.ones((3, 4)), training=True))
    with pytest.raises(ValueError, match="recording"):
        mon.gradient(tape, loss)


# -- the adaptive loop, checkpoints, the callback ----------------------------------


def digits_like(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64") + (X[:, 2] > 1).astype("int64")


def test_fit_with_adaptive_batches_follows_the_policy_and_the_lr_rule(tmp_path):
    X, y = digits_like()
    model = compiled()
    mon = gk.DiversityMonitor(model, policy=gdiv.BatchSizePolicy(min_batch=8, max_batch=128), dataset_size=len(X), seed=1)
    batches = gk.AdaptiveBatches(X, y, mon, replacement=False, seed=2)
    cb = gk.DiversityCallback(mon, log_dir=tmp_path / "tb", plot_path=tmp_path / "h.png", state_path=tmp_path / "s.json", batches=batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "ran out of data" noise
        warnings.filterwarnings("ignore", message=".*shuffle.*")
        hist = model.fit(batches.dataset(), epochs=3, verbose=0, shuffle=False, callbacks=[cb])
    recs = mon.history
    # each batch has the size decided after the step before it
    assert [r["batch"] for r in recs[1:]] == [r["next_batch"] for r in recs[:-1]]
    assert sum(r["batch"] for r in recs) >= 3 * len(X) and len({r["batch"] for r in recs}) > 2
    # the lr follows the linear rule from the first batch
    lr0 = 0.1
    for r in recs:
        assert math.isclose(r["lr"], lr0 * r["batch"] / recs[0]["batch"], rel_tol=1e-6)
    assert math.isclose(float(model.optimizer.learning_rate), recs[-1]["lr"], rel_tol=1e-6)
    assert {"gdiv_batch_bound", "gdiv_batch", "gdiv_next_batch"} <= set(hist.history)
    # the batch dimension is unknown to the graph: one trace for every batch size (Keras's reduce_retracing)
    assert len({r["batch"] for r in recs}) > 5 and mon.traces <= 2, mon.traces
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    state = json.loads((tmp_path / "s.json").read_text())
    assert state["epoch"] == 3 and state["monitor"]["controller"]["steps"] == len(recs)


def test_measure_every_skips_the_per_example_work_and_keeps_the_lr_rule():
    X, y = digits_like()
    model = compiled()
    mon = gk.DiversityMonitor(model, policy=gdiv.BatchSizePolicy(min_batch=8, max_batch=128), dataset_size=len(X), seed=1, measure_every=3)
    batches = gk.AdaptiveBatches(X, y, mon, seed=2)
    model.fit(batches.dataset(), epochs=2, verbose=0, shuffle=False, callbacks=[gk.DiversityCallback(mon)])
    steps = [r["step"] for r in mon.history]
    assert steps == list(range(1, mon.steps + 1, 3)) and mon.steps > 12  # only measured steps are recorded
    assert mon.examples >= 2 * len(X)
    # the lr rule ran on every step, measured or not: the last step's factor is in the optimizer
    assert mon.lr_factor > 1 and math.isclose(float(model.optimizer.learning_rate), 0.1 * mon.lr_factor, rel_tol=1e-6)
    assert len({r["batch"] for r in mon.history}) > 2  # decisions after the measured steps


def test_two_scale_needs_replicas():
    with pytest.raises(ValueError, match="two_scale"):
        gk.DiversityMonitor(compiled(), mode="two_scale")


def test_xla_is_turned_off_with_a_warning():
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    mon = gk.DiversityMonitor(model)
    with pytest.warns(RuntimeWarning, match="XLA"):
        model.fit(np.ones((8, 4)), np.zeros(8), batch_size=4, verbose=0)
    assert not model.jit_compile and len(mon.history) == 2


def test_resume_makes_the_same_decisions():
    X, y = digits_like()
    pol = gdiv.BatchSizePolicy(min_batch=8, max_batch=96)

    def run(steps, state=None):
        keras.utils.set_random_seed(3)
        model = compiled()
        mon = gk.DiversityMonitor(model, policy=pol, dataset_size=len(X), seed=4)
        batches = gk.AdaptiveBatches(X, y, mon, seed=5)
        if state is not None:
            model.set_weights(state["weights"])
            mon.load_state_dict(json.loads(json.dumps(state["monitor"])))
            batches.load_state_dict(json.loads(json.dumps(state["batches"])))
            model.optimizer.learning_rate.assign(state["lr"])
        it = iter(batches)
        for _ in range(steps):
            try:
                xb, yb = next(it)
            except StopIteration:
                it = iter(batches)
                xb, yb = next(it)
            model.train_on_batch(xb, yb)
        return model, mon, batches

    model, full, _ = run(30)
    m1, mon1, b1 = run(12)
    state = {"weights": m1.get_weights(), "monitor": mon1.state_dict(), "batches": b1.state_dict(), "lr": float(m1.optimizer.learning_rate)}
    # mid-pass state: the resumed pass continues where it stopped
    m2, mon2, _ = run(18, state)
    assert [r["batch"] for r in mon2.history] == [r["batch"] for r in full.history]
    np.testing.assert_allclose([r["batch_bound"] for r in mon2.history], [r["batch_bound"] for r in full.history], rtol=1e-6)


def test_load_state_dict_refuses_another_setting():
    mon = gk.DiversityMonitor(compiled(), dataset_size=100)
    other = gk.DiversityMonitor(compiled(), dataset_size=200)
    with pytest.raises(ValueError, match="dataset_size"):
        other.load_state_dict(mon.state_dict())


# -- AdaptiveBatches ---------------------------------------------------------------


class Fixed:
    def __init__(self, b):
        self.batch_size = b


def test_adaptive_batches_shuffle_covers_each_example_once_per_pass():
    X = np.arange(50.0)[:, None]
    mon = Fixed(7)
    b = gk.AdaptiveBatches(X, np.arange(50), mon, replacement=False, seed=0)
    seen = []
    for i, (xb, yb) in enumerate(b):
        np.testing.assert_array_equal(xb[:, 0], yb)
        seen += list(yb)
        mon.batch_size = 7 + i  # the size may change between batches
    assert sorted(seen[:50]) == list(range(50))
    assert len(seen) >= 50


def test_adaptive_batches_errors():
    with pytest.raises(ValueError, match="same number of examples"):
        gk.AdaptiveBatches(np.ones((5, 2)), np.ones(4), Fixed(2))
    with pytest.raises(TypeError, match="monitor"):
        gk.AdaptiveBatches(np.ones((5, 2)), np.ones(5), None)
    with pytest.raises(ValueError, match="no batch size"):
        list(gk.AdaptiveBatches(np.ones((5, 2)), np.ones(5), Fixed(None)))


# -- gdiv without TensorFlow -------------------------------------------------------


def test_gdiv_and_gdiv_torch_import_without_tensorflow_and_keras_says_how_to_install():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import gdiv, gdiv.torch\n"
        "try:\n    import gdiv.keras\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "pip install 'gdiv[tensorflow]'" in out.stdout
