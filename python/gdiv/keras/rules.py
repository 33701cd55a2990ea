"""Per-layer rules for Keras 3 on the TensorFlow backend: per-example squared
gradient norms of a layer's variables from its input and the gradient of its
output, registered by layer class (after Opacus' ``@register_grad_sampler``).

A rule is called as ``rule(layer, x, dz)``:

- ``x``: the first positional input the layer's ``call`` received, batch
  first (for ``Embedding``: the integer ids);
- ``dz``: ∂L/∂z, the gradient of the reduced loss (batch mean or sum: the
  reduction is in ``dz``) with respect to the layer's output before its
  activation (Dense, Conv*: the linear output, bias included; the capture runs
  ``call`` with ``layer.activation = None`` and applies the activation
  itself), or the output itself for layers without an activation;

and returns ``{attribute name: (B,) float64}``, one entry per variable of the
layer ("kernel", "bias", "embeddings", "gamma", "beta"): ‖∂/∂W Σ_j ⟨z_j, dz_j⟩
restricted to the terms of example i‖²_F. The arithmetic is in dz's dtype
(float64 for float64 layers, float32 otherwise: float16 / bfloat16 are
upcast); only the (B,) results are cast to float64. Rules run eagerly and
inside ``tf.function`` with unknown batch size and sequence lengths.

Formulas (x_i, dz_i: example i; t, s: positions of a sequence or of the
output of a convolution)::

    Dense, 2-D input:    ‖g_kernel,i‖² = ‖x_i‖² ‖dz_i‖²,        ‖g_bias,i‖² = ‖dz_i‖²
    Dense, (B, T, in):   g_kernel,i = Σ_t x_it dz_itᵀ,            ‖g_bias,i‖² = ‖Σ_t dz_it‖²
        materialized:    ‖X_iᵀ DZ_i‖²_F                          (B·in·out memory)
        Gram:            Σ_{t,s} (x_it·x_is)(dz_it·dz_is)        (B·T² memory)
        whichever needs fewer flops: Gram iff T·(in + out) ≤ in·out (as gdiv.torch);
        decided at trace time when T is static, else at run time (tf.cond).
    Conv1D / Conv2D:     Dense on the im2col patches (B, positions, kh·kw·C_in).
    Embedding:           ‖g_i‖² = Σ_v ‖Σ_{t: id_it = v} dz_it‖²   (one segment sum per (example, id))
    LayerNormalization:  g_gamma,i = Σ_{other positions} dz_i ⊙ x̂_i,   g_beta,i = Σ_{other positions} dz_i

A built-in rule declines the configurations it does not compute
(:func:`decline_reason`): :func:`find_norm_rule` then returns None and the
capture uses the fallback (gdiv.keras.fallback). BatchNormalization's rule
raises :class:`~gdiv.keras.errors.UnsupportedLayerError` (train-mode batch
statistics couple the examples).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from .errors import UnsupportedLayerError, batch_norm_message

__all__ = [
    "NormRule",
    "register_norm_rule",
    "find_norm_rule",
    "registered_norm_rules",
    "decline_reason",
    "dense_rule",
    "conv_rule",
    "embedding_rule",
    "layer_norm_rule",
    "batch_norm_rule",
]

# rule(layer, x, dz) -> {variable attribute name: (B,) float64 squared norms}
NormRule = Callable[[keras.layers.Layer, tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]

_RULES: Dict[type, NormRule] = {}

# Built-in rules' checks: reason(layer) -> why the rule does not handle this
# configuration, or None. Keyed by rule, so a rule registered by the user for
# the same class has none.
_DECLINES: Dict[NormRule, Callable[[keras.layers.Layer], Optional[str]]] = {}


def register_norm_rule(layer_class: type, rule: NormRule) -> None:
    """Register ``rule`` as the per-example squared-norm rule of ``layer_class``
    and of its subclasses that do not override ``call``.

    A later registration for the same class replaces the earlier one.

    Example:
        >>> def scale_rule(layer, x, dz):          # z = x * scale, x (B, d)
        ...     return {"scale": tf.cast(tf.reduce_sum(tf.square(x * dz), 1), tf.float64)}
        >>> register_norm_rule(MyScale, scale_rule)

    Raises:
        TypeError: ``layer_class`` is not a ``keras.layers.Layer`` subclass, or
            ``rule`` is not callable.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"register_norm_rule: {layer_class!r} is not a keras.layers.Layer subclass")
    if not callable(rule):
        raise TypeError(f"register_norm_rule: the rule for {layer_class.__name__} is not callable: {rule!r}")
    _RULES[layer_class] = rule


def _lookup(layer: keras.layers.Layer):
    """(rule or None, reason or None): the rule of the layer's class, else of
    the nearest registered base class (MRO order) whose ``call`` the class
    does not override."""
    cls = type(layer)
    for base in cls.__mro__:
        rule = _RULES.get(base)
        if rule is None:
            continue
        if base is not cls and getattr(cls, "call", None) is not getattr(base, "call", None):
            return None, f"{cls.__name__} overrides call() of {base.__name__}, whose rule would not know what it computes"
        check = _DECLINES.get(rule)
        reason = check(layer) if check is not None else None
        return (None, reason) if reason else (rule, None)
    return None, None


def find_norm_rule(layer: keras.layers.Layer) -> Optional[NormRule]:
    """The rule for ``layer``: its class's, else the nearest registered base
    class's (most specific first) if the layer's class does not override that
    base's ``call``; None if there is none or the built-in rule declines this
    configuration (:func:`decline_reason`): use the fallback."""
    return _lookup(layer)[0]


def decline_reason(layer: keras.layers.Layer) -> Optional[str]:
    """Why a rule registered for the layer's class (or a base class) is not
    used for ``layer`` (LoRA enabled, quantized, channels_first, groups > 1,
    ``call`` overridden by a subclass, ...); None if it is used or there is
    no rule at all. For messages and logs."""
    return _lookup(layer)[1]


def registered_norm_rules() -> Dict[type, NormRule]:
    """A copy of the rule table, {layer class: rule}, in registration order."""
    return dict(_RULES)


# ---------------------------------------------------------------------------
# helpers


def _name(layer: keras.layers.Layer) -> str:
    return f"layer '{layer.name}' ({type(layer).__name__})"


def _refuse(layer: keras.layers.Layer, problem: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"gdiv.keras: {_name(layer)}: {problem}")


def _check_declined(layer: keras.layers.Layer, rule: NormRule) -> None:
    """A built-in rule called directly on a configuration it declines raises."""
    reason = _DECLINES[rule](layer)
    if reason:
        raise _refuse(layer, f"{reason}; its rule does not apply (find_norm_rule returns None: use the fallback)")


def _dense(layer: keras.layers.Layer, t, what: str) -> tf.Tensor:
    if isinstance(t, (tf.SparseTensor, tf.RaggedTensor)):
        raise _refuse(layer, f"the {what} is a {type(t).__name__}; the rules take dense tensors")
    return tf.convert_to_tensor(t)


def _compute_dtype(dz: tf.Tensor) -> tf.DType:
    return tf.float64 if dz.dtype == tf.float64 else tf.float32


def _lora_or_quantized(layer: keras.layers.Layer) -> Optional[str]:
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled (the trainable variables are lora_*_a / lora_*_b, not the kernel)"
    mode = getattr(layer, "quantization_mode", None)
    if mode:
        return f"the layer is quantized (quantization_mode={mode!r})"
    return None


def _sq64(t: tf.Tensor) -> tf.Tensor:
    """(B,) float64: the squared norm of each example's slice of t (B, ...),
    summed in t's dtype."""
    t = tf.reshape(t, tf.stack([tf.shape(t)[0], -1]))
    return tf.cast(tf.reduce_sum(tf.square(t), axis=1), tf.float64)


def _static_prod(dims) -> Optional[int]:
    return None if any(d is None for d in dims) else math.prod(dims)


def _as_sequence(t: tf.Tensor, last: Optional[int] = None) -> tf.Tensor:
    """t (B, ..., d) as (B, T, d), T the product of the middle dims (static
    where the shape is)."""
    d = last if last is not None else t.shape[-1]
    mid = _static_prod(t.shape[1:-1]) if t.shape.rank is not None else None
    shape = tf.shape(t)
    return tf.reshape(t, [shape[0], -1 if mid is None else mid, shape[-1] if d is None else d])


def sq_norm_of_outer_sums(a: tf.Tensor, g: tf.Tensor, method: Optional[str] = None) -> tf.Tensor:
    """For each example i: ‖Σ_t a[i, t] g[i, t]ᵀ‖²_F, with a (B, T, K) and
    g (B, T, F) of the same float dtype; (B,) in that dtype.

    ``method``: "gram" (Σ_{t,s} (a_t·a_s)(g_t·g_s), B·T² memory),
    "materialize" (the (B, K, F) matrices), or None: T = 1 by the rank-one
    identity, else whichever needs fewer flops (Gram iff T·(K + F) ≤ K·F),
    chosen at trace time where T, K, F are static, else at run time.
    """

    def gram():
        ga = tf.matmul(a, a, transpose_b=True)  # (B, T, T)
        gg = tf.matmul(g, g, transpose_b=True)
        return tf.reduce_sum(ga * gg, axis=[1, 2])

    def materialize():
        w = tf.matmul(a, g, transpose_a=True)  # (B, K, F)
        return tf.reduce_sum(tf.square(w), axis=[1, 2])

    if method == "gram":
        return gram()
    if method == "materialize":
        return materialize()
    if method is not None:
        raise ValueError(f"method must be 'gram', 'materialize' or None, got {method!r}")
    t, k, f = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        return tf.reduce_sum(tf.square(a), axis=[1, 2]) * tf.reduce_sum(tf.square(g), axis=[1, 2])
    if None not in (t, k, f):
        return gram() if t * (k + f) <= k * f else materialize()
    ts, ks, fs = (tf.cast(v, tf.int64) for v in (tf.shape(a)[1], tf.shape(a)[2], tf.shape(g)[2]))
    return tf.cond(ts * (ks + fs) <= ks * fs, gram, materialize)


# ---------------------------------------------------------------------------
# Dense


def _dense_declines(layer: keras.layers.Layer) -> Optional[str]:
    return _lora_or_quantized(layer)


def dense_rule(layer: keras.layers.Layer, x: tf.Tensor, dz: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``keras.layers.Dense``: z = x W + b over the last axis of x (B, ..., in).

    Raises:
        UnsupportedLayerError: LoRA enabled or quantized (find_norm_rule
            returns None for those).
    """
    _check_declined(layer, dense_rule)
    dt = _compute_dtype(dz)
    x = tf.cast(_dense(layer, x, "input"), dt)
    dz = tf.cast(_dense(layer, dz, "output gradient"), dt)
    out: Dict[str, tf.Tensor] = {}
    if x.shape.rank == 2:
        dz_sq = tf.reduce_sum(tf.square(dz), axis=1)
        out["kernel"] = tf.cast(tf.reduce_sum(tf.square(x), axis=1) * dz_sq, tf.float64)
        if layer.bias is not None:
            out["bias"] = tf.cast(dz_sq, tf.float64)
        return out
    a, g = _as_sequence(x), _as_sequence(dz, layer.units)
    out["kernel"] = tf.cast(sq_norm_of_outer_sums(a, g), tf.float64)
    if layer.bias is not None:
        out["bias"] = _sq64(tf.reduce_sum(g, axis=1))
    return out


# ---------------------------------------------------------------------------
# Conv1D, Conv2D


def _conv_declines(layer: keras.layers.Layer) -> Optional[str]:
    if layer.data_format != "channels_last":
        return f"data_format={layer.data_format!r} (the rule takes channels_last)"
    if layer.rank not in (1, 2):
        return f"a {layer.rank}-D convolution (the rule takes 1-D and 2-D)"
    return _lora_or_quantized(layer)


def _channel_major(layer: keras.layers.Layer) -> bool:
    """Whether :func:`conv_patches` orders the last axis (C_in, taps) (the
    depthwise path) rather than (taps, C_in) (extract_patches)."""
    return layer.rank == 1 or layer.strides[0] == layer.strides[1]


def conv_patches(layer: keras.layers.Layer, x: tf.Tensor) -> tf.Tensor:
    """The im2col patches of a channels_last Conv1D / Conv2D input:
    (B, out_h, out_w, kh·kw·C_in), one row per output position, with the
    layer's strides, dilation and padding (TF's "SAME" rule, the one
    ``tf.nn.convolution`` uses; Conv1D's "causal" as Keras does it: left
    padding by dilation·(k − 1), then "VALID"; Conv1D as a (B, L, 1, C)
    image with a (k, 1) kernel).

    Built by a depthwise convolution with one-hot filters (one output
    channel per kernel tap and input channel; several times faster on the
    CPU than ``tf.image.extract_patches``, which is used where depthwise
    convolutions cannot go: unequal strides). The order of the last axis
    differs between the two; no norm depends on it."""
    padding = layer.padding.upper()
    if layer.rank == 1:
        (k,), (s,), (d,) = layer.kernel_size, layer.strides, layer.dilation_rate
        if padding == "CAUSAL":
            x = tf.pad(x, [[0, 0], [d * (k - 1), 0], [0, 0]])
            padding = "VALID"
        x = tf.expand_dims(x, 2)  # (B, L, 1, C)
        (kh, kw), (sh, sw), (dh, dw) = (k, 1), (s, s), (d, d)  # the width is 1: its stride and dilation do nothing
    else:
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    if _channel_major(layer):
        c = x.shape[-1]
        if c is None:
            raise UnsupportedLayerError(f"gdiv.keras: {_name(layer)}: the input's channel count is unknown")
        taps = kh * kw
        onehot = tf.reshape(tf.eye(taps, dtype=x.dtype), [kh, kw, 1, taps]) * tf.ones([1, 1, c, 1], x.dtype)
        return tf.nn.depthwise_conv2d(x, onehot, [1, sh, sw, 1], padding, dilations=[dh, dw])
    return tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1], padding=padding)


def conv_rule(layer: keras.layers.Layer, x: tf.Tensor, dz: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``keras.layers.Conv1D`` / ``Conv2D`` (channels_last, any strides,
    dilation, padding and groups): im2col, then Dense on the positions (per
    group: its input channels against its filters).

    Raises:
        UnsupportedLayerError: a configuration :func:`decline_reason` names
            (find_norm_rule returns None for those).
    """
    _check_declined(layer, conv_rule)
    dt = _compute_dtype(dz)
    x = tf.cast(_dense(layer, x, "input"), dt)
    dz = tf.cast(_dense(layer, dz, "output gradient"), dt)
    taps, c = math.prod(layer.kernel_size), x.shape[-1]
    k = taps * c if c is not None else None
    a = _as_sequence(conv_patches(layer, x), k)  # (B, P, kh·kw·C_in)
    g = _as_sequence(dz, layer.filters)  # (B, P, F)
    groups = layer.groups
    if groups == 1:
        kernel = sq_norm_of_outer_sums(a, g)
    else:  # group j: its C_in/groups input channels against its F/groups filters
        if c is None:
            raise _refuse(layer, "a grouped convolution needs the input's channel count")
        cg, fg = c // groups, layer.filters // groups
        shape = tf.shape(a)
        a = tf.reshape(a, [shape[0], shape[1], c, taps] if _channel_major(layer) else [shape[0], shape[1], taps, c])
        if not _channel_major(layer):
            a = tf.transpose(a, [0, 1, 3, 2])
        kernel = tf.add_n(
            [
                sq_norm_of_outer_sums(tf.reshape(a[:, :, j * cg : (j + 1) * cg, :], [shape[0], shape[1], cg * taps]), g[:, :, j * fg : (j + 1) * fg])
                for j in range(groups)
            ]
        )
    out = {"kernel": tf.cast(kernel, tf.float64)}
    if layer.bias is not None:
        out["bias"] = _sq64(tf.reduce_sum(g, axis=1))
    return out


# ---------------------------------------------------------------------------
# Embedding


def _embedding_declines(layer: keras.layers.Layer) -> Optional[str]:
    return _lora_or_quantized(layer)


def embedding_rule(layer: keras.layers.Layer, x: tf.Tensor, dz: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``keras.layers.Embedding``: ids x (B, ...) of any shape, int or float
    (cast to int64 as the layer casts them to int). Example i's gradient has
    one row per distinct id v, Σ_{t: id_t = v} dz_t: one segment sum over
    the distinct (example, id) pairs, O(B·T·D) (no B·T² temporaries).
    ``mask_zero`` does not change the gradient. Ids must lie in
    [0, input_dim), as the layer needs.

    Raises:
        UnsupportedLayerError: LoRA enabled or quantized (find_norm_rule
            returns None for those).
    """
    _check_declined(layer, embedding_rule)
    dt = _compute_dtype(dz)
    ids = _dense(layer, x, "input")
    ids = tf.cast(ids, tf.int64)
    dz = tf.cast(_dense(layer, dz, "output gradient"), dt)
    b = tf.shape(ids)[0]
    ids = tf.reshape(ids, [b, -1])  # (B, T)
    rows = tf.reshape(dz, [-1, layer.output_dim])  # (B·T, D)
    v = tf.constant(layer.input_dim, tf.int64)
    keys = tf.reshape(tf.range(tf.cast(b, tf.int64), dtype=tf.int64)[:, None] * v + ids, [-1])
    uniq, idx = tf.unique(keys)
    sums = tf.math.unsorted_segment_sum(rows, idx, tf.shape(uniq)[0])  # (U, D): one row per (example, id)
    row_sq = tf.reduce_sum(tf.square(sums), axis=1)
    per_example = tf.math.unsorted_segment_sum(row_sq, uniq // v, b)
    return {"embeddings": tf.cast(per_example, tf.float64)}


# ---------------------------------------------------------------------------
# LayerNormalization


def _layer_norm_axes(layer: keras.layers.Layer) -> list:
    axis = layer.axis
    return list(axis) if isinstance(axis, (list, tuple)) else [axis]


def _layer_norm_declines(layer: keras.layers.Layer) -> Optional[str]:
    axes = _layer_norm_axes(layer)
    if any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in axes):
        return f"axis={layer.axis!r} is not an int or a list of ints"
    if 0 in axes:
        return f"axis={layer.axis!r} normalizes over the batch axis, which couples the examples"
    return None


def layer_norm_rule(layer: keras.layers.Layer, x: tf.Tensor, dz: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``keras.layers.LayerNormalization`` (any axes but the batch axis, center,
    scale, rms_scaling), with x̂ recomputed from x as Keras 3.15 does it
    (``keras.src.ops.nn._layer_normalization``, in float32 at least):

        x̂ = (x − mean) / sqrt(var + ε)          (the default)
        x̂ = x / sqrt(var + ε)                   (rms_scaling=True: Keras scales by
                                                 the variance, not the mean square)

    mean and var over the layer's axes; z = γ ⊙ x̂ + β. Example i's gradient
    of γ is Σ dz_i ⊙ x̂_i over the positions not normalized (γ's shape),
    that of β Σ dz_i.

    Raises:
        UnsupportedLayerError: axis includes the batch axis (the examples are
            coupled) or x's rank is not static.
    """
    _check_declined(layer, layer_norm_rule)
    rank = x.shape.rank
    if rank is None:
        raise _refuse(layer, "the input's rank is not static; the rule needs it to place the normalized axes")
    axes = sorted({int(a) % rank for a in _layer_norm_axes(layer)})
    if 0 in axes:
        raise _refuse(layer, f"axis={layer.axis!r} normalizes over the batch axis of a rank-{rank} input, which couples the examples")
    dt = _compute_dtype(dz)
    x = tf.cast(_dense(layer, x, "input"), dt)
    dz = tf.cast(_dense(layer, dz, "output gradient"), dt)
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    inv = tf.math.rsqrt(var + tf.constant(layer.epsilon, dt))  # not tf.cast(ε): that rounds ε to float32 first
    x_hat = x * inv if layer.rms_scaling else x * inv - mean * inv  # as Keras computes it (x·inv + (−mean·inv))
    others = [a for a in range(1, rank) if a not in axes]
    out: Dict[str, tf.Tensor] = {}
    if layer.gamma is not None:
        out["gamma"] = _sq64(tf.reduce_sum(dz * x_hat, axis=others) if others else dz * x_hat)
    if layer.beta is not None:
        out["beta"] = _sq64(tf.reduce_sum(dz, axis=others) if others else dz)
    return out


# ---------------------------------------------------------------------------
# BatchNormalization


def batch_norm_rule(layer: keras.layers.Layer, x: tf.Tensor, dz: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``keras.layers.BatchNormalization`` in training mode: refused.

    Raises:
        UnsupportedLayerError: always, with the advice (LayerNormalization /
            GroupNormalization, freeze the layer, or mode="two_scale").
    """
    raise UnsupportedLayerError(batch_norm_message(layer))


# Registers the built-in rules, in this order (that of registered_norm_rules()).
register_norm_rule(keras.layers.Dense, dense_rule)
register_norm_rule(keras.layers.Conv1D, conv_rule)
register_norm_rule(keras.layers.Conv2D, conv_rule)
register_norm_rule(keras.layers.Embedding, embedding_rule)
register_norm_rule(keras.layers.LayerNormalization, layer_norm_rule)
register_norm_rule(keras.layers.BatchNormalization, batch_norm_rule)
_DECLINES[dense_rule] = _dense_declines
_DECLINES[conv_rule] = _conv_declines
_DECLINES[embedding_rule] = _embedding_declines
_DECLINES[layer_norm_rule] = _layer_norm_declines
