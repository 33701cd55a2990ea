#!/usr/bin/env python3
"""The Keras step users run: plain Keras vs gdiv.keras norms vs per-example
gradients by tf.vectorized_map (a printed table + PNG + JSON; measured,
never asserted).

One process builds, for every row (model, batch), identical copies of the
model (same seed, float32, ``SGD(0.01)``, ``SparseCategoricalCrossentropy(from_logits=True)``,
``jit_compile=False``) and times ``model.train_on_batch(x, y)`` on one fixed
batch of tf tensors, interleaved in rounds (the order rotating each round,
bench/_interleave.py):

  plain    the compiled model, Keras's own train_step (the baseline)
  plain2   a second plain copy: the plain-vs-plain noise of the machine
  gdiv     the same model with ``gdiv.keras.DiversityMonitor(model, seed=0)``
           attached (it replaces train_step: one tape.gradient for the
           variables and the tapped layer outputs, the per-example norms in
           the graph, one tf.numpy_function into Go's controller per step)
  vmap     the naive per-example peer: train_step replaced by per-example
           gradients with ``tf.vectorized_map`` over the examples (an inner
           GradientTape on each example's loss), their squared norms, Σ‖g_i‖²
           and ‖Σ g_i‖², then ``apply_gradients`` of the mean gradient (no
           controller: the norms only)

``train_on_batch`` is the timed unit (the whole step a ``fit`` user runs,
less fit's per-batch loop); ``--harness fit`` times
``model.fit(ds, steps_per_epoch=--fit-steps, verbose=0)`` per call instead
(per-step time = call / steps). train_on_batch is the default: in the same
budget it gives ~13× more rounds (blocks) than fit over 20 batches, with
quartiles as tight or tighter (plain vs plain, MLP/CNN at B=64, 6 s:
0.96–1.03 / 0.92–0.97 against fit's 1.00–1.03 / 0.92–1.20 over 5 blocks),
and fit's own per-batch loop (callbacks, the iterator: ~3 ms a step on the
MLP here, 5.6 against 2.7 ms) only dilutes every ratio. Variants that are
much heavier than the plain step evict the caches and, in a rotating order,
always run right before the same variant, so the timing is two passes: plain,
plain2 and gdiv interleaved (the headline), then plain and vmap. Rounds are
grouped in blocks of 10; a block's ratio is Σ variant / Σ plain over its
rounds. The table shows the median, [quartiles] and (min–max) over the
blocks (≥ 5 blocks per pass in the full run).

Peak memory: TensorFlow's CPU allocator statistics
(``tf.config.experimental.get_memory_info("CPU:0")``, which TF 2.21 keeps on
the CPU too): for each variant, ``reset_memory_stats`` and then 2 steps;
the peak minus the allocator's current bytes before them (the largest of 3
repeats) is the step's transient tensor memory (the resident weights,
optimizer slots and batch of every copy excluded); the counts move in steps
of 512 KiB, so small differences (±0.5 MiB) are noise. The process's
ru_maxrss (all copies, all rows) is printed under the table.

TF Privacy's fast gradient clipping (the fourth method the issue names) is
not run: ``pip install tensorflow-privacy`` (0.9.0) does not fit this
environment (it pins numpy~=1.21 and packaging~=22.0, would downgrade numpy
2.4 → 1.26, ml_dtypes and absl-py, and pulls the full ``tensorflow`` wheel
next to ``tensorflow-cpu``); it is not installed by anything here.

Usage:
    python bench/bench_keras.py [--quick] [--models mlp cnn] [--batches 64 256] [--threads 1]
                                [--budget 12] [--harness train_on_batch|fit] [--out bench/out]

--quick: batch 64, a short budget (< 60 s, used by the test suite).
Target (issue): the whole monitored step ≤ 1.10× plain at batch ≥ 64 and
below every peer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _interleave import BLOCK, interleaved_blocks, spread, until  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ["mlp", "cnn"]
DESC = {
    "mlp": "MLP 64-512-512-10 (tanh, relu)",
    "cnn": "CNN 16×16×3, 2×conv3×3 + dense",
}
PEERS = ["vmap"]  # the approaches gdiv's norms must beat
HEAVY = ["full", "vmap"]  # timed in a pass of their own (they evict the caches)
LIGHT = ["plain", "plain2", "gdiv"]
ORDER = LIGHT + HEAVY
SHOWN = ["gdiv", "full", "vmap", "plain2"]
TARGET = 1.10
MIB = float(1 << 20)


# ----------------------------------------------------------------- models ---


def build(name: str, variant: str, batch: int):
    """A compiled model of the row; for gdiv with the monitor attached, for
    vmap with the per-example train_step. Returns (model, monitor or None)."""
    import keras

    import gdiv.keras as gk

    keras.utils.set_random_seed(0)
    if name == "mlp":
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(512, activation="tanh"),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
    elif name == "cnn":
        model = keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        )
    else:
        raise ValueError(f"unknown model {name!r}")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss=loss, jit_compile=False)
    mon = None
    if variant == "gdiv":
        mon = gk.DiversityMonitor(model, seed=0)
    elif variant == "full":  # per-example gradients (vectorized_map) summed in Go: what Dropout/Quantize need
        mon = gk.DiversityMonitor(model, mode="full", seed=0)
    elif variant == "vmap":
        model.train_step = vmap_train_step(model, loss)
    return model, mon


def data(name: str, batch: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(1)
    shape = (batch, 64) if name == "mlp" else (batch, 16, 16, 3)
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, size=(batch,)), dtype=tf.int32)
    return x, y


def vmap_train_step(model: Any, loss_fn: Any) -> Callable[[Any], Dict[str, Any]]:
    """The naive per-example step: per-example gradients by vectorized_map,
    their squared norms (reduced as gdiv reduces them), the mean gradient
    applied."""
    import keras
    import tensorflow as tf

    def train_step(data: Any) -> Dict[str, Any]:
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        variables = model.trainable_variables

        def one(xy):
            xi, yi = xy
            with tf.GradientTape() as tape:
                li = loss_fn(yi[None], model(xi[None], training=True))
            return li, tape.gradient(li, variables)

        losses, per = tf.vectorized_map(one, (x, y))
        b = tf.shape(x)[0]
        sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [b, -1]), axis=1) for g in per])
        grads = [tf.reduce_mean(g, axis=0) for g in per]
        sum_sq = tf.reduce_sum(tf.cast(sq, tf.float64))
        bf = tf.cast(b, tf.float64)
        sq_sum = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in grads]) * bf * bf
        model.optimizer.apply_gradients(zip(grads, variables))
        return {"loss": tf.reduce_mean(losses), "sum_sq_norms": sum_sq, "sq_norm_of_sum": sq_sum}

    return train_step


# ---------------------------------------------------------------- one row ---


class PforFallbacks(logging.Handler):
    """Collects tf.vectorized_map's '<op> uses a while_loop. Fix that!'
    warnings (an op of the peer that pfor runs as a loop over the examples)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.ops: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "uses a while_loop" in msg:
            self.ops.append(msg.split()[0])
        elif "while_loop for converting" in msg:
            self.ops.append(msg.split("converting", 1)[1].split()[0])


def row(name: str, batch: int, budget: float, min_rounds: int, harness: str, fit_steps: int) -> Dict[str, Any]:
    import tensorflow as tf

    fallbacks = PforFallbacks()
    tf.get_logger().addHandler(fallbacks)
    copies = {v: build(name, v, batch) for v in ORDER}
    traces = {v: count_traces(copies[v][0]) for v in ORDER}
    x, y = data(name, batch)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    first: Dict[str, Dict[str, float]] = {}

    def step(v: str) -> float:
        model = copies[v][0]
        if harness == "fit":
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=fit_steps, verbose=0)
            return (time.perf_counter() - t0) / fit_steps
        t0 = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        t = time.perf_counter() - t0
        if v not in first:
            first[v] = {k: float(val) for k, val in logs.items()}
        return t

    t_build = time.perf_counter()
    for _ in range(3):  # warm-up: tracing, oneDNN primitives, the monitor's first host call
        for v in ORDER:
            step(v)
    trace_s = time.perf_counter() - t_build
    tf.get_logger().removeHandler(fallbacks)
    # Two interleaved passes: a heavy variant evicts the caches, and in a rotating order the same variant always
    # runs right after it (vmap before plain made plain2 and gdiv look 10% faster than plain). So gdiv is timed
    # against plain and plain2 (light variants only), and the peer against plain in a pass of its own.
    ratios, rounds, plain_t = interleaved_blocks(step, LIGHT, until(budget, min_rounds))
    peer_ratios, peer_rounds, _ = interleaved_blocks(step, ["plain"] + HEAVY, until(budget / 2, min_rounds))
    ratios.update(peer_ratios)
    mem = {v: peak_bytes(lambda v=v: step(v)) for v in ORDER}
    mon = copies["gdiv"][1]
    out: Dict[str, Any] = {
        "model": name,
        "batch": batch,
        "harness": harness,
        "rounds": rounds,
        "blocks": rounds // BLOCK,
        "peer_rounds": peer_rounds,
        "warmup_s": trace_s,
        "plain_ms": 1e3 * statistics.median(plain_t),
        "peak_mib": {v: mem[v] / MIB for v in ORDER},
        "pfor_while_loop_ops": sorted(set(fallbacks.ops)),
        "traces": {v: n[0] for v, n in traces.items()},
    }
    for v in ORDER[1:]:
        out[v] = dict(spread(ratios[v]), min=min(ratios[v]), max=max(ratios[v]), blocks=ratios[v])
    # The first step of gdiv and vmap ran at the same initial weights on the same batch: their Σ‖g_i‖² must agree.
    if mon is not None and mon.history and "vmap" in first:
        g, p = mon.history[0]["sum_sq_norms"], first["vmap"]["sum_sq_norms"]
        out["norms_rel_diff"] = abs(g - p) / max(abs(p), 1e-300)
    out["target_met"] = out["gdiv"]["median"] <= TARGET and all(out["gdiv"]["median"] < out[p]["median"] for p in PEERS)
    return out


def count_traces(model: Any) -> List[int]:
    """Wrap the model's train_step (plain, the monitor's or the peer's) in a
    counter of its Python runs, i.e. of the traces of Keras's tf.function
    (no cost per step: the wrapper runs at trace time only)."""
    n = [0]
    inner = model.train_step

    def train_step(data: Any) -> Any:
        n[0] += 1
        return inner(data)

    model.train_step = train_step
    model.train_function = None
    return n


def peak_bytes(step: Callable[[], float], steps: int = 2, repeats: int = 3) -> float:
    """The transient tensor bytes of a step: the CPU allocator's peak over a
    few steps minus its current bytes before them, the largest of a few
    repeats (the counts move in steps of 512 KiB here); nan if TF keeps no
    statistics."""
    import tensorflow as tf

    seen = []
    try:
        for _ in range(repeats):
            tf.config.experimental.reset_memory_stats("CPU:0")
            before = tf.config.experimental.get_memory_info("CPU:0")["current"]
            for _ in range(steps):
                step()
            peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
            if peak > 0:
                seen.append(float(peak - before))
    except (ValueError, RuntimeError):
        return float("nan")
    return max(seen) if seen else float("nan")


# ----------------------------------------------------------------- output ---


def cell(r: Dict[str, Any], v: str) -> str:
    q = r[v]
    return f"{q['median']:.2f}× [{q['q1']:.2f}–{q['q3']:.2f}] ({q['min']:.2f}–{q['max']:.2f})"


def mem_cell(r: Dict[str, Any], v: str) -> str:
    m = r["peak_mib"][v]
    return "—" if m != m else f"{m:.1f}"


def table(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| model | batch | plain ms | gdiv norms | gdiv full | vmap per-example | TF Privacy fast clipping | plain vs plain | "
        "peak MiB plain / gdiv / full / vmap | gdiv ≤ 1.10× and < peers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = " / ".join(mem_cell(r, v) for v in ("plain", "gdiv", "full", "vmap"))
        lines.append(
            f"| {DESC[r['model']]} | {r['batch']} | {r['plain_ms']:.2f} | {cell(r, 'gdiv')} | {cell(r, 'full')} | {cell(r, 'vmap')} | not run¹ | "
            f"{cell(r, 'plain2')} | {mem} | {'yes' if r['target_met'] else 'no'} |"
        )
    return "\n".join(lines)


def notes(rows: List[Dict[str, Any]], threads: int, harness: str) -> str:
    import keras
    import tensorflow as tf

    import gdiv

    blocks = ", ".join(f"{len(r['gdiv']['blocks'])}/{len(r['vmap']['blocks'])}" for r in rows)
    traces = "1 (no retracing while timed)" if all(n == 1 for r in rows for n in r["traces"].values()) else str([r["traces"] for r in rows])
    checks = ", ".join(f"{r['model']} B={r['batch']}: {r.get('norms_rel_diff', float('nan')):.1e}" for r in rows)
    loops = sorted({op for r in rows for op in r["pfor_while_loop_ops"]})
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return "\n".join(
        [
            f"Per-step time / the plain Keras step, median [quartiles] (min–max) over blocks of {BLOCK} interleaved rounds "
            f"({harness}; blocks per row, gdiv / vmap: {blocks}); traces per copy: {traces}.",
            "Peak MiB: TF's CPU allocator peak over 2 steps of the variant minus its current bytes before them, the largest of 3 "
            "repeats (tf.config.experimental.get_memory_info('CPU:0'), whose counts move in 512 KiB steps here: ±0.5 MiB); "
            f"process ru_maxrss at the end {maxrss:.0f} MiB (all copies, all rows).",
            "¹ TF Privacy: `pip install tensorflow-privacy --dry-run` → tensorflow_privacy 0.9.0 pins numpy~=1.21, packaging~=22.0: it "
            "would downgrade numpy 2.4 → 1.26.4 (and ml_dtypes, absl-py) and add the full tensorflow wheel next to tensorflow-cpu; not installed.",
            f"Σ‖g_i‖² of the first step, gdiv vs vmap (same weights, same batch), relative difference: {checks}.",
            f"vectorized_map while_loop fallbacks: {', '.join(loops) if loops else 'none'}.",
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {threads} intra/inter-op thread(s), {os.cpu_count()} cores, "
            f"{platform.machine()}, float32; gdiv from {os.path.dirname(gdiv.__file__ or '?')}.",
        ]
    )


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nB={r['batch']}" for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(4 + 2.2 * len(rows), 4))
    w = 0.2
    names = {
        "gdiv": "gdiv.keras norms",
        "full": "gdiv.keras full",
        "vmap": "vectorized_map per-example",
        "plain2": "plain vs plain",
        "plain": "plain",
    }
    colors = {"plain": "C7", "plain2": "C2", "gdiv": "C0", "full": "C4", "vmap": "C1"}
    for j, v in enumerate(SHOWN):
        med = [r[v]["median"] for r in rows]
        err = [[r[v]["median"] - r[v]["q1"] for r in rows], [r[v]["q3"] - r[v]["median"] for r in rows]]
        ax.bar([i + (j - 1.5) * w for i in range(len(rows))], med, w, yerr=err, capsize=3, label=names[v], color=colors[v])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(TARGET, color="r", lw=0.8, ls="--", label=f"{TARGET:.2f}× target")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("step time / plain Keras step (median, quartiles)")
    ax.set_title(f"Keras {rows[0]['harness']}: monitored vs plain (1 process, interleaved)", fontsize=10)
    ax.legend(fontsize=7)
    for j, v in enumerate(("plain", "gdiv", "full", "vmap")):
        bx.bar([i + (j - 1.5) * w for i in range(len(rows))], [r["peak_mib"][v] for r in rows], w, label=names[v], color=colors[v])
    bx.set_xticks(range(len(rows)))
    bx.set_xticklabels(labels)
    bx.set_yscale("log")
    bx.set_ylabel("peak transient tensor MiB per step")
    bx.set_title("TF CPU allocator peak", fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--threads", type=int, default=1, help="TF intra- and inter-op threads (default 1: stable on a small shared machine)")
    ap.add_argument("--budget", type=float, default=12.0, help="seconds of timed rounds per row (default 12)")
    ap.add_argument("--harness", choices=["train_on_batch", "fit"], default="train_on_batch")
    ap.add_argument("--fit-steps", type=int, default=20, help="batches per fit call with --harness fit")
    ap.add_argument("--quick", action="store_true", help="batch 64, a short budget (< 60 s)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    a = ap.parse_args()
    min_rounds = 5 * BLOCK
    if a.quick:
        a.batches, a.budget, min_rounds = [64], 2.0, 2 * BLOCK
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    configs = [(m, b) for m in a.models for b in a.batches]
    rows = []
    t0 = time.perf_counter()
    print(f"bench_keras: {len(configs)} rows, {a.harness}, {a.threads} thread(s)", file=sys.stderr, flush=True)
    for i, (m, b) in enumerate(configs, 1):
        r = row(m, b, a.budget, min_rounds, a.harness, a.fit_steps)
        rows.append(r)
        eta = (time.perf_counter() - t0) / i * (len(configs) - i)
        print(
            f"[{i}/{len(configs)}] {m} B={b}: gdiv {r['gdiv']['median']:.2f}× full {r['full']['median']:.2f}× vmap {r['vmap']['median']:.2f}× "
            f"({r['rounds']} rounds, warm-up {r['warmup_s']:.1f} s; eta {eta:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    print()
    print(table(rows))
    print()
    print(notes(rows, a.threads, a.harness))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "keras.json"), "w") as f:
        json.dump({"rows": rows, "threads": a.threads, "harness": a.harness}, f, indent=1)
    png = os.path.join(a.out, "bench_keras.png")
    plot(rows, png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
