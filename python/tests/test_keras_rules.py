"""gdiv.keras per-example norm rules (Dense, Conv1D/2D, Embedding,
LayerNormalization; BatchNormalization refused) and the vectorized_map
fallback, against an independent per-example GradientTape loop: for each
example i, the layer run on example i alone and ∇ of ℓ_i / B, ℓ a nonlinear
per-example loss of the layer's output (L = mean_i ℓ_i is the batch loss
whose ∂L/∂z the rules get). Eager and tf.function with a None batch
dimension; float32 and float64.

Tolerances (relative to the largest value of each compared vector):
float64 1e-10, float32 2e-4 (float32 sums of up to a few hundred products,
Gram and materialized orders differ), mixed_float16 1e-2 (the oracle's
gradients are float16 products)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":  # pragma: no cover
    pytest.skip("gdiv.keras needs the TensorFlow backend of Keras", allow_module_level=True)

from gdiv.keras import rules  # noqa: E402
from gdiv.keras.errors import UnsupportedLayerError  # noqa: E402
from gdiv.keras.fallback import fallback_sq_norms  # noqa: E402
from gdiv.keras.rules import (  # noqa: E402
    conv_rule,
    decline_reason,
    dense_rule,
    embedding_rule,
    find_norm_rule,
    layer_norm_rule,
    register_norm_rule,
    registered_norm_rules,
    sq_norm_of_outer_sums,
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(20180409)  # the layers built with default initializers


RTOL = {"float64": 1e-10, "float32": 2e-4, "mixed_float16": 1e-2}


def init(seed: int, scale: float = 0.5):
    return keras.initializers.RandomNormal(stddev=scale, seed=seed)


def per_example_loss(z, c):
    """ℓ for each example of z (B, ...): Σ c·tanh(z) + ½(Σ z)²·0.1, (B,)."""
    z = tf.reshape(tf.cast(z, tf.float64), [tf.shape(z)[0], -1])
    return tf.reduce_sum(c * tf.tanh(z), axis=1) + 0.05 * tf.square(tf.reduce_sum(z, axis=1))


def loss_weights(z, seed=7):
    n = int(np.prod(z.shape[1:]))
    return tf.constant(np.random.default_rng(seed).normal(size=n), tf.float64)


def batch_grad(layer, x, call=None):
    """(z, ∂L/∂z, c) with L = mean_i ℓ_i(z_i) over the whole batch."""
    call = call or layer
    z = call(x)
    c = loss_weights(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = tf.reduce_mean(per_example_loss(z, c))
    return z, tape.gradient(loss, z), c


def dense_grad(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def loop_norms(layer, x, c, variables, call=None):
    """The oracle: [ (B,) squared norms of ∇_v (ℓ_i / B) ] per variable v, each
    example run alone through the layer in its own tape."""
    call = call or layer
    b = int(x.shape[0])
    out = np.zeros((len(variables), b))
    for i in range(b):
        with tf.GradientTape() as tape:
            li = per_example_loss(call(x[i : i + 1]), c)[0] / b
        for k, g in enumerate(tape.gradient(li, variables)):
            out[k, i] = 0.0 if g is None else float(tf.reduce_sum(tf.square(tf.cast(dense_grad(g), tf.float64))))
    return out


def assert_close(got, want, dtype):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.max(np.abs(want))), 1e-300)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def check_rule(layer, x, dtype, rule=None):
    """The layer's rule against the loop, on every trainable variable (by the
    attribute names the rule returns). Returns the rule's result."""
    rule = rule or find_norm_rule(layer)
    assert rule is not None
    z, dz, c = batch_grad(layer, x)
    got = rule(layer, x, dz)
    names = sorted(got)
    variables = [getattr(layer, n) for n in names]
    assert {id(v) for v in variables} == {id(v) for v in layer.trainable_variables}, names
    want = loop_norms(layer, x, c, variables)
    for k, n in enumerate(names):
        assert got[n].dtype == tf.float64 and got[n].shape == (x.shape[0],), n
        assert_close(got[n], want[k], dtype)
    return got, dz


def randn(shape, dtype, seed=1):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), dtype)


# ------------------------------------------------------------------ Dense ---

DENSE_CASES = {
    "2d": ((5, 4), dict(units=3)),
    "2d-nobias": ((5, 4), dict(units=3, use_bias=False)),
    "seq-materialize": ((5, 6, 4), dict(units=3)),  # T(K+F) = 42 > KF = 12
    "seq-gram": ((4, 3, 8), dict(units=8)),  # 48 ≤ 64
    "seq-nobias": ((4, 6, 4), dict(units=3, use_bias=False)),
    "4d": ((4, 3, 2, 4), dict(units=3)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(DENSE_CASES), ids=list(DENSE_CASES))
def test_dense(case, dtype):
    shape, kw = DENSE_CASES[case]
    layer = keras.layers.Dense(**kw, dtype=dtype, kernel_initializer=init(1), bias_initializer=init(2))
    got, _ = check_rule(layer, randn(shape, dtype), dtype)
    assert set(got) == ({"kernel", "bias"} if kw.get("use_bias", True) else {"kernel"})


def test_gram_and_materialize_agree():
    a, g = randn((3, 5, 4), "float64", 1), randn((3, 5, 2), "float64", 2)
    want = [np.sum((a[i].numpy().T @ g[i].numpy()) ** 2) for i in range(3)]
    for method in ("gram", "materialize", None):
        assert_close(sq_norm_of_outer_sums(a, g, method), want, "float64")
    with pytest.raises(ValueError, match="method"):
        sq_norm_of_outer_sums(a, g, "svd")


def test_dense_activation_is_the_captures():
    """Dense(activation=tanh): the rule gets ∂L/∂z before tanh (the capture
    runs call with activation None and applies it itself)."""
    layer = keras.layers.Dense(3, activation="tanh", dtype="float64", kernel_initializer=init(1), bias_initializer=init(2))
    x = randn((5, 4), "float64")
    layer(x)

    def linear(t):
        act, layer.activation = layer.activation, None
        try:
            return layer(t)
        finally:
            layer.activation = act

    z = linear(x)
    c = loss_weights(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = tf.reduce_mean(per_example_loss(tf.tanh(z), c))
    got = dense_rule(layer, x, tape.gradient(loss, z))
    want = loop_norms(layer, x, c, [layer.kernel, layer.bias])
    assert_close(got["kernel"], want[0], "float64")
    assert_close(got["bias"], want[1], "float64")


def test_dense_mixed_float16():
    """mixed_float16: z and dz are float16, the rule computes in float32."""
    layer = keras.layers.Dense(3, dtype="mixed_float16", kernel_initializer=init(1), bias_initializer=init(2))
    got, dz = check_rule(layer, randn((5, 6, 4), "float32"), "mixed_float16")
    assert dz.dtype == tf.float16


# ------------------------------------------------------------------- Conv ---

CONV1D_CASES = {
    "valid": ((5, 9, 3), dict(kernel_size=3)),
    "valid-stride2": ((5, 10, 3), dict(kernel_size=3, strides=2)),
    "same-stride2-odd": ((5, 9, 3), dict(kernel_size=3, strides=2, padding="same")),
    "same-stride2-even": ((5, 10, 3), dict(kernel_size=4, strides=2, padding="same")),
    "same-dilation2": ((5, 9, 3), dict(kernel_size=4, dilation_rate=2, padding="same")),
    "causal": ((5, 8, 3), dict(kernel_size=3, padding="causal")),
    "causal-dilation2": ((5, 9, 3), dict(kernel_size=3, dilation_rate=2, padding="causal")),
    "causal-stride2": ((5, 9, 3), dict(kernel_size=2, strides=2, padding="causal", use_bias=False)),
}

CONV2D_CASES = {
    "valid-3x2": ((4, 7, 6, 2), dict(kernel_size=(3, 2))),
    "same-3x3-stride21": ((4, 7, 6, 2), dict(kernel_size=3, strides=(2, 1), padding="same")),
    "same-2x3-stride2-odd": ((4, 7, 7, 2), dict(kernel_size=(2, 3), strides=2, padding="same")),
    "same-4x2-stride2-even": ((4, 8, 6, 2), dict(kernel_size=(4, 2), strides=2, padding="same")),
    "same-dilation21": ((4, 7, 6, 2), dict(kernel_size=3, dilation_rate=(2, 1), padding="same")),
    "valid-dilation2": ((4, 8, 7, 2), dict(kernel_size=(2, 3), dilation_rate=2)),
    "1x1-nobias": ((4, 5, 4, 3), dict(kernel_size=1, use_bias=False)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CONV1D_CASES), ids=list(CONV1D_CASES))
def test_conv1d(case, dtype):
    shape, kw = CONV1D_CASES[case]
    layer = keras.layers.Conv1D(2, **kw, dtype=dtype, kernel_initializer=init(3), bias_initializer=init(4))
    assert find_norm_rule(layer) is conv_rule
    check_rule(layer, randn(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CONV2D_CASES), ids=list(CONV2D_CASES))
def test_conv2d(case, dtype):
    shape, kw = CONV2D_CASES[case]
    layer = keras.layers.Conv2D(3, **kw, dtype=dtype, kernel_initializer=init(5), bias_initializer=init(6))
    assert find_norm_rule(layer) is conv_rule
    check_rule(layer, randn(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "cls, shape, kw",
    [
        (keras.layers.Conv2D, (4, 6, 6, 4), dict(kernel_size=3, groups=2)),
        (keras.layers.Conv2D, (4, 7, 6, 6), dict(kernel_size=(3, 2), groups=3, strides=(2, 1), padding="same")),  # extract_patches
        (keras.layers.Conv1D, (4, 9, 4), dict(kernel_size=3, groups=2, strides=2, padding="same")),
    ],
    ids=["conv2d-g2", "conv2d-g3-strides21", "conv1d-g2"],
)
def test_grouped_convolutions(cls, shape, kw, dtype):
    layer = cls(6, **kw, dtype=dtype, kernel_initializer=init(5), bias_initializer=init(6))
    assert find_norm_rule(layer) is conv_rule
    check_rule(layer, randn(shape, dtype), dtype)


# -------------------------------------------------------------- Embedding ---


def repeated_ids(shape, dim, seed=3):
    ids = np.random.default_rng(seed).integers(0, dim, size=shape)
    if len(shape) > 1:
        ids[0] = 2  # one id all along example 0
        ids[1].flat[:3] = 5  # a repeat in example 1
    return ids


EMBEDDING_CASES = {
    "ids-B": ((5,), "int32"),
    "ids-BT": ((5, 6), "int32"),
    "ids-BT-int64": ((5, 6), "int64"),
    "ids-BTS": ((4, 3, 2), "int64"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(EMBEDDING_CASES), ids=list(EMBEDDING_CASES))
def test_embedding(case, dtype):
    shape, id_dtype = EMBEDDING_CASES[case]
    layer = keras.layers.Embedding(7, 3, dtype=dtype, embeddings_initializer=init(7), mask_zero=case == "ids-BT")
    ids = tf.constant(repeated_ids(shape, 7), id_dtype)
    assert find_norm_rule(layer) is embedding_rule
    check_rule(layer, ids, dtype)


def test_embedding_repeats_add_up():
    """All positions of an example on one id: one row, the sum of the dz's."""
    layer = keras.layers.Embedding(4, 2, dtype="float64")
    ids = tf.constant([[1, 1, 1], [0, 2, 3]])
    dz = tf.constant(np.arange(12.0).reshape(2, 3, 2))
    layer.build()
    got = embedding_rule(layer, ids, dz)["embeddings"].numpy()
    np.testing.assert_allclose(got, [(0 + 2 + 4) ** 2 + (1 + 3 + 5) ** 2, float(np.sum(np.arange(6.0, 12.0) ** 2))])


# ----------------------------------------------------- LayerNormalization ---

LN_CASES = {
    "axis-1": ((5, 4, 3), dict(axis=-1)),
    "axis-1-2d": ((5, 4), dict(axis=-1)),
    "axes-2-1": ((5, 4, 3), dict(axis=[-2, -1])),
    "axis-1-mid": ((5, 4, 3), dict(axis=1)),  # not trailing: summed over the last axis
    "no-center": ((5, 4, 3), dict(center=False)),
    "no-scale": ((5, 4, 3), dict(scale=False)),
    "rms": ((5, 4, 3), dict(rms_scaling=True)),
}


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(LN_CASES), ids=list(LN_CASES))
def test_layer_norm(case, dtype):
    shape, kw = LN_CASES[case]
    layer = keras.layers.LayerNormalization(**kw, dtype=dtype, gamma_initializer=init(8, 1.0), beta_initializer=init(9))
    assert find_norm_rule(layer) is layer_norm_rule
    got, _ = check_rule(layer, randn(shape, dtype) * 2.0 + 0.5, dtype)
    want = set()
    if kw.get("scale", True) or kw.get("rms_scaling", False):
        want.add("gamma")
    if kw.get("center", True) and not kw.get("rms_scaling", False):
        want.add("beta")
    assert set(got) == want


def test_layer_norm_over_the_batch_axis_is_refused():
    layer = keras.layers.LayerNormalization(axis=[0, -1], dtype="float64")
    x = randn((4, 3), "float64")
    layer.build(x.shape)  # (calling it fails in Keras 3.15 itself: its gamma's shape follows the sorted axes [-1, 0])
    assert find_norm_rule(layer) is None and "batch axis" in decline_reason(layer)
    with pytest.raises(UnsupportedLayerError, match="batch axis"):
        layer_norm_rule(layer, x, x)


# ------------------------------------------------------ BatchNormalization ---


def test_batch_norm_is_refused_with_advice():
    layer = keras.layers.BatchNormalization(name="bn7", dtype="float64")
    x = randn((4, 3), "float64")
    layer(x, training=True)
    rule = find_norm_rule(layer)
    assert rule is not None
    with pytest.raises(UnsupportedLayerError) as err:
        rule(layer, x, x)
    msg = str(err.value)
    for part in ("'bn7'", "BatchNormalization", "LayerNormalization", "GroupNormalization", "trainable = False", "two_scale"):
        assert part in msg, part


# ---------------------------------------------------------------- declines ---


def built(layer, shape, dtype="float32"):
    layer.build(shape)
    return layer


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras 3.15's quantize()
def test_declined_configurations_go_to_the_fallback():
    lora = built(keras.layers.Dense(3, lora_rank=2), (None, 4))
    assert find_norm_rule(lora) is None and "LoRA" in decline_reason(lora)
    with pytest.raises(UnsupportedLayerError, match="LoRA"):
        dense_rule(lora, tf.zeros((2, 4)), tf.zeros((2, 3)))
    quantized = built(keras.layers.Dense(3), (None, 4))
    quantized.quantize("int8")
    assert find_norm_rule(quantized) is None and "int8" in decline_reason(quantized)
    first = built(keras.layers.Conv1D(2, 3, data_format="channels_first"), (None, 3, 8))
    assert find_norm_rule(first) is None and "channels_first" in decline_reason(first)
    emb = built(keras.layers.Embedding(5, 2, lora_rank=1), None)
    assert find_norm_rule(emb) is None and "LoRA" in decline_reason(emb)
    plain = built(keras.layers.Dense(3), (None, 4))
    assert find_norm_rule(plain) is dense_rule and decline_reason(plain) is None
    assert find_norm_rule(keras.layers.ReLU()) is None and decline_reason(keras.layers.ReLU()) is None


# ---------------------------------------------------------------- registry ---


class MyDense(keras.layers.Dense):
    pass


class LoggingDense(keras.layers.Dense):
    def call(self, inputs, training=None):
        return super().call(inputs * 2.0, training=training)


def test_subclass_gets_base_rule_unless_call_overridden():
    layer = MyDense(3, dtype="float64", kernel_initializer=init(1), bias_initializer=init(2))
    assert find_norm_rule(layer) is dense_rule
    check_rule(layer, randn((4, 5), "float64"), "float64")
    other = LoggingDense(3)
    assert find_norm_rule(other) is None and "overrides call" in decline_reason(other)


def test_register_norm_rule_overrides(monkeypatch):
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))
    first = lambda layer, x, dz: {"kernel": tf.zeros([tf.shape(x)[0]], tf.float64)}
    second = lambda layer, x, dz: {"kernel": tf.ones([tf.shape(x)[0]], tf.float64)}
    register_norm_rule(MyDense, first)
    assert find_norm_rule(MyDense(2)) is first
    assert find_norm_rule(keras.layers.Dense(2)) is dense_rule
    register_norm_rule(MyDense, second)
    assert find_norm_rule(MyDense(2)) is second
    register_norm_rule(keras.layers.Dense, second)  # a user's rule for Dense: no built-in declines
    lora = built(keras.layers.Dense(3, lora_rank=2), (None, 4))
    assert find_norm_rule(lora) is second
    table = registered_norm_rules()
    table.clear()
    assert find_norm_rule(MyDense(2)) is second
    with pytest.raises(TypeError):
        register_norm_rule(int, first)
    with pytest.raises(TypeError):
        register_norm_rule(MyDense, "not callable")


def test_builtin_table():
    table = registered_norm_rules()
    for cls in (
        keras.layers.Dense,
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Embedding,
        keras.layers.LayerNormalization,
        keras.layers.BatchNormalization,
    ):
        assert cls in table


# -------------------------------------------------------------- graph mode ---


def graph_rule(layer, rule, x_spec, dz_spec):
    return tf.function(lambda x, dz: rule(layer, x, dz), input_signature=[x_spec, dz_spec])


GRAPH_CASES = {
    "dense-2d": (lambda dt: keras.layers.Dense(3, dtype=dt), (5, 4), (None, 4)),
    "dense-seq-T-unknown-materialize": (lambda dt: keras.layers.Dense(3, dtype=dt), (5, 6, 4), (None, None, 4)),
    "dense-seq-T-unknown-gram": (lambda dt: keras.layers.Dense(8, dtype=dt), (4, 3, 8), (None, None, 8)),
    "dense-seq-T-static": (lambda dt: keras.layers.Dense(3, dtype=dt), (5, 6, 4), (None, 6, 4)),
    "conv1d-L-unknown": (lambda dt: keras.layers.Conv1D(2, 3, strides=2, padding="same", dtype=dt), (5, 9, 3), (None, None, 3)),
    "conv1d-causal": (lambda dt: keras.layers.Conv1D(2, 3, dilation_rate=2, padding="causal", dtype=dt), (5, 9, 3), (None, 9, 3)),
    "conv2d-HW-unknown": (lambda dt: keras.layers.Conv2D(3, (3, 2), strides=(2, 1), padding="same", dtype=dt), (4, 7, 6, 2), (None, None, None, 2)),
    "embedding-T-unknown": (lambda dt: keras.layers.Embedding(7, 3, dtype=dt), (5, 6), (None, None)),
    "layer-norm": (lambda dt: keras.layers.LayerNormalization(axis=[-2, -1], dtype=dt), (5, 4, 3), (None, None, 3)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(GRAPH_CASES), ids=list(GRAPH_CASES))
def test_rules_in_tf_function_match_eager(case, dtype):
    make, shape, spec = GRAPH_CASES[case]
    layer = make(dtype)
    if isinstance(layer, keras.layers.Embedding):
        x = tf.constant(repeated_ids(shape, 7), tf.int32)
        x_spec = tf.TensorSpec(spec, tf.int32)
    else:
        x = randn(shape, dtype)
        x_spec = tf.TensorSpec(spec, dtype)
    got, dz = check_rule(layer, x, dtype)
    dz_spec = tf.TensorSpec([None] * len(dz.shape), dtype)
    graph = graph_rule(layer, find_norm_rule(layer), x_spec, dz_spec)(x, dz)
    assert set(graph) == set(got)
    for n in got:
        assert_close(graph[n], got[n], "float64" if dtype == "float64" else "float32")


# ---------------------------------------------------------------- fallback ---


class TanhScale(keras.layers.Layer):
    """tf.tanh(x @ w) * s: two variables, no rule."""

    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer=init(11), name="w")
        self.s = self.add_weight(shape=(self.units,), initializer=init(12, 1.0), name="s")

    def call(self, x):
        return tf.tanh(tf.matmul(x, self.w)) * self.s


class Block(keras.layers.Layer):
    """LayerNorm(Dense(x)) + TanhScale(x) on sequences, with a frozen Dense: sublayers' variables."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.dense = keras.layers.Dense(3, kernel_initializer=init(13), bias_initializer=init(14), dtype=self.dtype_policy)
        self.norm = keras.layers.LayerNormalization(gamma_initializer=init(15, 1.0), beta_initializer=init(16), dtype=self.dtype_policy)
        self.side = TanhScale(3, dtype=self.dtype_policy)
        self.frozen = keras.layers.Dense(4, kernel_initializer=init(17), dtype=self.dtype_policy)
        self.frozen.trainable = False

    def call(self, x):
        return self.norm(self.dense(self.frozen(x))) + self.side(x)


class Lookup(keras.layers.Layer):
    """Embedding (a gather: IndexedSlices gradients) then a Dense on the mean."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.emb = keras.layers.Embedding(6, 3, embeddings_initializer=init(18), dtype=self.dtype_policy)
        self.out = keras.layers.Dense(2, kernel_initializer=init(19), dtype=self.dtype_policy)

    def call(self, ids):
        return self.out(tf.reduce_mean(self.emb(ids), axis=1))


class Gated(keras.layers.Layer):
    """call(x, mask=..., scale=...): a tensor kwarg sliced, a float passed as is."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.supports_masking = True

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2), initializer=init(20), name="w")

    def call(self, x, mask=None, scale=1.0):
        y = tf.sin(tf.matmul(x, self.w)) * scale
        return y * tf.cast(mask, y.dtype)[:, None] if mask is not None else y


class TwoOutputs(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2), name="w")

    def call(self, x):
        y = tf.matmul(x, self.w)
        return y, y


def check_fallback(layer, x, dtype, call_kwargs=None, graph_spec=None):
    call_kwargs = call_kwargs or {}
    call = lambda t, **kw: layer(t, **{**call_kwargs, **kw})
    z, dz, c = batch_grad(layer, x, call)
    variables = layer.trainable_variables
    got = fallback_sq_norms(layer, (x,), call_kwargs, dz, variables)
    assert len(got) == len(variables)
    b = int(x.shape[0])

    def one(t, i):
        kw = {k: (v[i : i + 1] if tf.is_tensor(v) else v) for k, v in call_kwargs.items()}
        return layer(t, **kw)

    want = np.zeros((len(variables), b))
    for i in range(b):
        with tf.GradientTape() as tape:
            li = per_example_loss(one(x[i : i + 1], i), c)[0] / b
        for k, g in enumerate(tape.gradient(li, variables)):
            want[k, i] = float(tf.reduce_sum(tf.square(tf.cast(dense_grad(g), tf.float64))))
    for k in range(len(variables)):
        assert got[k].dtype == tf.float64 and got[k].shape == (b,)
        assert_close(got[k], want[k], dtype)
    if graph_spec is not None:
        fn = tf.function(
            lambda x_, dz_: fallback_sq_norms(layer, (x_,), call_kwargs, dz_, variables),
            input_signature=[graph_spec, tf.TensorSpec([None] * len(dz.shape), dz.dtype)],
        )
        for k, g in enumerate(fn(x, dz)):
            assert_close(g, got[k], dtype)
    return got


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fallback_custom_layer(dtype):
    layer = TanhScale(3, dtype=dtype)
    x = randn((5, 4), dtype)
    assert find_norm_rule(layer) is None
    check_fallback(layer, x, dtype, graph_spec=tf.TensorSpec([None, 4], dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fallback_layer_with_sublayers(dtype):
    layer = Block(dtype=dtype)
    x = randn((4, 3, 5), dtype)
    layer(x)
    assert len(layer.trainable_variables) == 6 and len(layer.variables) == 8
    check_fallback(layer, x, dtype, graph_spec=tf.TensorSpec([None, None, 5], dtype))


def test_fallback_mixed_float16():
    """Variables float32, compute float16: the fallback reads the variables
    under the autocast scope Layer.__call__ would enter. x as call receives
    it (cast to float16 by __call__)."""
    layer = TanhScale(3, dtype="mixed_float16")
    x = tf.cast(randn((5, 4), "float32"), tf.float16)
    layer(x)
    assert layer.w.dtype == "float32"
    check_fallback(layer, x, "mixed_float16")


def test_fallback_gather_and_repeated_ids():
    layer = Lookup(dtype="float64")
    ids = tf.constant(repeated_ids((5, 4), 6))
    check_fallback(layer, ids, "float64", graph_spec=tf.TensorSpec([None, None], tf.int64))


def test_fallback_kwargs_sliced_or_passed():
    layer = Gated(dtype="float64")
    x = randn((5, 3), "float64")
    mask = tf.constant([1, 0, 1, 1, 0])
    check_fallback(layer, x, "float64", call_kwargs={"mask": mask, "scale": 1.5})


def test_fallback_lora_dense():
    """A declined rule (LoRA): the fallback on the layer's trainable variables
    (lora_kernel_a / _b and the bias; the kernel is frozen). Keras 3.15 makes
    the LoRA kernels float32 in a float64 layer: float32 tolerance."""
    layer = keras.layers.Dense(3, dtype="float64", kernel_initializer=init(1), bias_initializer=init(2))
    layer.build((None, 4))
    layer.enable_lora(2, b_initializer=init(3))
    assert find_norm_rule(layer) is None
    assert len(layer.trainable_variables) == 3
    assert [v.dtype for v in layer.trainable_variables] == ["float64", "float32", "float32"]
    check_fallback(layer, randn((5, 4), "float64"), "float32")


def test_fallback_refuses_tuple_outputs():
    layer = TwoOutputs(dtype="float64")
    x = randn((3, 2), "float64")
    layer(x)
    with pytest.raises(UnsupportedLayerError, match="single dense tensor"):
        fallback_sq_norms(layer, (x,), {}, tf.zeros((3, 2), tf.float64), layer.trainable_variables)
    with pytest.raises(UnsupportedLayerError, match="single tensor output"):
        fallback_sq_norms(layer, (x,), {}, (tf.zeros((3, 2)),) * 2, layer.trainable_variables)
