"""Per-example squared gradient norms of a Keras model inside one
``GradientTape`` step, without per-example gradients.

:class:`Taps` splits the model's trainable variables into *units*: a layer
with a rule (``gdiv.keras.rules``: Dense, Conv1D/2D, Embedding,
LayerNormalization, …) covers its own variables; a layer without one that
owns variables is one unit for the ``tf.vectorized_map`` fallback
(``gdiv.keras.fallback``), its sublayers included. Each unit's ``call`` is
wrapped (an instance attribute; :meth:`Taps.remove` restores the class's)
so that, while :meth:`Taps.recording` is active, it records its input and
its output — for a rule layer with an ``activation``, the output *before*
the activation, which the wrapper then applies itself. The caller asks the
tape for ∂L/∂(recorded outputs) together with the variables' gradients (one
``tape.gradient`` call) and :meth:`Taps.per_example` turns the pairs into
the (B,) per-example squared norms, in float64, in the graph.

Refused, with the layer named: a unit called twice in one step (a shared
layer: the per-example gradient is then a sum over calls, not covered),
train-mode BatchNormalization (couples the examples), a trainable variable
no unit owns (used outside any layer's ``call``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from .errors import UnsupportedLayerError
from .fallback import fallback_sq_norms
from .rules import find_norm_rule

__all__ = ["Taps", "Unit"]

_F64 = tf.float64
# Layers measured as one unit, sublayers included, whatever rules their sublayers have.
_WHOLE = (keras.layers.RNN, keras.layers.TimeDistributed)


def _linear(act: Any) -> bool:
    return act is None or act is keras.activations.linear


def _own_trainable(layer: Any) -> List[Any]:
    return [v for v in getattr(layer, "_trainable_variables", []) if v.trainable] if layer.trainable else []


class Unit:
    """One tapped layer and the trainable variables its norms cover."""

    __slots__ = ("layer", "rule", "variables", "strip", "batchnorm", "orig_call")

    def __init__(self, layer: Any, rule: Any, variables: List[Any]) -> None:
        self.layer = layer
        self.rule = rule  # None: the fallback
        self.variables = variables
        self.strip = rule is not None and not _linear(getattr(layer, "activation", None))
        self.batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        self.orig_call: Any = None

    def __repr__(self) -> str:
        how = "fallback" if self.rule is None else "rule"
        return f"Unit({self.layer.name!r} {type(self.layer).__name__}, {how}, {len(self.variables)} variables)"


class _Record:
    __slots__ = ("unit", "args", "kwargs", "out")

    def __init__(self, unit: Unit, args: tuple, kwargs: dict, out: Any) -> None:
        self.unit = unit
        self.args = args
        self.kwargs = kwargs
        self.out = out


class Taps:
    """The units of a model and their call wrappers.

    Args:
        model: a built ``keras.Model`` (or layer) on the TensorFlow backend.
        taps: False: no units and no wrappers (two_scale needs none; every
            layer, BatchNormalization included, is then fine).

    Raises:
        UnsupportedLayerError: no trainable variables, or one that no layer owns.
    """

    def __init__(self, model: Any, *, taps: bool = True) -> None:
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(f"gdiv.keras: model must be a keras.Model (or Layer), got {type(model).__name__}")
        if not model.built:
            raise ValueError(
                f"gdiv.keras: the model {model.name!r} is not built yet: build it first (keras.Input in the model, "
                "model.build(input_shape), or call it once on a batch) so that its variables exist"
            )
        self.model = model
        self.trainable = list(model.trainable_variables)
        if not self.trainable:
            raise UnsupportedLayerError(f"gdiv.keras: the model {model.name!r} has no trainable variables")
        want = {id(v) for v in self.trainable}
        self.units: List[Unit] = []
        # Per thread: tf.distribute runs each replica's step in a thread of its own.
        self._tls = threading.local()
        self.attached = False
        if not taps:
            return
        self._parents: Dict[int, Any] = {}  # id(layer) → the layer whose _find reached it
        self._find(model, want)
        self._promote_broadcast(want)
        covered: Dict[int, Unit] = {}
        for u in self.units:
            for v in u.variables:
                if id(v) in covered:
                    raise UnsupportedLayerError(
                        f"gdiv.keras: the variable {v.path!r} belongs to two layers ({covered[id(v)].layer.name!r} and "
                        f"{u.layer.name!r}): a shared (tied) weight's per-example gradient sums over its layers, which the "
                        "per-example rules do not cover"
                    )
                covered[id(v)] = u
        missing = [v.path for v in self.trainable if id(v) not in covered]
        if missing:
            raise UnsupportedLayerError(
                f"gdiv.keras: the trainable variables {missing} are not owned by any layer of the model, so no layer call "
                "sees how they are used; create them in a layer (add_weight in a keras.layers.Layer)"
            )
        self.attach()

    def _find(self, layer: Any, want: set) -> None:
        own = [v for v in _own_trainable(layer) if id(v) in want]
        subs = [sub for sub in getattr(layer, "_layers", []) if any(id(v) in want for v in sub.trainable_variables)]
        if subs and isinstance(layer, _WHOLE):
            # Their sublayers run on other batch shapes (an RNN's cell once per time step, TimeDistributed's layer
            # on B·T rows): the layer as a whole is one unit for the fallback, one example at a time.
            self.units.append(Unit(layer, None, [v for v in layer.trainable_variables if id(v) in want]))
            return
        if own:
            rule = find_norm_rule(layer) if not subs else None
            variables = own if rule is not None else [v for v in layer.trainable_variables if id(v) in want]
            self.units.append(Unit(layer, rule, variables))
            return
        for sub in subs:
            self._parents[id(sub)] = layer
            self._find(sub, want)

    def _promote_broadcast(self, want: set) -> None:
        """A unit whose output does not run along the batch (a layer fed
        position ids ``arange(T)`` and broadcast over the batch afterwards)
        has no per-example gradient of its own: its enclosing layer, which
        sees the batch, becomes the unit (the fallback, one example at a
        time). Found by tracing the model once on a batch of 2 (nothing
        runs); models without ``model.inputs`` are checked at each step."""
        inputs = getattr(self.model, "inputs", None)
        if not inputs:
            return
        try:
            specs = [tf.TensorSpec((2,) + tuple(t.shape[1:]), tf.as_dtype(t.dtype)) for t in tf.nest.flatten(inputs)]
        except (TypeError, ValueError, AttributeError):
            return
        if any(None in sp.shape[1:] for sp in specs):
            return
        bad: List[Unit] = []
        seen: Dict[int, Any] = {}  # id(unit) → the leading dim of its output in the probe

        def probe(*xs: Any) -> Any:
            with self.recording():
                out = self.model(xs[0] if len(xs) == 1 else list(xs), training=True)
                for r in self.records:
                    seen[id(r.unit)] = r.out.shape[0] if isinstance(r.out, tf.Tensor) and r.out.shape.rank else None
            return out

        for _ in range(8):  # each round promotes one level up
            self.attach()
            seen.clear()

            try:
                tf.function(probe).get_concrete_function(*specs)
            except Exception:  # noqa: BLE001 - the probe is best effort; the step checks again
                return
            finally:
                self.remove()
                self.records = []  # the probe's graph tensors must not outlive it
            bad = [u for u in self.units if seen.get(id(u)) not in (2, None) and id(u) in seen]
            if not bad:
                return
            for u in bad:
                parent = self._parents.get(id(u.layer))
                if parent is None:
                    return
                inside = {id(x) for x in parent._flatten_layers(include_self=True)}
                self.units = [w for w in self.units if id(w.layer) not in inside]
                self.units.append(Unit(parent, None, [v for v in parent.trainable_variables if id(v) in want]))

    # -- the wrappers ----------------------------------------------------------

    def attach(self) -> None:
        if self.attached:
            return
        for u in self.units:
            u.orig_call = u.layer.__dict__.get("call")
            u.layer.call = self._wrapper(u)
        self.attached = True

    def remove(self) -> None:
        if not self.attached:
            return
        for u in self.units:
            if u.orig_call is None:
                del u.layer.call
            else:
                u.layer.call = u.orig_call
        self.attached = False

    def _wrapper(self, u: Unit) -> Any:
        call = u.layer.call  # the bound method as it was

        def call_and_record(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return call(*args, **kwargs)
            if not u.strip:
                out = call(*args, **kwargs)
                self.records.append(_Record(u, args, kwargs, out))
                return out
            layer = u.layer
            act = layer.activation
            layer.activation = None
            try:
                z = call(*args, **kwargs)
            finally:
                layer.activation = act
            self.records.append(_Record(u, args, kwargs, z))
            return act(z)

        return call_and_record

    @contextlib.contextmanager
    def recording(self) -> Iterator["Taps"]:
        """Record the units' calls inside the block (the forward pass)."""
        if not self.attached and self.units:
            raise RuntimeError("gdiv.keras: the monitor's taps were removed (monitor.remove()); attach() them again")
        self.records = []
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    @property
    def active(self) -> bool:
        """Whether this thread's calls are being recorded."""
        return getattr(self._tls, "active", False)

    @active.setter
    def active(self, value: bool) -> None:
        self._tls.active = value

    @property
    def records(self) -> List[_Record]:
        """This thread's recorded calls."""
        recs = getattr(self._tls, "records", None)
        if recs is None:
            recs = self._tls.records = []
        return recs

    @records.setter
    def records(self, value: List[_Record]) -> None:
        self._tls.records = value

    def take(self) -> Tuple[List[_Record], List[Any]]:
        """The recorded calls and their outputs (the tensors whose gradients
        :meth:`per_example` needs), checked: each unit once at most."""
        recs, self.records = self.records, []
        seen: Dict[int, int] = {}
        for r in recs:
            seen[id(r.unit)] = seen.get(id(r.unit), 0) + 1
        for u in self.units:
            k = seen.get(id(u), 0)
            if k > 1:
                raise UnsupportedLayerError(
                    f"gdiv.keras: the layer {u.layer.name!r} ({type(u.layer).__name__}) was called {k} times in one step "
                    "(a shared layer): its per-example gradient sums over the calls, which the per-example norms do not cover"
                )
        for r in recs:
            if not isinstance(r.out, tf.Tensor):
                raise UnsupportedLayerError(
                    f"gdiv.keras: the layer {r.unit.layer.name!r} ({type(r.unit.layer).__name__}) returned "
                    f"{type(r.out).__name__}, not one dense tensor: ragged, sparse or nested outputs are not supported; "
                    "give it a norm rule (gdiv.keras.register_norm_rule) or feed dense inputs"
                )
        return recs, [r.out for r in recs]

    def per_example(self, records: Sequence[_Record], douts: Sequence[Any], batch: Any) -> Any:
        """The (B,) float64 per-example squared norms over every unit, from
        the recorded calls and ∂L/∂(their outputs). A unit whose output got
        no gradient (it does not reach the loss) contributes 0."""
        total = tf.zeros(tf.reshape(batch, [1]), _F64)
        for r, dz in zip(records, douts):
            if dz is None:
                continue
            if isinstance(dz, tf.IndexedSlices):
                dz = tf.convert_to_tensor(dz)
            u = r.unit
            static_b, static_out = tf.get_static_value(batch), r.out.shape[0] if r.out.shape.rank else None
            if static_b is not None and static_out is not None and int(static_b) != static_out:
                raise UnsupportedLayerError(
                    f"gdiv.keras: the layer {u.layer.name!r} ({type(u.layer).__name__}) ran on {static_out} rows in a step of "
                    f"{int(static_b)} examples (its input is not batch-first, e.g. position ids broadcast over the batch): "
                    "compute it inside a layer that sees the batch (that layer is then one unit), or freeze it"
                )
            # The examples must run along axis 0 of the layer's output: a layer fed a batch of 1 broadcast over
            # the batch (position embeddings of arange(T)), or B·T rows, would give norms of other "examples".
            checks = [
                tf.debugging.assert_equal(
                    tf.shape(r.out)[0],
                    tf.cast(batch, tf.int32),
                    message=(
                        f"gdiv.keras: the layer {u.layer.name!r} ({type(u.layer).__name__}) ran on a batch other than the "
                        "step's (its input is not batch-first, e.g. position ids broadcast over the batch, or rows of "
                        "B·T): its per-example norms are not defined by its own output; compute it inside a layer that "
                        "sees the batch (that layer is then one unit), or freeze it"
                    ),
                )
            ]
            with tf.control_dependencies(checks):
                for part in self._unit_norms(u, r, dz):
                    total = total + part
        return total

    def _unit_norms(self, u: Unit, r: _Record, dz: Any) -> List[Any]:
        training = r.kwargs.get("training")
        if u.rule is not None and not (u.batchnorm and not _truthy(training)):
            x = r.args[0] if r.args else next(iter(r.kwargs.values()))
            parts = u.rule(u.layer, x, dz)
            want = {id(v) for v in u.variables}
            out, got = [], set()
            for name, sq in parts.items():
                v = _variable(u.layer, name)
                if v is not None and id(v) in want:
                    out.append(sq)
                    got.add(id(v))
            lost = [v.path for v in u.variables if id(v) not in got]
            if lost:
                raise UnsupportedLayerError(
                    f"gdiv.keras: the norm rule of {u.layer.name!r} ({type(u.layer).__name__}) covers {sorted(parts)} but not "
                    f"its trainable variables {lost}"
                )
            return out
        return list(fallback_sq_norms(u.layer, r.args, r.kwargs, dz, u.variables))


def _truthy(training: Any) -> bool:
    if training is None:
        return False
    if isinstance(training, bool):
        return training
    return True  # a tensor: assume training (the monitor measures training steps)


def _variable(layer: Any, name: str) -> Optional[Any]:
    v = getattr(layer, name, None)
    if isinstance(v, keras.Variable):
        return v
    v = getattr(layer, "_" + name, None)
    return v if isinstance(v, keras.Variable) else None
