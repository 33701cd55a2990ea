"""DiversityMonitor: the batch-size bound of a PyTorch training loop,
measured every step, and the batch size (and learning rate) that follow.

The monitor captures (hooks or per-example gradients), reduces on the device
and makes ONE call per step to Go's :class:`gdiv.Controller`, which holds
every formula and rule: the estimate, its smoothing, the policy, the LR
factor, the loss-scale and mean-loss conversions, the Langevin correction
and the mechanism seeds. The user manual (loss reduction and learning rate,
AMP, mechanisms, degenerate steps, sampling, what is not supported) is in
python/README.md, "DiversityMonitor".
"""

from __future__ import annotations

import math
import secrets
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._session import RECORD_FIELDS, Session, SessionMonitor
from ..errors import NonFiniteError, SumOverflowError
from ..mechanisms import Mechanism
from ..policy import BatchSizePolicy
from ._dist import DataParallel, resolve
from ._local import LocalGradients
from ._measure import measure_norms, measure_two_scale
from ._options import check_options
from ._reduce import NoiseDraws
from .capture import PerExampleNorms
from .errors import CaptureError
from .full import per_example_grads, trainable_parameters

__all__ = ["DiversityMonitor", "RECORD_FIELDS"]


_STATE_VERSION = 2
_F64 = torch.float64
_COMPAT_KEYS = ("mode", "loss_reduction", "sampling", "dataset_size")


class DiversityMonitor(SessionMonitor):
    """Measure the gradient diversity of a PyTorch training loop and adapt the
    batch size (and learning rate) to it.

    Args:
        model: the model (an ``nn.Module``). In norms mode it is hooked (see
            :class:`gdiv.torch.PerExampleNorms`); the hooks capture only in
            train mode.
        loss_reduction: "mean" or "sum": how the backpropagated loss
            combines the examples (python/README.md, "DiversityMonitor", for the lr rule).
        mode: "norms" (per-example norms from hooks), "full" (per-example
            gradients; needs ``loss_fn``) or "two_scale" (no per-example
            work: each backward pass's own gradient against the
            accumulated one; any model, BatchNorm included; needs ≥ 2
            local gradients per step: DDP ranks or micro-batches).
        mechanism: None, ``gdiv.Langevin`` (norms or full), ``gdiv.Dropout``
            or ``gdiv.Quantize`` (full only).
        policy: a :class:`gdiv.BatchSizePolicy` deciding the next batch, or
            None to measure only. Adjusted like Go's trainer: ``min_batch``
            raised to 2, ``max_batch=None`` capped at ``dataset_size`` (if
            given); the adjusted policy is :attr:`policy`.
        optimizer: the optimizer whose param groups' ``lr`` follow the LR rule
            (mean reduction), and the one a GradScaler unscales.
        lr_rule: "linear", "sqrt" or "none"; None: the policy's rule ("none"
            without a policy). Must be None or "none" with a "sum" loss.
        batch_size: the initial batch size (what :attr:`batch_size` returns
            before the first step, e.g. for the sampler). None: the smallest
            batch the policy allows; without a policy, unknown until the
            first step. With a policy it must be one the policy allows.
        estimator_beta: EMA decay of the ratio-of-EMAs estimator, in [0, 1).
        dataset_size: n, the number of training examples; enables
            ``diversity`` (= B̂_S/n) and, by default, the without-replacement
            estimator.
        sampling: "replacement" or "shuffle" (needs ``dataset_size``); None:
            "shuffle" if ``dataset_size`` is given, else "replacement".
        on_nonfinite: "skip" or "raise" (python/README.md).
        grad_scaler: a ``torch.amp.GradScaler`` (or any object with
            ``get_scale()``) in norms mode under AMP.
        writer: any object with ``add_scalar(tag, value, global_step)`` (a
            TensorBoard ``SummaryWriter``): each step logs ``gdiv/<key>``
            for the finite values of batch, lr, loss, m2, g, batch_bound,
            diversity, noise_scale, and ``gdiv/skipped``.
        full_max_bytes: full mode's memory budget for the (B, P) gradients
            plus one chunk (``per_example_grads(max_bytes=...)``).
        loss_fn: full mode: ``loss_fn(output, target) -> scalar`` evaluated
            on one example at a time (``F.cross_entropy`` works: the mean
            over one example is ℓ_i).
        seed: seed of the mechanism's draws, an integer in [0, 2**64); None
            draws one (kept in :meth:`state_dict`).
        batch_dim: the example dimension of the layer inputs (norms mode).
        fuse_conv: norms mode: convolutions take their batch weight gradient
            from the per-example gradients their norms need (see
            :class:`gdiv.torch.PerExampleNorms`; swaps their class while
            attached). False: leave the modules alone.
        attach: attach the hooks now (norms mode).
        measure_every: the measurement cadence (norms mode): an integer k
            (measure steps 1, k+1, 2k+1, …) or "auto" (Go's adaptive
            cadence: every step until the estimate settles and whenever the
            smoothed bound moves, up to ``max_measure_every``). On an
            unmeasured step the hooks are inert (a flag check), ``step()``
            only counts it, applies the LR rule (and Langevin noise) and
            returns a record with ``skipped="unmeasured"`` that is not added
            to :attr:`history`; the batch size changes only after measured
            steps.
        max_measure_every: the adaptive cadence's largest interval.
        max_lr_factor: None, or a cap ≥ 1 on the LR rule's factor: the lr
            never exceeds max_lr_factor × the initial one (Go's
            ``ControllerSettings.MaxLRFactor``).
        lr_warmup_steps: W: after each batch change of the policy, ramp the
            lr linearly over W steps from the step before's to the rule's
            (a lower one applies at once); 0 or 1: none. See
            :class:`gdiv.Controller`.
        process_group: "auto" (a ``DistributedDataParallel`` model under an
            initialized torch.distributed: its process group), None (this
            process alone) or a process group. Under data parallelism the
            batch is global (P × local × micro-batches), one all-reduce of a
            few scalars per measured step gives every rank the same
            numbers and decisions, the policy is rounded to multiples of P,
            and the seed (if None) is rank 0's.

    Raises:
        ValueError: bad or inconsistent options (each named).
        TypeError: a model that is not an ``nn.Module``, a policy or
            mechanism of the wrong type.

    Attributes:
        history: the list of step records (dicts with :data:`RECORD_FIELDS`).
        controller: the :class:`gdiv.Controller` that decides (one Go call
            per step); estimator: a read-only view of its estimator.
        policy: the adjusted policy, or None.

    Example:
        >>> monitor = DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(max_batch=512))
        >>> loss = F.cross_entropy(model(x), y); loss.backward()
        >>> rec = monitor.step(loss=loss)      # {'batch_bound': ..., 'next_batch': ..., ...}
        >>> opt.step(); monitor.batch_size     # the next batch size
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_reduction: str = "mean",
        mode: str = "norms",
        mechanism: Optional[Mechanism] = None,
        policy: Optional[BatchSizePolicy] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        lr_rule: Optional[str] = None,
        batch_size: Optional[int] = None,
        estimator_beta: float = 0.9,
        dataset_size: Optional[int] = None,
        sampling: Optional[str] = None,
        on_nonfinite: str = "skip",
        grad_scaler: Any = None,
        writer: Any = None,
        full_max_bytes: int = 1 << 30,
        loss_fn: Optional[Callable[..., Tensor]] = None,
        seed: Optional[int] = None,
        batch_dim: int = 0,
        fuse_conv: bool = True,
        attach: bool = True,
        measure_every: Union[int, str] = 1,
        max_measure_every: int = 16,
        process_group: Any = "auto",
        max_lr_factor: Optional[float] = None,
        lr_warmup_steps: int = 0,
    ) -> None:
        if mode == "full" and measure_every != 1:
            raise ValueError(
                "DiversityMonitor: measure_every is for norms mode; full mode computes the per-example gradients "
                "its mechanism needs on every step anyway"
            )
        check_options(model, loss_reduction, mode, mechanism, on_nonfinite, loss_fn, grad_scaler, full_max_bytes, optimizer, writer, lr_rule)
        if policy is not None and not isinstance(policy, BatchSizePolicy):
            raise TypeError(f"DiversityMonitor: policy must be a gdiv.BatchSizePolicy or None, got {type(policy).__name__}")
        dp = resolve(model, process_group)
        if dp is not None:
            if mode == "full":
                raise ValueError(
                    "DiversityMonitor: mode='full' under data-parallel training is not supported; use mode='norms' "
                    "(Langevin works there), or monitor a single process"
                )
            if seed is None:  # one seed for every rank's mechanism draws
                dev = next((p.device for p in model.parameters()), torch.device("cpu"))
                seed = dp.broadcast_int(secrets.randbits(63), dev)
        self._session = Session.create(
            who="gdiv.torch",
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
            measure_every=measure_every,
            max_measure_every=max_measure_every,
            max_lr_factor=max_lr_factor,
            lr_warmup_steps=lr_warmup_steps,
            world_size=1 if dp is None else dp.world,  # Go rounds the policy: equal shares per rank
        )
        self._model = model
        self._dp: Optional[DataParallel] = dp
        self.loss_reduction = loss_reduction
        self.mode = mode
        self.mechanism = mechanism
        self.optimizer = optimizer
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.sampling = self._session.sampling
        self.grad_scaler = grad_scaler
        self.full_max_bytes = full_max_bytes
        self.loss_fn = loss_fn
        self._weighted_micro = False  # set by micro_batches(): micro-batch losses weighted by size this step
        self._pending: Optional[Tuple[Tensor, int, Optional[float]]] = None
        self._noise = NoiseDraws()
        self._params: List[Tensor] = []
        self._params_key: Any = None
        self._norms = (
            PerExampleNorms(model, loss_reduction=loss_reduction, batch_dim=batch_dim, fuse_conv=fuse_conv, attach=attach)
            if mode == "norms"
            else None
        )
        if self._norms is not None:
            self._norms.accumulate = True  # micro-batches before one step() add up
        self._local = LocalGradients(model, batch_dim=batch_dim, attach=attach) if mode == "two_scale" else None

    # ------------------------------------------------------------ hooks ---

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def attached(self) -> bool:
        """Whether the hooks are attached (always False in full mode, which has none)."""
        hooks = self._norms if self._norms is not None else self._local
        return hooks is not None and hooks.attached

    def attach(self) -> "DiversityMonitor":
        """Attach the hooks (norms and two_scale modes). Idempotent."""
        for hooks in (self._norms, self._local):
            if hooks is not None:
                hooks.attach()
        return self

    def remove(self) -> None:
        """Remove every hook the monitor added. Safe to call twice."""
        for hooks in (self._norms, self._local):
            if hooks is not None:
                hooks.remove()

    def __enter__(self) -> "DiversityMonitor":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __deepcopy__(self, memo: Any) -> "DiversityMonitor":
        raise TypeError(
            "DiversityMonitor cannot be deep-copied: its hooks belong to the original model, so a copy would "
            "capture nothing. Build a new monitor on the copied model and load_state_dict(monitor.state_dict())"
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "DiversityMonitor cannot be pickled: it holds hooks on a live model. Save monitor.state_dict() (plain "
            "data, JSON-able) with the model's and optimizer's state, and load it into a new monitor"
        )

    # --------------------------------------------------------- decisions ---

    # -------------------------------------------------------- full mode ---

    def full_backward(self, inputs: Union[Tensor, Sequence[Tensor]], targets: Optional[Tensor] = None) -> Tensor:
        """Full mode's backward pass: per-example gradients, the mechanism,
        and their sum (or mean) in ``.grad``. Call it instead of
        ``loss.backward()``, then :meth:`step`.

        The (B, P) gradients (``per_example_grads``: row i is ∇ℓ_i, the
        gradient of ``loss_fn`` on example i alone) are copied to the CPU when
        the model is elsewhere, the mechanism is applied to them there in
        place (Go, zero copy, seeded by (seed, step)), and
        Σ_i rows ("sum") or (1/B) Σ_i rows ("mean") replaces each trainable
        parameter's ``.grad``.

        Args:
            inputs: a tensor or a sequence of tensors, batch first
                (``model(*inputs)``).
            targets: the targets, batch first, or None (``loss_fn(output)``).

        Returns:
            The batch loss ``loss_fn(model(inputs), targets)`` (detached; one
            extra forward without gradients).

        Raises:
            CaptureError: not full mode, or the model is in eval mode.
            MemoryError: over ``full_max_bytes`` (the message gives the
                bytes needed).
            UnsupportedModuleError: train-mode BatchNorm, or torch.func
                cannot run the model.
        """
        if self.mode != "full":
            raise CaptureError("DiversityMonitor.full_backward is for mode='full'; in norms mode call loss.backward()")
        if not self._model.training:
            raise CaptureError("DiversityMonitor: the model is in eval mode; the monitor measures training steps only (call model.train() first)")
        if self._pending is not None:
            raise CaptureError(
                "DiversityMonitor.full_backward: called twice without step(): gradient accumulation over several "
                "backward passes per step is not supported; call monitor.step() after each full_backward"
            )
        xs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
        assert self.loss_fn is not None  # checked at construction for full mode
        grads = per_example_grads(self._model, self.loss_fn, xs, targets, max_bytes=self.full_max_bytes)
        batch = grads.shape[0]
        rows = grads.detach().to("cpu").contiguous()
        if self.mechanism is not None:
            self.mechanism.apply_(rows, seed=self.controller.next_seed)
        total = rows.sum(0)
        if self.loss_reduction == "mean":
            total = total / batch
        col = 0
        for _, p in trainable_parameters(self._model):
            k = p.numel()
            g = total[col : col + k].reshape(p.shape).to(device=p.device, dtype=p.dtype)
            col += k
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)
        loss_fn = self.loss_fn
        with torch.no_grad():
            out = self._model(*xs)
            loss = loss_fn(out) if targets is None else loss_fn(out, targets)
        self._pending = (rows, batch, float(loss.detach().reshape(()).item()) if isinstance(loss, Tensor) else None)
        return loss.detach() if isinstance(loss, Tensor) else loss

    # ------------------------------------------------------------- step ---

    def _grad_scale(self) -> Tuple[float, float]:
        """(scale of the per-example norms, scale of .grad)."""
        sc = self.grad_scaler
        if sc is None or (callable(getattr(sc, "is_enabled", None)) and not sc.is_enabled()):
            return 1.0, 1.0
        s = float(sc.get_scale())
        unscaled = False
        states = getattr(sc, "_per_optimizer_states", None)  # torch's GradScaler bookkeeping
        if states is not None and self.optimizer is not None:
            st = states.get(id(self.optimizer)) if hasattr(states, "get") else None
            stage = st.get("stage") if isinstance(st, dict) else None
            unscaled = getattr(stage, "name", None) == "UNSCALED"
        return s, (1.0 if unscaled else s)

    def _trainable(self) -> List[Tensor]:
        """The trainable parameters, listed again only when the hooks'
        parameter set changed (per-step work independent of their number)."""
        norms = self._norms
        key = None if norms is None else norms._trainable
        if key is None or key is not self._params_key:
            self._params = [p for _, p in trainable_parameters(self._model)]
            self._params_key = key
        return self._params

    def _measure_norms(self, loss: Any, weighted: bool = False) -> Tuple[int, Dict[str, Any], Optional[int], Any]:
        """Norms mode (see _measure.measure_norms). Returns (batch, the
        observation's keywords, the Langevin draws' seed or None, the loss)."""
        assert self._norms is not None
        seed = self.controller.next_seed if self.controller.settings["langevin_std"] > 0 else None
        batch, kw, loss = measure_norms(
            self._norms, self._trainable(), self._dp, self.loss_reduction == "mean", self._grad_scale(), self._noise, seed, loss, weighted
        )
        return batch, kw, seed, loss

    def _measure_two_scale(self, loss: Any) -> Tuple[int, Dict[str, Any], Any]:
        """two_scale mode (see _measure.measure_two_scale)."""
        assert self._local is not None
        return measure_two_scale(self._local, self._trainable(), self._dp, self.loss_reduction == "mean", self._grad_scale(), loss)

    def _set_lr(self, batch: int, factor: float) -> Optional[float]:
        """Apply the LR factor for the batch being stepped; return group 0's lr."""
        opt = self.optimizer
        current = None if opt is None else [_lr_value(g["lr"]) for g in opt.param_groups]
        new = self._session.learning_rates(batch, factor, current)
        if opt is None:
            return None
        if new is not None:
            for g, lr in zip(opt.param_groups, new):
                g["lr"] = lr
        return _lr_value(opt.param_groups[0]["lr"])

    def step(
        self,
        *,
        loss: Optional[Union[Tensor, float]] = None,
        inputs: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        targets: Optional[Tensor] = None,
    ) -> Dict[str, Any]:
        """Fold the backward passes since the last step (one batch, or its
        micro-batches under gradient accumulation) into the estimate and
        decide the next batch. Under DDP every rank calls it; the numbers
        and the decision are global and the same on every rank.

        Call it after ``loss.backward()`` (norms and two_scale modes) or
        :meth:`full_backward` (full mode; or pass ``inputs``/``targets`` here
        to run it), and before ``optimizer.step()``: with a mean-reduced
        loss it sets the lr for the batch being stepped.

        Args:
            loss: the batch loss, recorded (and logged) only; a tensor is
                read with ``.item()``.
            inputs, targets: full mode: run :meth:`full_backward` first.

        Returns:
            The record (also appended to :attr:`history`): step (1-based),
            examples (so far), batch (of this step), next_batch
            (:attr:`batch_size` after the decision), lr (group 0's, used by
            this step; None without an optimizer), loss, sum_sq_norms and
            sq_norm_of_sum (Σ‖g_i‖², ‖Σ g_i‖² of this batch, unscaled, with
            the mechanism; NaN in two_scale mode), m2, g, batch_bound, noise_scale, no_signal (the
            smoothed estimate after the step; batch_bound = +inf with
            no_signal), diversity (batch_bound/n, None without
            dataset_size), skipped (None, "non-finite" or "batch of 1").

        Raises:
            CaptureError: nothing captured since the last step, the last
                backward ran in eval mode (``model.eval()``), micro-batches
                of unequal sizes with a mean loss, unequal local batches
                across DDP ranks with a mean loss, two_scale with fewer than
                2 local gradients, or other capture problems (see
                ``PerExampleNorms.sq_norms``).
            gdiv.NonFiniteError: NaN/Inf gradients with on_nonfinite="raise".
        """
        weighted, self._weighted_micro = self._weighted_micro, False  # micro_batches() said so for this step
        if self._local is not None:
            if inputs is not None or targets is not None:
                raise ValueError("DiversityMonitor.step: inputs/targets are for mode='full'")
            if not self._local.enabled:
                return self._unmeasured_step(loss, inputs, targets)
            batch, pair, loss = self._measure_two_scale(loss)
            return self._decide(batch, pair, None, loss)
        if self._norms is not None and not self._norms.enabled:
            return self._unmeasured_step(loss, inputs, targets)
        seed = None
        if self.mode == "full":
            if inputs is not None:
                self.full_backward(inputs, targets)
            if self._pending is None:
                raise CaptureError(
                    "DiversityMonitor.step: full mode has no per-example gradients for this step: call "
                    "monitor.full_backward(x, y) instead of loss.backward(), or monitor.step(inputs=x, targets=y)"
                )
            rows, batch, full_loss = self._pending
            self._pending = None
            if loss is None:
                loss = full_loss
            sum_sq, sq_sum = _sums_of(rows)  # one Go pass over the rows, in place
            kw: Dict[str, Any] = dict(sum_sq_norms=sum_sq, sq_norm_batch_grad=sq_sum)
        else:
            if inputs is not None or targets is not None:
                raise ValueError("DiversityMonitor.step: inputs/targets are for mode='full'")
            batch, kw, seed, loss = self._measure_norms(loss, weighted)
        return self._decide(batch, kw, seed, loss)

    def _decide(self, batch: int, kw: Dict[str, Any], seed: Optional[int], loss: Any) -> Dict[str, Any]:
        """The step's one controller call, then the LR, noise, warnings,
        record and writer."""
        if isinstance(loss, Tensor):
            loss = float(loss.detach().reshape(()).item())
        elif loss is not None:
            loss = float(loss)
        d = self.controller.observe(batch, **kw)  # the one Go call of a norms-mode step
        if seed is not None and d.noise_std != 0:
            self._noise.add_(self._trainable(), seed, d.noise_std)
        lr = self._set_lr(batch, d.lr_factor)
        self._session.check(d)
        for hooks in (self._norms, self._local):
            if hooks is not None:
                hooks.enabled = d.measure_next
        return self._session.record(d, lr, loss)

    def _unmeasured_step(self, loss: Any, inputs: Any, targets: Any) -> Dict[str, Any]:
        """A step the cadence does not measure: the hooks were inert (no
        capture); the controller counts it and gives the LR factor (and the
        Langevin noise, which training still gets). Not in :attr:`history`."""
        if inputs is not None or targets is not None:
            raise ValueError("DiversityMonitor.step: inputs/targets are for mode='full'")
        hooks: Any = self._norms if self._norms is not None else self._local
        assert hooks is not None
        if self._norms is not None:
            batch, _ = self._norms._take_inert_batch()  # the micro-batches' examples, added up
        else:
            assert self._local is not None
            _, sizes = self._local.take()
            batch = None if not sizes or None in sizes else sum(sizes)  # type: ignore[arg-type]
        if batch is None:
            raise CaptureError(
                "gdiv.torch: no train-mode forward pass of the model (with gradients, through its own forward) since "
                "the last monitor.step(): run the forward and loss.backward() first"
            )
        if self._dp is not None:
            # No collective on an unmeasured step: the global batch is P equal
            # shares (the distributed sampler's; a measured step checks it).
            batch *= self._dp.world
        kw: Dict[str, Any] = {"unmeasured": True}
        seed = None
        if self.controller.settings["langevin_std"] > 0:
            seed = self.controller.next_seed
            kw["dim"] = sum(p.numel() for p in self._trainable())
        d = self.controller.observe(batch, 0.0, 0.0, **kw)
        if seed is not None and d.noise_std != 0:
            self._noise.add_(self._trainable(), seed, d.noise_std)
        lr = self._set_lr(batch, d.lr_factor)
        hooks.enabled = d.measure_next
        if isinstance(loss, Tensor):
            loss = float(loss.detach().reshape(()).item())
        return self._session.record(d, lr, None if loss is None else float(loss), keep=False)

    # ------------------------------------------------------- checkpoints ---

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to make the same decisions: the
        controller's state (estimator, batch, counters, B₀), its adjusted
        policy and LR rule, the initial lrs, the seed and the history.
        Plain Python data (no tensors; JSON-able with ``allow_nan``).

        The sampler has its own ``state_dict`` (it is not owned by the
        monitor); the model and optimizer too.
        """
        return {
            "version": _STATE_VERSION,
            "mode": self.mode,
            "loss_reduction": self.loss_reduction,
            "sampling": self.sampling,
            "dataset_size": self.dataset_size,
            **self._session.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a monitor built with the
        same mode, loss reduction, sampling and data set size. Everything is
        validated first (Go checks the controller state as a whole); a
        failed load changes nothing.

        Raises:
            ValueError: an incompatible state (mode, reduction, sampling,
                data set size or version differ).
            gdiv.ParamError: a missing, mistyped or inconsistent field (named).
        """
        self._check_state(state, _STATE_VERSION, _COMPAT_KEYS)
        self._session.load_state_dict(state, world_size=1 if self._dp is None else self._dp.world)
        self._pending = None
        for hooks in (self._norms, self._local):
            if hooks is not None:
                hooks.enabled = self.controller.measure_next
                hooks.reset()

    def __repr__(self) -> str:
        bb = self.controller.smoothed.batch_bound
        return (
            f"DiversityMonitor({type(self._model).__name__}, mode={self.mode!r}, loss_reduction={self.loss_reduction!r}, "
            f"steps={self.steps}, batch_size={self.batch_size}, batch_bound={bb:.6g})"
        )


def _lr_value(lr: Any) -> float:
    return float(lr.item()) if isinstance(lr, Tensor) else float(lr)


def _sums_of(rows: Tensor) -> Tuple[float, float]:
    """(Σ‖g_i‖², ‖Σ g_i‖²) of CPU rows, computed by Go (gdiv.stats)."""
    from .._stats import stats

    try:
        st = stats(rows)
    except (NonFiniteError, SumOverflowError):  # the controller skips (or the monitor raises) on NaN
        return math.nan, math.nan
    return st.sum_sq_norms, st.sq_norm_of_sum
