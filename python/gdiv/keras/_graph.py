"""The graph side of gdiv.keras's monitored step: the measured gradients
(norms from the layer taps, two_scale's local gradients, the replicas'
reductions, the weight regularizers' exact term, Langevin draws) and full
mode's per-example gradients, reduced to the few float64 numbers of the
step's one host call (:class:`gdiv.keras.DiversityMonitor`'s ``_host``).
No formula of the estimate is here: Go's controller converts."""

from __future__ import annotations

import math
from typing import Any, List

import keras
import numpy as np
import tensorflow as tf

__all__ = ["measured_gradients", "full_gradients", "regularization_gradients", "halves", "lr_of", "VEC", "OUT"]

_F64 = tf.float64
# What leaves the graph each step (VEC, then VEC_NOISE with Langevin noise) and comes back (OUT).
VEC = ("batch", "sum_sq_norms", "sq_norm_of_sum", "scale", "loss", "lr", "sum_sq_local_batches", "measured", "b_small", "sq_norm_small")
VEC_NOISE = ("dim", "noise_dot", "noise_sq_norm")
OUT = ("lr", "set_lr", "batch_bound", "next_batch", "failed", "measure_next", "noise_std", "seed_hi", "seed_lo")


def loss_scale(optimizer: Any) -> Any:
    if optimizer is None:
        return tf.constant(1.0, _F64)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):  # the scale its scale_loss used
        scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
        return tf.cast(tf.convert_to_tensor(scale), _F64)
    f = getattr(optimizer, "loss_scale_factor", None)
    return tf.constant(1.0 if f is None else float(f), _F64)


def halves(seed: int) -> List[int]:
    """A 64-bit seed as two 32-bit halves (exact in float64 and int64)."""
    return [seed >> 32, seed & 0xFFFFFFFF]


def sq_norm(g: Any) -> Any:
    if isinstance(g, tf.IndexedSlices):  # an embedding's rows: sum duplicate rows first
        uniq, pos = tf.unique(g.indices)
        g = tf.math.unsorted_segment_sum(g.values, pos, tf.shape(uniq)[0])
    s = tf.reduce_sum(tf.square(g))
    return tf.cast(s, _F64)


def dot64(a: Any, b: Any) -> Any:
    if isinstance(a, tf.IndexedSlices):
        a = tf.convert_to_tensor(a)
    return tf.cast(tf.reduce_sum(a * tf.cast(b, a.dtype)), _F64)


def measured_gradients(mon: Any, tape: Any, scaled: Any, loss: Any, batch: Any, variables: List[Any], opt: Any) -> List[Any]:
    recs, outs = mon._taps.take()
    n = len(variables)
    both = tape.gradient(scaled, list(variables) + outs)
    grads, douts = both[:n], both[n:]
    for v, g in zip(variables, grads):
        if g is None:
            raise ValueError(
                f"gdiv.keras: the variable {v.path!r} got no gradient from the loss; freeze it (trainable=False) so that "
                "the monitor measures only what is trained"
            )
    measure = tf.convert_to_tensor(mon._measure)
    zero = tf.constant(0.0, _F64)
    xis = draws(mon, variables, grads) if mon.mechanism is not None else None
    if mon.mode == "norms":
        # The per-example work only on measured steps (the cadence); an unmeasured step costs the flag.
        sum_sq = tf.cond(measure, lambda: tf.reduce_sum(mon._taps.per_example(recs, douts, batch)), lambda: zero)
    else:
        sum_sq = zero
    scale = loss_scale(opt)
    b = tf.cast(batch, _F64)
    loss64 = tf.cast(loss, _F64)
    measured = tf.cast(measure, _F64)
    ctx = tf.distribute.get_replica_context()
    if mon.world_size > 1 and ctx is not None:
        # One all-reduce of the gradients (for ‖G‖²; the optimizer reduces them again) and one of the few
        # scalars; every replica then holds the same global numbers. Keras's mean loss is already divided
        # by the replica count, so the per-example gradients are those of the global batch's mean.
        dense = [tf.convert_to_tensor(g) for g in grads]
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, dense)
        sq_sum = tf.add_n([sq_norm(g) for g in reduced])
        # two_scale: this replica's own gradient, before the all-reduce (with a mean loss it is 1/R of
        # the local batch's mean gradient)
        local = tf.add_n([sq_norm(g) for g in dense]) if mon.mode == "two_scale" else zero
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([b, b * b, sum_sq, loss64, local]))
        r = float(mon.world_size)
        small = sums[4] * (r if mon.loss_reduction == "mean" else 1.0 / r)  # mean over replicas of ‖ḡ_r‖² (mean) or ‖g_r‖² (sum)
        global_sq = sums[2]
        reg = [(reduced[i], r) for i, r in regularization_gradients(variables)]
        if reg:
            # Keras divides the regularization loss by the replica count too: the reduced gradient holds ∇R
            # once, and R's gradient (the same on every replica) enters as on one replica, with the global B.
            global_sq = global_sq + _regularization_term(reg, scale, sums[0])
        vec = tf.stack([sums[0], global_sq, sq_sum, scale, sums[3], lr_of(opt), sums[1], measured, b, small])
        if xis is not None:
            vec = tf.concat([vec, noise_moments(reduced, xis)], 0)
        out = ctx.merge_call(mon._host_once, args=(vec,))
    else:
        sq_sum = tf.add_n([sq_norm(g) for g in grads])
        reg = [(grads[i], r) for i, r in regularization_gradients(variables)]
        if reg:
            sum_sq = sum_sq + _regularization_term(reg, scale, b)
        vec = tf.stack([b, sum_sq, sq_sum, scale, loss64, lr_of(opt), b * b, measured, zero, zero])
        if xis is not None:
            vec = tf.concat([vec, noise_moments(grads, xis)], 0)
        out = mon._host_call(vec)
    if xis is not None:
        # noise_std·ξ on the batch gradient (each replica adds 1/R of it: the optimizer sums the replicas)
        std = out[6] / float(mon.world_size)
        grads = [tf.convert_to_tensor(g) + tf.cast(std, xi.dtype) * xi for g, xi in zip(grads, xis)]
    return grads


def _regularization_term(reg: List[Any], scale: Any, b: Any) -> Any:
    """What a weight regularizer adds to Σ‖g_i‖²: f_i = ℓ_i + R (mean loss) or
    ℓ_i + R/B (sum loss), so Σ‖a_i + r‖² = Σ‖a_i‖² + (2⟨G − r, r⟩ + ‖r‖²)/B in
    the measured units (G the whole batch gradient, r = ∇R, both loss-scaled)."""
    dot = tf.add_n([dot64(g, r) for g, r in reg]) * scale  # ⟨G, r_s⟩
    rr = tf.add_n([sq_norm(r) for _, r in reg]) * scale * scale
    return (2.0 * (dot - rr) + rr) / b


def example_loss(mon: Any) -> Any:
    if mon._loss_fn is not None:
        return mon._loss_fn
    loss = getattr(mon._model, "loss", None)
    if loss is None or isinstance(loss, (dict, list, tuple)):
        raise ValueError("gdiv.keras.DiversityMonitor: full mode needs loss_fn=(y_true, y_pred) -> loss, or one compiled loss")
    return keras.losses.get(loss) if isinstance(loss, str) else loss


def full_gradients(mon: Any, x: Any, y: Any, sample_weight: Any, loss: Any, batch: Any, variables: List[Any], opt: Any) -> List[Any]:
    """Full mode: the (B, P) per-example gradients (``tf.vectorized_map``
    over the examples, each one's loss alone), handed to Go with the
    step's one host call: the mechanism is applied to them there, in
    place, and their sum (mean) comes back as the batch gradient."""
    if sample_weight is not None:
        raise ValueError("gdiv.keras.DiversityMonitor: full mode does not support sample weights")
    if regularization_gradients(variables) or mon._model.losses:
        raise ValueError("gdiv.keras.DiversityMonitor: full mode does not support weight regularizers or add_loss terms")
    if isinstance(opt, keras.optimizers.LossScaleOptimizer):
        raise ValueError("gdiv.keras.DiversityMonitor: full mode does not support mixed precision (a LossScaleOptimizer)")
    dim = sum(int(np.prod(v.shape)) for v in variables)
    loss_fn = example_loss(mon)
    model = mon._model

    def one(xy: Any) -> Any:
        xi, yi = xy
        with tf.GradientTape() as t:
            pred = model(tf.nest.map_structure(lambda a: a[None], xi), training=True)
            li = loss_fn(tf.nest.map_structure(lambda a: a[None], yi), pred)
        gs = t.gradient(li, variables)
        return tf.concat([tf.reshape(tf.cast(tf.convert_to_tensor(g), _F64), [-1]) for g in gs], 0)

    need = tf.cast(batch, tf.int64) * dim * 8
    tf.debugging.assert_less_equal(
        need,
        tf.constant(mon.full_max_bytes, tf.int64),
        message=f"gdiv.keras: full mode: the batch's per-example gradients exceed full_max_bytes={mon.full_max_bytes}",
    )
    rows = tf.vectorized_map(one, (x, y), fallback_to_while_loop=True)
    lr = lr_of(opt)
    vec = tf.stack([tf.cast(batch, _F64), tf.cast(loss, _F64), lr])
    res = tf.numpy_function(mon._host_full, [rows, vec], _F64, stateful=True, name="gdiv_controller_full")
    res.set_shape([len(OUT) + dim])
    out, total = res[: len(OUT)], res[len(OUT) :]
    mon._apply_out(out, opt)
    grads, at = [], 0
    for v in variables:
        k = int(np.prod(v.shape))
        grads.append(tf.cast(tf.reshape(total[at : at + k], v.shape), v.dtype))
        at += k
    return grads


def draws(mon: Any, variables: List[Any], grads: List[Any]) -> List[Any]:
    """Unit Gaussians ξ, one per variable, from the step's seed (the same on every replica)."""
    seed = tf.convert_to_tensor(mon._seed)
    return [
        tf.random.stateless_normal(tf.shape(v), seed=tf.random.experimental.stateless_fold_in(seed, k), dtype=tf.convert_to_tensor(g).dtype)
        for k, (v, g) in enumerate(zip(variables, grads))
    ]


def noise_moments(grads: List[Any], xis: List[Any]) -> Any:
    """[d, ⟨G, ξ⟩, ‖ξ‖²] (float64)."""
    dim = float(sum(int(np.prod(xi.shape)) for xi in xis))
    dot = tf.add_n([dot64(g, xi) for g, xi in zip(grads, xis)])
    sq = tf.add_n([sq_norm(xi) for xi in xis])
    return tf.stack([tf.constant(dim, _F64), dot, sq])


def lr_of(opt: Any) -> Any:
    return tf.constant(math.nan, _F64) if opt is None else tf.cast(opt.learning_rate, _F64)


def regularization_gradients(variables: List[Any]) -> List[Any]:
    """(index, r = ∇R) for the variables with a weight regularizer."""
    regd = [(i, v) for i, v in enumerate(variables) if getattr(v, "regularizer", None) is not None]
    if not regd:
        return []
    with tf.GradientTape() as t2:
        terms = [v.regularizer(v) for _, v in regd]
    rs = t2.gradient(terms, [v for _, v in regd])
    return [(i, r) for (i, _), r in zip(regd, rs) if r is not None]
