"""DiversityMonitor for Keras 3 (TensorFlow backend): the batch-size bound of
a Keras training loop, measured every step, and the batch size (and learning
rate) that follow.

Under ``model.fit`` the monitor replaces the model's ``train_step`` (an
instance attribute; :meth:`DiversityMonitor.remove` restores it): the same
step as Keras's — forward, compiled loss, one ``tape.gradient``, the
optimizer — plus the per-example norms from the recorded layer calls
(:class:`gdiv.keras.capture.Taps`), reduced in the graph to four numbers
that leave it through one ``tf.numpy_function`` per step: Go's
:class:`gdiv.Controller` decides there (the same call the PyTorch monitor and
the Go trainer make), and the learning rate it gives is assigned to the
optimizer in the graph before ``apply_gradients``. In a custom loop,
:meth:`DiversityMonitor.gradient` does the same between your tape and your
optimizer.

Weight regularizers (``kernel_regularizer=...``) are part of every example's
loss f_i = ℓ_i + R (mean loss) or ℓ_i + R/B (sum loss): their gradient r
enters Σ‖g_i‖² exactly, from the data part's per-example norms, ⟨G, r⟩ and
‖r‖², with no per-example work.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from .._session import Session, SessionMonitor
from .._stats import stats
from ..errors import NonFiniteError, SumOverflowError
from ..mechanisms import Langevin, Mechanism
from ..policy import BatchSizePolicy
from ._graph import OUT, VEC, full_gradients, halves, measured_gradients
from .capture import Taps

__all__ = ["DiversityMonitor"]

_F64 = tf.float64
_STATE_VERSION = 1
_COMPAT_KEYS = ("loss_reduction", "sampling", "dataset_size")
# What leaves the graph each step (vec) and comes back (out).
_VEC, _OUT = VEC, OUT


def _reduction_of(model: Any) -> str:
    """ "mean" or "sum" from the compiled loss (Keras's sum_over_batch_size
    is the mean over the batch)."""
    loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "gdiv.keras.DiversityMonitor: the model is not compiled (no loss): call model.compile(optimizer=..., loss=...) "
            "before building the monitor, or give loss_reduction='mean'/'sum' for a custom training loop"
        )
    losses = list(loss.values()) if isinstance(loss, dict) else list(loss) if isinstance(loss, (list, tuple)) else [loss]
    found = set()
    for obj in losses:
        red = getattr(obj, "reduction", "sum_over_batch_size") if isinstance(obj, keras.losses.Loss) else "sum_over_batch_size"
        if red == "sum_over_batch_size":
            found.add("mean")
        elif red == "sum":
            found.add("sum")
        else:
            raise ValueError(
                f"gdiv.keras.DiversityMonitor: the compiled loss has reduction={red!r}; the monitor supports "
                "'sum_over_batch_size' (the mean over the batch) and 'sum'"
            )
    if len(found) != 1:
        raise ValueError(f"gdiv.keras.DiversityMonitor: the compiled losses mix reductions {sorted(found)}; use one")
    return found.pop()


class DiversityMonitor(SessionMonitor):
    """Measure the gradient diversity of a Keras model's training and adapt
    the batch size (and learning rate) to it.

    Args:
        model: a built ``keras.Model`` on the TensorFlow backend. For
            ``fit``, compile it first (the monitor reads the loss's
            reduction and the optimizer).
        loss_reduction: "auto" (the compiled loss: Keras's default
            ``sum_over_batch_size`` is "mean"; ``reduction="sum"`` is
            "sum"), "mean" or "sum" (a custom loop's loss).
        policy: a :class:`gdiv.BatchSizePolicy` deciding the next batch, or
            None to measure only (adjusted like Go's trainer: ``min_batch``
            ≥ 2, ``max_batch=None`` capped at ``dataset_size``).
        optimizer: the optimizer whose ``learning_rate`` follows the LR rule
            (None: the compiled one; pass it for a custom loop).
        lr_rule: "linear", "sqrt", "adascale" or "none"; None: the policy's
            ("none" without a policy or with a sum loss).
        batch_size: the initial batch (None: the smallest the policy allows).
        estimator_beta: EMA decay of the ratio-of-EMAs estimator, in [0, 1).
        dataset_size: n; enables ``diversity`` and, by default, the
            without-replacement estimator.
        sampling: "replacement" or "shuffle"; None: "shuffle" with a
            ``dataset_size``, else "replacement".
        on_nonfinite: "skip" or "raise" (:class:`gdiv.NonFiniteError` from
            ``fit``'s :class:`gdiv.keras.DiversityCallback` or from
            :meth:`gradient`).
        writer: any object with ``add_scalar(tag, value, step)``.
        seed: base seed of the controller (kept in :meth:`state_dict`).
        max_lr_factor: None, or a cap ≥ 1 on the LR rule's factor.
        lr_warmup_steps: W ≥ 0: after a batch increase the LR factor ramps
            linearly from the previous one to the rule's over W steps (Go's
            ``ControllerSettings.LRWarmupSteps``; 0: off, the default).
        mechanism: None or ``gdiv.Langevin`` (norms mode): noise added once
            to the batch gradient, drawn in the graph from Go's step seeds;
            its effect on M² is Go's analytic correction.
        mode: "norms" (per-example norms from the layer taps) or
            "two_scale" (MirroredStrategy: each replica's gradient against
            the global one; no taps, any model).
        measure_every, max_measure_every: the cadence (as gdiv.torch's).
        loss_fn: full mode: ``loss_fn(y_true, y_pred)`` on one example (None:
            the compiled loss).
        full_max_bytes: full mode's budget for the (B, P) per-example
            gradients (a larger batch is refused, naming the bytes).
        attach: install the taps and the ``train_step`` now.

    Not supported yet (refused): full mode under a strategy or with weight
    regularizers, strategies other than MirroredStrategy, learning-rate
    schedules with an LR rule.
    """

    def __init__(
        self,
        model: Any,
        *,
        loss_reduction: str = "auto",
        policy: Optional[BatchSizePolicy] = None,
        optimizer: Any = None,
        lr_rule: Optional[str] = None,
        batch_size: Optional[int] = None,
        estimator_beta: float = 0.9,
        dataset_size: Optional[int] = None,
        sampling: Optional[str] = None,
        on_nonfinite: str = "skip",
        writer: Any = None,
        seed: Optional[int] = None,
        max_lr_factor: Optional[float] = None,
        mechanism: Any = None,
        mode: str = "norms",
        measure_every: Any = 1,
        max_measure_every: int = 16,
        loss_fn: Any = None,
        full_max_bytes: int = 1 << 30,
        attach: bool = True,
        lr_warmup_steps: int = 0,
    ) -> None:
        if mode not in ("norms", "two_scale", "full"):
            raise ValueError(f"gdiv.keras.DiversityMonitor: mode must be 'norms', 'two_scale' or 'full', got {mode!r}")
        if mechanism is not None and not isinstance(mechanism, Mechanism):
            raise TypeError(f"gdiv.keras.DiversityMonitor: mechanism must be a gdiv mechanism or None, got {type(mechanism).__name__}")
        if mechanism is not None and not isinstance(mechanism, Langevin) and mode != "full":
            raise ValueError(
                f"gdiv.keras.DiversityMonitor: {type(mechanism).__name__} is applied to each example's gradient: it needs "
                "mode='full' (per-example gradients); gdiv.Langevin also works in norms mode"
            )
        if mechanism is not None and mode == "two_scale":
            raise ValueError("gdiv.keras.DiversityMonitor: mechanisms need mode='norms' (Langevin) or 'full'")
        if mode == "full" and measure_every != 1:
            raise ValueError("gdiv.keras.DiversityMonitor: measure_every is for norms mode; full mode computes the per-example gradients every step")
        if on_nonfinite not in ("skip", "raise"):
            raise ValueError(f"gdiv.keras.DiversityMonitor: on_nonfinite must be 'skip' or 'raise', got {on_nonfinite!r}")
        if policy is not None and not isinstance(policy, BatchSizePolicy):
            raise TypeError(f"gdiv.keras.DiversityMonitor: policy must be a gdiv.BatchSizePolicy or None, got {type(policy).__name__}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError("gdiv.keras.DiversityMonitor: writer must have add_scalar(tag, value, step)")
        strategy = tf.distribute.get_strategy()
        self.strategy = strategy
        self.world_size = int(strategy.num_replicas_in_sync)
        if self.world_size > 1 and not isinstance(strategy, tf.distribute.MirroredStrategy):
            raise ValueError(
                f"gdiv.keras.DiversityMonitor: {type(strategy).__name__} with {self.world_size} replicas is not supported; "
                "tf.distribute.MirroredStrategy is (build the model, compile it and build the monitor inside its scope)"
            )
        if mode == "full" and self.world_size > 1:
            raise ValueError("gdiv.keras.DiversityMonitor: mode='full' under tf.distribute is not supported; use mode='norms'")
        if mode == "two_scale" and self.world_size < 2:
            raise ValueError(
                "gdiv.keras.DiversityMonitor: mode='two_scale' compares each replica's gradient with the global one and "
                "needs tf.distribute.MirroredStrategy with ≥ 2 replicas (Keras has no gradient accumulation); use mode='norms'"
            )
        if loss_reduction == "auto":
            loss_reduction = _reduction_of(model)
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"gdiv.keras.DiversityMonitor: loss_reduction must be 'auto', 'mean' or 'sum', got {loss_reduction!r}")
        self._session = Session.create(
            who="gdiv.keras",
            policy=policy,
            loss_reduction=loss_reduction,
            lr_rule=lr_rule,
            dataset_size=dataset_size,
            sampling=sampling,
            mechanism=mechanism if mode == "norms" else None,  # full mode applies it per example
            on_nonfinite=on_nonfinite,
            writer=writer,
            batch_size=batch_size,
            estimator_beta=estimator_beta,
            seed=seed,
            max_lr_factor=max_lr_factor,
            lr_warmup_steps=lr_warmup_steps,
            world_size=self.world_size,  # Go rounds the policy: equal shares per replica
            measure_every=measure_every,
            max_measure_every=max_measure_every,
        )
        controller = self._session.controller
        self._model = model
        self.loss_reduction = loss_reduction
        self.sampling = self._session.sampling
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self._optimizer = optimizer
        self.mode = mode
        self._taps = Taps(model, taps=mode == "norms")
        self.full_max_bytes = int(full_max_bytes)
        self._loss_fn = loss_fn
        # The cadence's flag for the next step, read in the graph (set by the host call).
        self._measure = tf.Variable(controller.measure_next, trainable=False, dtype=tf.bool, name="gdiv_measure_next")
        self.mechanism = mechanism
        # The Langevin draws' seed of the next step (Go's step seed, as two 32-bit halves), set by the host call.
        self._seed = tf.Variable(halves(controller.next_seed), trainable=False, dtype=tf.int64, name="gdiv_step_seed")
        self._error: Optional[BaseException] = None
        self._installed = False
        self.traces = 0  # how many times the monitored step was traced (tf.function retraces)
        if optimizer is not None or getattr(model, "optimizer", None) is not None:
            self._check_lr(self.optimizer)
        if attach:
            self.attach()
        else:
            self._taps.remove()

    # -- attach / remove -------------------------------------------------------

    @property
    def model(self) -> Any:
        return self._model

    @property
    def optimizer(self) -> Any:
        return self._optimizer if self._optimizer is not None else getattr(self._model, "optimizer", None)

    @property
    def attached(self) -> bool:
        return self._taps.attached

    def attach(self) -> "DiversityMonitor":
        """Install the layer taps and the monitored ``train_step`` (for
        ``fit``). Idempotent."""
        self._taps.attach()
        if not self._installed:
            model = self._model
            make = model.make_train_function

            def make_train_function(force: bool = False) -> Any:
                self._no_xla()
                return make(force=force)

            model.train_step = self._train_step
            model.make_train_function = make_train_function
            model.train_function = None  # fit traces the monitored step
            self._installed = True
        return self

    def _no_xla(self) -> None:
        """The step's host call (tf.numpy_function) cannot run inside XLA:
        fit's step is compiled without it (Keras's "auto" picks XLA on GPUs)."""
        model = self._model
        if getattr(model, "jit_compile", False):
            warnings.warn(
                "gdiv.keras: the monitored train step calls Go once per step (tf.numpy_function), which XLA cannot "
                "compile: running it with jit_compile=False (compile(jit_compile=False) silences this)",
                RuntimeWarning,
                stacklevel=3,
            )
            model.jit_compile = False

    def remove(self) -> None:
        """Restore the model's own ``call``s and ``train_step``. Safe twice."""
        self._taps.remove()
        if self._installed:
            self._model.__dict__.pop("train_step", None)
            self._model.__dict__.pop("make_train_function", None)
            self._model.train_function = None
            self._installed = False

    # -- decisions: controller, history, batch_size, steps, ... (gdiv._session.SessionMonitor) --

    def raise_pending(self) -> None:
        """Raise the error the last step's host call caught (a
        :class:`gdiv.NonFiniteError`, a bad observation), if any."""
        err, self._error = self._error, None
        if err is not None:
            raise err

    # -- the step ----------------------------------------------------------------

    def _check_lr(self, opt: Any) -> None:
        if opt is None or self.lr_rule == "none":
            return
        inner = getattr(opt, "inner_optimizer", opt)
        if isinstance(getattr(inner, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                f"gdiv.keras.DiversityMonitor: the optimizer's learning rate is a schedule and the LR rule is {self.lr_rule!r}: "
                "the monitor sets the learning rate itself; give the optimizer a constant learning rate, or lr_rule='none' "
                "and multiply your schedule by monitor.lr_factor"
            )

    def _train_step(self, data: Any) -> Dict[str, Any]:
        """Keras's train_step with the measurement between the gradient and
        the update."""
        model = self._model
        self.traces += 1
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with self._taps.recording(), tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(tf.nest.flatten(x)[0])[0]
            model._loss_tracker.update_state(loss, sample_weight=batch)
            opt = model.optimizer
            scaled = opt.scale_loss(loss) if opt is not None else loss
        if self.mode == "full":
            self._taps.take()
            grads = full_gradients(self, x, y, sample_weight, loss, batch, model.trainable_variables, opt)
        else:
            grads = measured_gradients(self, tape, scaled, loss, batch, model.trainable_variables, opt)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return logs

    def gradient(self, tape: Any, loss: Any, variables: Optional[Sequence[Any]] = None, *, batch: Any = None) -> List[Any]:
        """A custom loop's ``tape.gradient``: the batch gradients of ``loss``
        w.r.t. ``variables`` (default: the model's trainable variables), with
        the step measured and decided, and the learning rate set for this
        batch. Call it inside ``monitor.recording()``'s block's tape::

            with monitor.recording(), tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = monitor.gradient(tape, loss)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))

        Works eagerly and inside ``tf.function``. ``batch``: the step's
        examples (``tf.shape(x)[0]``; default: read off the first measured
        layer's output; needed in two_scale mode, which taps no layer).
        """
        if self.mode == "full":
            raise ValueError(
                "gdiv.keras.DiversityMonitor.gradient: full mode runs in the monitored train_step (model.fit, "
                "model.train_on_batch), which has the targets each example's loss needs"
            )
        variables = list(self._model.trainable_variables if variables is None else variables)
        if [id(v) for v in variables] != [id(v) for v in self._taps.trainable]:
            raise ValueError(
                "gdiv.keras.DiversityMonitor.gradient: variables must be the model's trainable variables (in order); "
                "the monitor measures the whole model's gradient"
            )
        recs = self._taps.records
        if batch is None:
            if not recs:
                raise ValueError(
                    "gdiv.keras.DiversityMonitor.gradient: no layer call was recorded: run the forward pass inside "
                    "`with monitor.recording(), tf.GradientTape() as tape:` (in two_scale mode pass batch=tf.shape(x)[0])"
                )
            batch = self._batch_of(recs)
        opt = self.optimizer
        grads = measured_gradients(self, tape, loss, loss, batch, variables, opt)
        if tf.executing_eagerly():
            self.raise_pending()
        return grads

    def recording(self) -> Any:
        """The block whose forward pass the monitor measures (custom loops)."""
        return self._taps.recording()

    @staticmethod
    def _batch_of(recs: Sequence[Any]) -> Any:
        return tf.shape(recs[0].out)[0]

    # -- full mode ---------------------------------------------------------------

    def _host_full(self, rows: np.ndarray, vec: np.ndarray) -> np.ndarray:
        """Full mode's host call: the mechanism on the rows (in place, in the
        buffer TensorFlow handed over), Go's sums, one controller call."""
        b = int(vec[0])
        out = np.zeros(len(_OUT) + rows.shape[1])
        try:
            self.raise_pending()
            if self.mechanism is not None:
                self.mechanism.apply_(rows, seed=self.controller.next_seed)
            try:
                st = stats(rows)
                sum_sq, sq_sum = st.sum_sq_norms, st.sq_norm_of_sum
            except (NonFiniteError, SumOverflowError):  # the controller skips (or the monitor raises)
                sum_sq = sq_sum = math.nan
            d = self.controller.observe(b, sum_sq, sq_sum)
            self._finish(d, b, float(vec[1]), float(vec[2]), out)
            total = rows.sum(0)
            out[len(_OUT) :] = total / b if self.loss_reduction == "mean" else total
        except Exception as e:  # kept for raise_pending()
            self._error = e
            out[4] = 1.0
            out[5] = 1.0
        return out

    def _host_call(self, vec: Any) -> Any:
        """The host call and what it sets in the graph."""
        out = tf.numpy_function(self._host, [vec], _F64, stateful=True, name="gdiv_controller")
        out.set_shape([len(_OUT)])
        self._apply_out(out, self.optimizer)
        return out

    def _apply_out(self, out: Any, opt: Any) -> None:
        """In the graph, after the host call: the learning rate, the cadence
        flag and the next step's seed."""
        if opt is not None and self.lr_rule != "none":
            var = getattr(opt, "inner_optimizer", opt)._learning_rate
            var.assign(tf.where(out[1] > 0, tf.cast(out[0], var.dtype), var))
        self._measure.assign(out[5] > 0)
        if self.mechanism is not None:
            self._seed.assign(tf.cast(out[7:9], tf.int64))

    def _finish(self, d: Any, b: int, loss: float, lr: float, out: np.ndarray, keep: bool = True) -> None:
        """After the controller call: the LR rule, checks, the record, and
        what goes back into the graph."""
        new = self._session.learning_rates(b, d.lr_factor, None if math.isnan(lr) else [lr])
        used = lr if new is None else new[0]
        self._session.check(d)
        self._session.record(d, None if math.isnan(used) else used, loss, keep=keep)
        out[0] = used
        out[1] = 0.0 if new is None else 1.0
        out[2] = d.smoothed.batch_bound
        out[3] = float(d.next_batch or 0)
        out[5] = 1.0 if d.measure_next else 0.0
        out[6] = d.noise_std
        out[7:9] = halves(self.controller.next_seed)

    def _host_once(self, strategy: Any, vec: Any) -> Any:
        """merge_call: the replicas' (equal) vectors, one host call."""
        return self._host_call(strategy.experimental_local_results(vec)[0])

    def _host(self, vec: np.ndarray) -> np.ndarray:
        """The step's one controller call (outside the graph)."""
        out = np.zeros(len(_OUT))
        try:
            self.raise_pending()  # an unreported error of the step before
            b, sum_sq, sq_sum, scale, loss, lr, b2, measured, b_small, sq_small = (float(v) for v in vec[: len(_VEC)])
            noise: Dict[str, Any] = {}
            if self.mechanism is not None:
                dim, dot, sq = (float(v) for v in vec[len(_VEC) :])
                noise = dict(dim=int(dim), noise_dot=dot, noise_sq_norm=sq)
            if self.world_size > 1 and self.loss_reduction == "mean" and b2 * self.world_size != b * b:
                raise ValueError(
                    f"gdiv.keras: the global batch of {int(b)} examples was split unequally over {self.world_size} replicas: "
                    "with a mean loss each replica's examples then weigh differently; use global batches divisible by "
                    "the replica count (gdiv.keras.AdaptiveBatches with the monitor's policy does; dataset.batch(..., drop_remainder=True))"
                )
            mean = self.loss_reduction == "mean"
            if not measured:
                d = self.controller.observe(int(b), 0.0, 0.0, unmeasured=True, **({"dim": noise["dim"]} if noise else {}))
            elif self.mode == "two_scale":
                d = self.controller.observe(
                    int(b), 0.0, sq_sum, mean=mean, norms_scale=scale, grad_scale=scale, b_small=int(b_small), sq_norm_small=sq_small
                )
            else:
                d = self.controller.observe(int(b), sum_sq, sq_sum, mean=mean, norms_scale=scale, grad_scale=scale, **noise)
            self._finish(d, int(b), loss, lr, out, keep=bool(measured))
        except Exception as e:  # kept for raise_pending(): the graph cannot carry a Python exception
            self._error = e
            out[4] = 1.0
            out[5] = 1.0
        return out

    # -- checkpoints -------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to make the same decisions (plain
        data): the controller's state, policy, LR rule, initial lr, seed and
        history. The model, optimizer and dataset have their own."""
        return {
            "version": _STATE_VERSION,
            "framework": "keras",
            "loss_reduction": self.loss_reduction,
            "sampling": self.sampling,
            "dataset_size": self.dataset_size,
            **self._session.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (validated first; a failed
        load changes nothing)."""
        self._check_state(state, _STATE_VERSION, _COMPAT_KEYS)
        self._session.load_state_dict(state)
        self._measure.assign(self.controller.measure_next)
        self._seed.assign(halves(self.controller.next_seed))

    def __repr__(self) -> str:
        bb = self.controller.smoothed.batch_bound
        return (
            f"gdiv.keras.DiversityMonitor({self._model.name!r}, loss_reduction={self.loss_reduction!r}, steps={self.steps}, "
            f"batch_size={self.batch_size}, batch_bound={bb:.6g})"
        )
