"""The per-example fallback for layers without a rule (gdiv.keras.rules):
per-example squared gradient norms of a layer's variables by running the
layer on each example alone under ``tf.vectorized_map`` with a
``tf.GradientTape`` inside.

Exact for layers that treat the examples of a batch independently and
deterministically (no batch statistics, no dropout or other randomness: a
random layer is run again, with new draws).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from .errors import UnsupportedLayerError

__all__ = ["fallback_sq_norms"]

try:  # Keras 3 enters this scope in Layer.__call__ for mixed precision; calling `call` directly skips it
    from keras.src.backend import AutocastScope as _AutocastScope
except ImportError:  # pragma: no cover - a Keras without it: no autocasting of variables
    _AutocastScope = None


def _name(layer: Any) -> str:
    return f"layer '{getattr(layer, 'name', '?')}' ({type(layer).__name__})"


def _autocast(layer: Any):
    """The autocast scope Layer.__call__ would enter (mixed precision: the
    variables read in ``call`` are cast to the compute dtype), or none."""
    if _AutocastScope is None or not isinstance(layer, keras.layers.Layer):
        return contextlib.nullcontext()
    compute, variable = layer.compute_dtype, layer.variable_dtype
    if layer.autocast and compute != variable and compute is not None and tf.as_dtype(compute).is_floating:
        return _AutocastScope(compute)
    return contextlib.nullcontext()


def _is_batched(v: Any, batch: Optional[int], layer: Any) -> bool:
    """Whether argument leaf v is sliced per example: a tensor (not a
    variable) of rank ≥ 1 whose leading dimension is the batch's (statically
    equal, or unknown), or unknown when the batch size is (a tensor with a
    static leading dimension while the batch's is unknown is passed whole)."""
    if isinstance(v, (tf.SparseTensor, tf.RaggedTensor)):
        raise UnsupportedLayerError(f"gdiv.keras: {_name(layer)}: the fallback takes dense tensor arguments, got a {type(v).__name__}")
    if isinstance(v, (tf.Variable, keras.Variable)) or not tf.is_tensor(v):
        return False
    if v.shape.rank is None:
        return True  # rank unknown: batch data of a graph
    if v.shape.rank == 0:
        return False
    lead = v.shape[0]
    return lead is None or lead == batch


def _sq64(g: Any, v: Any) -> tf.Tensor:
    """Squared Frobenius norm of one example's gradient, float64 (a scalar)."""
    if g is None:
        return tf.constant(0.0, tf.float64)
    if isinstance(g, tf.IndexedSlices):  # gathers (embeddings): rows may repeat, so sum them first
        g = tf.math.unsorted_segment_sum(g.values, g.indices, tf.shape(v)[0] if v.shape[0] is None else v.shape[0])
    return tf.reduce_sum(tf.square(tf.cast(g, tf.float64)))


def fallback_sq_norms(
    layer: Any,
    args: tuple,
    kwargs: dict,
    dout: tf.Tensor,
    variables: Sequence[Any],
    *,
    call_fn: Optional[Callable[..., Any]] = None,
) -> List[tf.Tensor]:
    """Per-example squared gradient norms of ``variables`` for ``layer`` as one
    unit: for each example i, ‖∂/∂v ⟨layer(args_i, kwargs_i), dout_i⟩‖² per
    variable v, with the layer run on example i alone.

    Args:
        layer: the layer (a ``keras.layers.Layer``; its sublayers run inside it).
        args, kwargs: what the layer's ``call`` received in the forward
            (after ``Layer.__call__``'s conversions). Every tensor whose leading
            dimension is the batch's (statically equal to dout's, or unknown)
            is sliced to its example's [i:i+1], nested lists / tuples / dicts
            included; other values (non-tensors, variables, tensors with another
            static leading dimension) are passed as they are.
        dout: ∂L/∂(the layer's output as ``call`` returned it, activation
            included), (B, ...), the loss reduction included.
        variables: the trainable variables to compute, e.g. the layer's
            ``trainable_variables`` (its sublayers' included). The tape watches
            the trainable variables the call reads: one the output does not
            depend on, or a non-trainable one, gets zeros.
        call_fn: how to run the layer, ``call_fn(*args, **kwargs)``. Default:
            the class's ``call`` (``type(layer).call(layer, ...)``), under the
            autocast scope ``Layer.__call__`` would enter (mixed precision):
            an instance-level wrapper of ``layer.call`` (the capture's tap) is
            not entered, nor are ``__call__``'s side effects (activity
            regularizer losses, masks, the call context). Sublayers are called
            through their ``__call__`` as usual: the capture must disable its
            taps while the fallback runs. Sublayers see ``training`` only as the
            layer's ``call`` passes it on.

    Returns:
        A list aligned with ``variables`` of (B,) float64 tensors (the
        gradients are squared and summed in float64).

    Raises:
        UnsupportedLayerError: the layer returns anything but a single dense
            tensor, or an argument is sparse or ragged.

    Runs eagerly or in ``tf.function`` with an unknown batch size
    (``tf.vectorized_map`` with ``fallback_to_while_loop=True``: ops without
    a vectorized form run as a while loop, one example at a time). Exact
    only for layers that treat the examples independently and
    deterministically: batch statistics (train-mode BatchNormalization)
    and random layers (Dropout) give wrong numbers without an error.

    Example:
        >>> norms = fallback_sq_norms(layer, (x,), {}, dout, layer.trainable_variables)
        >>> [n.shape for n in norms]               # [(B,), (B,), ...]
    """
    variables = list(variables)
    if not variables:
        return []
    if isinstance(dout, (tf.SparseTensor, tf.RaggedTensor, tf.IndexedSlices)) or not tf.is_tensor(dout):
        if isinstance(dout, (list, tuple, dict)):
            raise UnsupportedLayerError(
                f"gdiv.keras: {_name(layer)}: the fallback takes layers with a single tensor output, got a gradient for a {type(dout).__name__}"
            )
        dout = tf.convert_to_tensor(dout)
    if dout.shape.rank == 0:
        raise UnsupportedLayerError(f"gdiv.keras: {_name(layer)}: the output gradient is a scalar; per-example gradients need a batch dimension")
    if call_fn is None:
        call_fn = functools.partial(type(layer).call, layer)
    structure = (tuple(args), dict(kwargs))
    flat = [tf.convert_to_tensor(v) if isinstance(v, np.ndarray) else v for v in tf.nest.flatten(structure)]
    batch = dout.shape[0]
    sliced = [i for i, v in enumerate(flat) if _is_batched(v, batch, layer)]
    elems = tuple(flat[i] for i in sliced) + (dout,)

    problems: List[str] = []  # raised after tracing: an exception inside vectorized_map's autograph comes out as a StagingError

    def one(elem):
        values = list(flat)
        for j, i in enumerate(sliced):
            values[i] = tf.expand_dims(elem[j], 0)
        a, kw = tf.nest.pack_sequence_as(structure, values)
        d = tf.expand_dims(elem[-1], 0)
        with tf.GradientTape() as tape:  # watches the trainable variables the call reads
            with _autocast(layer):
                out = call_fn(*a, **kw)
            if not tf.is_tensor(out) or isinstance(out, (tf.SparseTensor, tf.RaggedTensor)):
                problems.append(type(out).__name__)
                return tuple(tf.zeros([], tf.float64) for _ in variables)
            inner = tf.reduce_sum(tf.cast(out, d.dtype) * d)
        grads = tape.gradient(inner, variables)
        return tuple(_sq64(g, v) for g, v in zip(grads, variables))

    norms = tf.vectorized_map(one, elems, fallback_to_while_loop=True)
    if problems:
        raise UnsupportedLayerError(
            f"gdiv.keras: {_name(layer)}: the fallback takes layers whose call returns a single dense tensor, got {problems[0]}; "
            "register a rule for the layer (gdiv.keras.rules.register_norm_rule) or treat its sublayers as the units"
        )
    return list(norms)
