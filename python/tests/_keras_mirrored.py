"""Run by test_keras_mirrored.py in a process of its own: two logical CPU
devices must be configured before TensorFlow starts. Trains the same float64
MLP on the same global batches twice — under MirroredStrategy with 2
replicas, and in one replica with the whole batch — and prints the records
and final weights of both as JSON."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import gdiv  # noqa: E402
import gdiv.keras as gk  # noqa: E402

keras.config.set_floatx("float64")
reduction = sys.argv[1]
rng = np.random.default_rng(0)
X = rng.normal(size=(400, 6))
y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype("int64") + (X[:, 3] > 1).astype("int64")
w0 = None


def build(l2=0.0):
    global w0
    keras.utils.set_random_seed(1)
    reg = keras.regularizers.L2(l2) if l2 else None
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh", kernel_regularizer=reg), keras.layers.Dense(3)])
    if w0 is None:
        w0 = model.get_weights()
    model.set_weights(w0)
    red = "sum" if reduction == "sum" else "sum_over_batch_size"
    model.compile(
        optimizer=keras.optimizers.SGD(0.05 if reduction == "sum" else 0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=red),
    )
    mon = gk.DiversityMonitor(model, policy=gdiv.BatchSizePolicy(min_batch=8, max_batch=128, multiple_of=2), dataset_size=len(X), seed=2)
    return model, mon


SIZES = [8, 8, 16, 12, 24, 30, 64, 40, 2, 128, 96, 18] * 3  # even: equal shares on 2 replicas
ORDER = np.random.default_rng(4).integers(0, len(X), sum(SIZES))


def run(strategy, adaptive=False, l2=0.0):
    """The same global batches (fixed SIZES) in both runs, or (adaptive)
    AdaptiveBatches following the monitor; l2: an L2 kernel regularizer."""
    with strategy.scope():
        model, mon = build(l2)
    if adaptive:
        ds = gk.AdaptiveBatches(X, y, mon, seed=3).dataset()
        epochs = 3
    else:
        cuts = np.cumsum([0] + SIZES)
        batches = [ORDER[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        spec = (tf.TensorSpec((None, 6), tf.float64), tf.TensorSpec((None,), tf.int64))
        ds = tf.data.Dataset.from_generator(lambda: ((X[i], y[i]) for i in batches), output_signature=spec)
        epochs = 1
    model.fit(ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[gk.DiversityCallback(mon)])
    keys = ("batch", "next_batch", "sum_sq_norms", "sq_norm_of_sum", "batch_bound", "lr", "loss")
    return {
        "records": [{k: r[k] for k in keys} for r in mon.history],
        "weights": [w.ravel().tolist() for w in model.get_weights()],
        "world": mon.world_size,
        "policy_multiple": mon.policy.multiple_of,
    }


def two_scale(strategy):
    """mode="two_scale" on the fixed batches with the weights held (lr 0)
    and no smoothing: each step's estimate, and McCandlish's pair computed
    here from the two halves' mean gradients and the whole batch's."""
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.BatchNormalization(), keras.layers.Dense(3)]
        )
        red = "sum" if reduction == "sum" else "sum_over_batch_size"
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=red))
        mon = gk.DiversityMonitor(model, mode="two_scale", estimator_beta=0.0, seed=2)
    cuts = np.cumsum([0] + SIZES)
    batches = [ORDER[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    def mean_grad(idx):  # BatchNormalization in train mode: each replica normalizes with its own half's statistics
        with tf.GradientTape() as t:
            value = loss(y[idx], model(X[idx], training=True)) / len(idx)
        return np.concatenate([np.ravel(g.numpy()) for g in t.gradient(value, model.trainable_variables)])

    want = []
    for idx in batches:
        if len(idx) < 2:
            want.append(None)
            continue
        h = len(idx) // 2
        g1, g2 = mean_grad(idx[:h]), mean_grad(idx[h:])
        G = (g1 + g2) / 2  # the global mean gradient as the replicas make it
        est = gdiv.estimate_two_scale(h, (g1 @ g1 + g2 @ g2) / 2, len(idx), G @ G)
        want.append([est.m2, est.g])
    spec = (tf.TensorSpec((None, 6), tf.float64), tf.TensorSpec((None,), tf.int64))
    ds = tf.data.Dataset.from_generator(lambda: ((X[i], y[i]) for i in batches), output_signature=spec)
    model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[gk.DiversityCallback(mon)])
    got = [[r["m2"], r["g"]] for r in mon.history]
    return {"got": got, "want": want, "skipped": [r["skipped"] for r in mon.history]}


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {"mirrored": run(mirrored), "single": run(tf.distribute.get_strategy())}
out.update(mirrored_l2=run(mirrored, l2=2.0**-6), single_l2=run(tf.distribute.get_strategy(), l2=2.0**-6))
if reduction == "mean":  # the rest once
    out.update(adaptive=run(mirrored, adaptive=True), two_scale=two_scale(mirrored))
print(json.dumps(out))
