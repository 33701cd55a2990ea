#!/usr/bin/env python3
"""Train a small MLP on scikit-learn's digits with Keras 3 (TensorFlow), four
ways, through ``model.fit``, with gdiv's DiversityMonitor, DiversityCallback
and AdaptiveBatches:

  fixed 16            batch 16, lr η = 0.1 (Keras's mean loss)
  fixed 512           batch 512, lr η (per example 32× smaller than batch 16's)
  fixed 512, lr×32    batch 512, lr 32η: the same per-example step (the linear rule)
  adaptive            DiversityMonitor + AdaptiveBatches + BatchSizePolicy: the batch
                      follows B = δ·B̂_S + 1 in [16, 1024] and the lr the linear rule
                      from η at 16
  adaptive+Langevin   the same with a diversity-inducing mechanism: Langevin noise,
                      added once to the batch gradient (norms mode)

and print a table (steps, examples, final train /
test loss and accuracy, mean batch, wall time; mean ± standard deviation over
seeds) and write a PNG (training loss vs examples; batch size and B̂_S for
the adaptive run; the first seed). The data is testdata/digits.csv split
80/20 (seeded), as in torch_digits.py.

    python examples/keras_digits.py            # 3 seeds × 30 passes: about a minute on 2 cores
    python examples/keras_digits.py --quick    # 1 seed × 6 passes: a few seconds
    python examples/keras_digits.py --out DIR  # the PNG goes to DIR/keras_digits.png

Needs tensorflow (``pip install 'gdiv[tensorflow]'``), numpy, matplotlib and gdiv.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gdiv  # noqa: E402
import gdiv.keras  # noqa: E402
import gdiv.plot  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, Run, load_digits, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mlp(seed: int, hidden: int, lr: float) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(hidden, activation="tanh"), keras.layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class Track(keras.callbacks.Callback):
    """Counts steps and examples, stops at the example budget, records the
    full training loss at regular example counts, shows progress."""

    def __init__(self, run: Run, budget: int, train_xy, monitor=None, sizes: Optional[List[int]] = None, evals: int = 40) -> None:
        super().__init__()
        self.run, self.budget, self.xy, self.monitor, self.sizes = run, budget, train_xy, monitor, sizes
        self.every = max(1, budget // evals)
        self.next_eval = 0
        self.bar = Progress(run.name, budget)

    def full_loss(self) -> float:
        x, y = self.xy
        logits = self.model(x, training=False)
        return float(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy().mean())

    def on_train_batch_begin(self, batch, logs=None):
        if self.run.examples >= self.next_eval:
            self.run.history.append({"examples": self.run.examples, "loss": self.full_loss()})
            self.next_eval += self.every

    def on_train_batch_end(self, batch, logs=None):
        # the batch's size: the monitor's record, or the fixed run's k-th batch of the pass
        b = self.monitor.history[-1]["batch"] if self.monitor is not None else self.sizes[batch]
        self.run.steps += 1
        self.run.examples += b
        self.run.batches.append(b)
        if self.monitor is not None:
            rec = self.monitor.history[-1]
            self.run.history.append({"examples": self.run.examples, "batch": b, "batch_bound": rec["batch_bound"]})
        self.bar.update(self.run.examples, batch=b, loss=f"{logs['loss']:.3f}" if logs else "")
        if self.run.examples >= self.budget:
            self.model.stop_training = True


def train(name: str, train_xy, test_xy, *, budget: int, lr: float, hidden: int, seed: int, batch=None, policy=None, mechanism=None) -> Run:
    """SGD on Keras's mean cross-entropy until ``budget`` examples (the last
    batch whole): a fixed ``batch`` (shuffled passes) or a gdiv ``policy``."""
    x, y = train_xy
    n = len(y)
    model = mlp(seed, hidden, lr)
    run = Run(name)
    monitor = None
    if policy is None:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch)
        callbacks: List[keras.callbacks.Callback] = []
        full, last = divmod(n, batch)
        track = Track(run, budget, train_xy, sizes=[batch] * full + ([last] if last else []))
    else:
        # The lines gdiv adds to a Keras script: the monitor, its batches, its callback.
        monitor = gdiv.keras.DiversityMonitor(model, policy=policy, mechanism=mechanism, dataset_size=n, estimator_beta=0.9, seed=seed)
        batches = gdiv.keras.AdaptiveBatches(x, y, monitor, replacement=False, seed=seed)
        ds = batches.dataset()
        callbacks = [gdiv.keras.DiversityCallback(monitor)]
        track = Track(run, budget, train_xy, monitor)
    epochs = 10 * math.ceil(budget / n)  # Track stops at the budget
    t0 = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[*callbacks, track])
    run.seconds = time.perf_counter() - t0
    track.bar.close()
    if monitor is not None:
        monitor.remove()
    run.history.append({"examples": run.examples, "loss": track.full_loss()})
    tl, ta = model.evaluate(x, y, verbose=0, batch_size=1024)
    vl, va = model.evaluate(*test_xy, verbose=0, batch_size=1024)
    run.result = {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va}
    return run


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 6 passes, hidden 32 (a few seconds)")
    ap.add_argument("--out", default=str(ROOT / "examples" / "out"), help="directory of the PNG (default examples/out)")
    ap.add_argument("--epochs", type=float, default=None, help="passes over the training set per run (default 30; 6 with --quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; 1 with --quick)")
    args = ap.parse_args(argv)

    tf.config.threading.set_intra_op_parallelism_threads(1)  # tiny matrices: threads cost more than they give
    tf.config.threading.set_inter_op_parallelism_threads(1)
    epochs = args.epochs if args.epochs is not None else (6 if args.quick else 30)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    hidden = 32 if args.quick else 64
    lr = 0.1
    policy = gdiv.BatchSizePolicy(delta=1.0, min_batch=16, max_batch=1024, lr_rule="linear")
    methods = {
        "fixed 16": dict(batch=16, lr=lr),
        "fixed 512": dict(batch=512, lr=lr),
        "fixed 512, lr×32": dict(batch=512, lr=32 * lr),
        "adaptive": dict(policy=policy, lr=lr),
        "adaptive+Langevin": dict(policy=policy, mechanism=gdiv.Langevin(std=0.05), lr=lr),
    }
    results: Dict[str, List[Run]] = {m: [] for m in methods}
    t0 = time.perf_counter()
    for seed in range(seeds):
        train_xy, test_xy = load_digits(seed)
        n = len(train_xy[1])
        budget = int(math.ceil(epochs * n))
        if seed == 0:
            print(
                f"digits: {n} train / {len(test_xy[1])} test examples, Keras MLP 64-{hidden}-10 (tanh), SGD, mean loss, "
                f"{epochs:g} passes = {budget} examples per run, {seeds} seed(s)",
                file=sys.stderr,
            )
        for name, kw in methods.items():
            label = name if seeds == 1 else f"{name} s{seed}"
            results[name].append(train(label, train_xy, test_xy, budget=budget, hidden=hidden, seed=seed, **kw))
    note = (
        f"lr η = {lr} at batch 16. adaptive: B = δ·B̂_S + 1 (δ = {policy.delta:g}) in [{policy.min_batch}, {policy.max_batch}], "
        f"without replacement, EMA β = 0.9, lr rule {policy.lr_rule}; Langevin: gdiv.Langevin(std=0.05) in norms mode; "
        f"model.fit with gdiv.keras. Total {time.perf_counter() - t0:.1f} s."
    )
    report(results, note, Path(args.out) / "keras_digits.png", f"Keras MLP on digits, {epochs:g} passes per run (seed 0)")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
