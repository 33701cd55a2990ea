"""DiversityMonitor: the batch-size bound of a PyTorch training loop, measured
every step, and the batch size (and learning rate) that follow from it.

A few lines added to an ordinary loop::

    monitor = gdiv.torch.DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(max_batch=1024))
    loader = DataLoader(ds, batch_sampler=gdiv.torch.AdaptiveBatchSampler(ds, monitor, seed=0))
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        monitor.step(loss=loss)         # estimate, decide the next batch, rescale the lr
        opt.step()

Each :meth:`DiversityMonitor.step` turns the last backward pass into the two
sums Σ‖g_i‖² and ‖Σ g_i‖² of the batch (g_i = ∇ℓ_i, the gradient of example
i's own loss), folds them into Go's ratio-of-EMAs estimator (an unbiased
M̂², Ĝ per batch), asks Go's :class:`gdiv.BatchSizePolicy` for the next
batch (B_next = δ·B̂_S + 1, limited and rounded) and, with a mean-reduced
loss, rescales the optimizer's learning rate for the batch size in use. Every
formula is Go's; this module reduces tensors and moves scalars.

Capture modes
-------------
``mode="norms"`` (default): :class:`gdiv.torch.PerExampleNorms` hooks give
‖g_i‖² without per-example gradients; the batch gradient is the ``.grad``
that backward left. Cost: the per-layer norm rules (about one extra
backward's worth of matrix products for Linear layers, see ``norms``).
Works on any device: both sums are reduced on the device and only two
float64 scalars are copied to the host (one synchronization per step); no
device memory is handed to Go.

``mode="full"``: per-example gradients are materialized (B × P, by
``torch.func``, under ``full_max_bytes``) — needed by the mechanisms that
act on each g_i separately (Dropout, Quantize). Replace ``loss.backward()``
by ``monitor.full_backward(x, y)`` (or pass ``inputs=``/``targets=`` to
``step``): it computes the rows, copies them to the CPU if needed (B × P
values), applies the mechanism there in place (Go, zero copy), and writes
their sum (or mean) into ``.grad``. Costs B × P memory and about B small
backward passes per step: for small models or diagnosis.

Loss reduction, learning rate
-----------------------------
``loss_reduction`` is how the loss you backpropagate combines the examples:
"mean" (PyTorch's default, L = (1/B) Σ ℓ_i) or "sum" (L = Σ ℓ_i). The
statistics are those of ∇ℓ_i either way (the norms are rescaled by B² for
"mean"). The paper's step is the sum-step w ← w − γ Σ g_i, which keeps the
per-example step γ fixed whatever B is. So:

* "sum": the optimizer's lr already is γ; the monitor never touches it
  (``lr_rule`` must be None or "none").
* "mean": the step is lr/B per example; when the batch changes, every param
  group's lr becomes ``policy.scale_lr(lr₀, B₀, B)`` — from the initial lr₀
  (each group's lr at the first ``step()``) and the first step's batch B₀,
  path-independent as in Go's trainer. "linear" (the default of
  :class:`gdiv.BatchSizePolicy`) keeps the sum-step's γ = lr₀/B₀; "sqrt";
  "none". The lr is set inside ``step()``, i.e. before ``optimizer.step()``,
  for the batch that is being stepped, so it always matches the batch
  actually used. An LR scheduler that sets ``lr`` is overwritten at batch
  changes: pass ``lr_rule="none"`` and multiply your schedule by
  :attr:`DiversityMonitor.lr_factor` instead (e.g. in a ``LambdaLR``).

Weight decay and penalties. The monitor measures the gradients of the
losses ℓ_i that flow through the hooked modules. A penalty added to the loss
outside the modules (``loss + λ/2·‖w‖²``) contributes to ``.grad`` but not to
the per-example norms: don't do that in norms mode (the two sums would
describe different functions). Weight decay in the optimizer
(``SGD(weight_decay=λ)``, ``AdamW``) is outside both: the monitor then
measures the diversity of the data term ℓ_i alone, not of f_i = ℓ_i + (λ/2)‖w‖²
as the paper's problems define it (the reference trainer's L2 term is in
every f_i). The decay adds the same λw to every g_i: it leaves the noise
(M² − G) unchanged and changes the signal G = ‖∇F‖², so the two bounds
differ where λ‖w‖ is comparable to ‖∇F‖. Use l2 = 0 (or a small decay) when
comparing with the reference trainer.

AMP
---
With a ``torch.amp.GradScaler`` pass ``grad_scaler=scaler`` and call
``monitor.step()`` after ``scaler.scale(loss).backward()``, before
``scaler.step(optimizer)``; calling ``scaler.unscale_(optimizer)`` before
``monitor.step()`` is fine too (the monitor sees it through the optimizer,
if given). Hooks see gradients of the scaled loss, so the per-example norms
are always divided by scale² and the batch gradient by scale² unless it was
unscaled (Go's ``BatchSumsFromScalars``). A step whose scaled gradients
overflowed (inf/NaN) is skipped (``on_nonfinite="skip"``, the default),
like the scaler skips it. Full mode does not need a scaler (it computes
gradients in the parameters' dtype itself) and refuses one.

Mechanisms (DIMs)
-----------------
``gdiv.Langevin(std)`` works in both modes. In norms mode its per-example
noise N(0, σ²I), summed over the batch, is one Gaussian of variance Bσ²
(Go's ``Langevin.SumNoiseStd``: σ√B on a sum gradient, σ/√B on a mean
gradient), drawn from a ``torch.Generator`` seeded per step and added once
to ``.grad`` on the parameters' device (times the loss scale if the grads
are still scaled); Σ‖g_i‖² gets its expectation + B·d·σ² (Go's
``ExpectedSumSqNorms``, d = trainable parameters), so M̂² is shifted by d·σ²
and Ĝ stays unbiased. ``gdiv.Dropout`` and ``gdiv.Quantize`` act on each g_i
and need ``mode="full"``. Seeds: step k uses the seed derived from
(seed, k), so a resumed run draws the same noise.

Degenerate steps
----------------
* A batch of 1: the unbiased estimate needs two examples (Ĝ divides by
  b − 1). ``step()`` warns (RuntimeWarning), records ``skipped="batch of 1"``
  and leaves the estimator and the policy unchanged; the optimizer step is
  yours to take. A policy never proposes 1: the monitor raises its
  ``min_batch`` to 2, like Go's trainer.
* NaN/Inf in the gradients (a NaN loss, AMP overflow): ``on_nonfinite="skip"``
  records ``skipped="non-finite"`` and leaves estimator and policy unchanged;
  ``"raise"`` raises :class:`gdiv.NonFiniteError` naming the step.

Sampling
--------
Lemma 1's estimator is unbiased for batches drawn with replacement; a
shuffled epoch (without replacement) needs the finite-population correction.
``dataset_size=n`` selects the latter by default (``sampling="shuffle"``)
and reports ``diversity = B̂_S/n``; ``sampling="replacement"`` with
``dataset_size`` keeps Lemma 1's estimator and still reports the diversity.
Match it to the sampler (``AdaptiveBatchSampler(replacement=...)``).

Keep a reference to the monitor: its hooks hold it only weakly, and
dropping it removes them.

Forked DataLoader workers never call gdiv (the monitor and the sampler run in
the main process), so the default fork start method is fine.

Not supported: gradient accumulation over several backward passes per
``step()`` (norms describe one backward), DDP (each rank would estimate on
its local batch; all-reduce the sums yourself and use
:class:`gdiv.Estimator`), sparse ``.grad`` in full mode.
"""

from __future__ import annotations

import math
import secrets
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import NonFiniteError, SumOverflowError
from ..estimator import Estimator, batch_sums_from_scalars
from ..mechanisms import Dropout, Langevin, Mechanism, Quantize
from ..policy import LR_RULES, BatchSizePolicy
from .capture import PerExampleNorms
from .errors import CaptureError
from .full import per_example_grads, trainable_parameters

__all__ = ["DiversityMonitor", "RECORD_FIELDS"]

RECORD_FIELDS: Tuple[str, ...] = (
    "step",
    "examples",
    "batch",
    "next_batch",
    "lr",
    "loss",
    "sum_sq_norms",
    "sq_norm_of_sum",
    "m2",
    "g",
    "batch_bound",
    "diversity",
    "noise_scale",
    "no_signal",
    "skipped",
)
"""The keys of each record that :meth:`DiversityMonitor.step` returns."""

_WRITER_KEYS = ("batch", "lr", "loss", "m2", "g", "batch_bound", "diversity", "noise_scale")
_STATE_VERSION = 1


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise ValueError(f"DiversityMonitor: {name} must be an integer ≥ {lo}, got {v!r}")
    return int(v)


def _step_seed(base: int, step: int) -> int:
    """The seed of step k's mechanism draws: a deterministic function of
    (base seed, k), so that a resumed run draws the same noise."""
    return int(np.random.SeedSequence(entropy=base, spawn_key=(step,)).generate_state(1, np.uint64)[0])


def _initial_batch(policy: BatchSizePolicy, batch: int) -> int:
    """Go's legalization of ``batch`` under the policy (clamped to
    [min_batch, max_batch], rounded to a multiple): ``Next`` during the
    warm-up returns exactly that."""
    return policy.replace(warmup=1).next(batch, math.inf, 0)


class DiversityMonitor:
    """Measure the gradient diversity of a PyTorch training loop and adapt the
    batch size (and learning rate) to it.

    Args:
        model: the model (an ``nn.Module``). In norms mode it is hooked (see
            :class:`gdiv.torch.PerExampleNorms`); the hooks capture only in
            train mode.
        loss_reduction: "mean" or "sum": how the backpropagated loss
            combines the examples (see the module doc for the lr rule).
        mode: "norms" (per-example norms from hooks) or "full" (per-example
            gradients; needs ``loss_fn``).
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
        on_nonfinite: "skip" or "raise" (see the module doc).
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

    Raises:
        ValueError: bad or inconsistent options (each named).
        TypeError: a model that is not an ``nn.Module``, a policy or
            mechanism of the wrong type.

    Attributes:
        history: the list of step records (dicts with :data:`RECORD_FIELDS`).
        estimator: the :class:`gdiv.Estimator`.
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"DiversityMonitor: model must be an nn.Module, got {type(model).__name__}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"DiversityMonitor: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if mode not in ("norms", "full"):
            raise ValueError(f"DiversityMonitor: mode must be 'norms' or 'full', got {mode!r}")
        if on_nonfinite not in ("skip", "raise"):
            raise ValueError(f"DiversityMonitor: on_nonfinite must be 'skip' or 'raise', got {on_nonfinite!r}")
        if mechanism is not None and not isinstance(mechanism, Mechanism):
            raise TypeError(f"DiversityMonitor: mechanism must be gdiv.Dropout, gdiv.Langevin, gdiv.Quantize or None, got {type(mechanism).__name__}")
        if mode == "norms" and isinstance(mechanism, (Dropout, Quantize)):
            raise ValueError(
                f"DiversityMonitor: {type(mechanism).__name__} acts on each per-example gradient separately, which "
                "norms mode never forms: use mode='full' (with loss_fn; materializes B × P gradients), or "
                "gdiv.Langevin, which works in norms mode"
            )
        if mode == "full":
            if loss_fn is None:
                raise ValueError("DiversityMonitor: mode='full' needs loss_fn(output, target) -> scalar (per example)")
            if grad_scaler is not None:
                raise ValueError(
                    "DiversityMonitor: grad_scaler is for norms mode; full mode computes per-example gradients "
                    "itself in the parameters' dtype (no loss scaling to undo)"
                )
            if not (isinstance(full_max_bytes, int) and full_max_bytes > 0):
                raise ValueError(f"DiversityMonitor: full_max_bytes must be a positive int, got {full_max_bytes!r}")
        elif loss_fn is not None:
            raise ValueError("DiversityMonitor: loss_fn is for mode='full'; norms mode reads the gradients of your backward")
        if policy is not None and not isinstance(policy, BatchSizePolicy):
            raise TypeError(f"DiversityMonitor: policy must be a gdiv.BatchSizePolicy or None, got {type(policy).__name__}")
        if optimizer is not None and not hasattr(optimizer, "param_groups"):
            raise TypeError(f"DiversityMonitor: optimizer must be a torch optimizer (with param_groups), got {type(optimizer).__name__}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"DiversityMonitor: writer must have add_scalar(tag, value, global_step), got {type(writer).__name__}")
        if grad_scaler is not None and not callable(getattr(grad_scaler, "get_scale", None)):
            raise TypeError(f"DiversityMonitor: grad_scaler must have get_scale() (a torch.amp.GradScaler), got {type(grad_scaler).__name__}")

        n = None if dataset_size is None else _check_int("dataset_size", dataset_size, 1)
        if sampling is None:
            sampling = "replacement" if n is None else "shuffle"
        if sampling not in ("replacement", "shuffle"):
            raise ValueError(f"DiversityMonitor: sampling must be 'replacement' or 'shuffle', got {sampling!r}")
        if sampling == "shuffle" and n is None:
            raise ValueError("DiversityMonitor: sampling='shuffle' (without replacement) needs dataset_size=n")

        # The LR rule: a property of the mean-reduced step only.
        if lr_rule is not None and (not isinstance(lr_rule, str) or lr_rule not in LR_RULES):
            raise ValueError(f"DiversityMonitor: lr_rule must be one of {LR_RULES} or None, got {lr_rule!r}")
        if loss_reduction == "sum":
            if lr_rule not in (None, "none"):
                raise ValueError(
                    f"DiversityMonitor: lr_rule={lr_rule!r} with loss_reduction='sum': the sum step w − lr·Σg_i "
                    "already keeps the per-example step fixed at every batch size (the paper's step); leave "
                    "lr_rule=None"
                )
            lr_rule = "none"
        elif lr_rule is None:
            lr_rule = policy.lr_rule if policy is not None else "none"

        # The policy, adjusted as Go's trainer adjusts it.
        if policy is not None:
            if policy.min_batch < 2:
                policy = policy.replace(min_batch=2)
            if n is not None and policy.max_batch is None:
                policy = policy.replace(max_batch=max(n, policy.min_batch))
            if sampling == "shuffle" and policy.max_batch is not None and policy.max_batch > n:
                raise ValueError(
                    f"DiversityMonitor: policy max_batch = {policy.max_batch} exceeds dataset_size = {n}, which "
                    "sampling without replacement cannot draw"
                )
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1)
            if policy is not None and _initial_batch(policy, batch_size) != batch_size:
                raise ValueError(
                    f"DiversityMonitor: batch_size = {batch_size} is not allowed by the policy (a multiple of "
                    f"{policy.multiple_of} in [{policy.min_batch}, {policy.max_batch}]); "
                    f"the nearest allowed is {_initial_batch(policy, batch_size)}"
                )
        elif policy is not None:
            batch_size = _initial_batch(policy, policy.min_batch)

        if seed is None:
            seed = secrets.randbits(64)
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
            raise ValueError(f"DiversityMonitor: seed must be an integer in [0, 2**64) or None, got {seed!r}")

        self._model = model
        self.loss_reduction = loss_reduction
        self.mode = mode
        self.mechanism = mechanism
        self.policy = policy
        self.optimizer = optimizer
        self.lr_rule = lr_rule
        self.dataset_size = n
        self.sampling = sampling
        self.on_nonfinite = on_nonfinite
        self.grad_scaler = grad_scaler
        self.writer = writer
        self.full_max_bytes = full_max_bytes
        self.loss_fn = loss_fn
        self.seed = int(seed)
        self.estimator = Estimator(estimator_beta, dataset_size=n if sampling == "shuffle" else None)
        self.history: List[Dict[str, Any]] = []
        self._batch = batch_size
        self._step = 0
        self._examples = 0
        self._decisions = 0
        self._base_lrs: Optional[List[float]] = None
        self._first_batch: Optional[int] = None
        self._lr_batch: Optional[int] = None
        self._force_lr = False
        self._pending: Optional[Tuple[Tensor, int, Optional[float]]] = None
        self._generators: Dict[str, torch.Generator] = {}
        self._norms = (
            PerExampleNorms(model, loss_reduction=loss_reduction, batch_dim=batch_dim, fuse_conv=fuse_conv, attach=attach)
            if mode == "norms"
            else None
        )

    # ------------------------------------------------------------ hooks ---

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def attached(self) -> bool:
        """Whether the hooks are attached (always False in full mode, which has none)."""
        return self._norms is not None and self._norms.attached

    def attach(self) -> "DiversityMonitor":
        """Attach the hooks (norms mode). Idempotent."""
        if self._norms is not None:
            self._norms.attach()
        return self

    def remove(self) -> None:
        """Remove every hook the monitor added. Safe to call twice."""
        if self._norms is not None:
            self._norms.remove()

    def __enter__(self) -> "DiversityMonitor":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # --------------------------------------------------------- decisions ---

    @property
    def batch_size(self) -> Optional[int]:
        """The batch size to use next: the policy's latest decision (the
        initial batch before the first step); without a policy, the initial
        ``batch_size`` or the last step's batch."""
        return self._batch

    @property
    def steps(self) -> int:
        """The number of ``step()`` calls so far (skipped ones included)."""
        return self._step

    @property
    def examples(self) -> int:
        """Per-example gradients so far: the sum of the batches of all steps."""
        return self._examples

    @property
    def lr_factor(self) -> float:
        """``scale_lr(1, B₀, B)`` under ``lr_rule`` for the batch B of the
        latest step (B₀ = the first step's batch; 1.0 before the first step
        and for a sum-reduced loss). For loops that set the lr themselves
        (an LR scheduler): pass no ``optimizer`` — the monitor then leaves
        ``param_groups`` alone — and multiply your schedule by this factor."""
        if self._first_batch is None or self._lr_batch is None or self.lr_rule == "none":
            return 1.0
        return BatchSizePolicy(lr_rule=self.lr_rule).scale_lr(1.0, self._first_batch, self._lr_batch)

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
            raise CaptureError(
                "DiversityMonitor: the model is in eval mode; the monitor measures training steps only "
                "(call model.train() first)"
            )
        xs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
        grads = per_example_grads(self._model, self.loss_fn, xs, targets, max_bytes=self.full_max_bytes)
        batch = grads.shape[0]
        rows = grads.detach().to("cpu").contiguous()
        if self.mechanism is not None:
            self.mechanism.apply_(rows, seed=_step_seed(self.seed, self._step + 1))
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
        with torch.no_grad():
            out = self._model(*xs)
            loss = self.loss_fn(out) if targets is None else self.loss_fn(out, targets)
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

    def _generator(self, device: torch.device, seed: int) -> torch.Generator:
        key = str(device)
        g = self._generators.get(key)
        if g is None:
            g = torch.Generator(device=device)
            self._generators[key] = g
        g.manual_seed(seed)
        return g

    def _set_lr(self, batch: int) -> Optional[float]:
        """Apply the LR rule for the batch being stepped; return group 0's lr."""
        if self._first_batch is None:
            self._first_batch = batch
        opt = self.optimizer
        if opt is not None and self._base_lrs is None:
            self._base_lrs = [float(g["lr"]) for g in opt.param_groups]
        changed = (batch != self._lr_batch and self._lr_batch is not None) or self._force_lr
        self._force_lr = False  # after load_state_dict: set the lr once, whatever the optimizer holds
        self._lr_batch = batch
        if opt is None:
            return None
        if changed and self.lr_rule != "none":
            if len(self._base_lrs) != len(opt.param_groups):
                raise ValueError(
                    f"DiversityMonitor: the optimizer had {len(self._base_lrs)} param groups at the first step and has "
                    f"{len(opt.param_groups)} now; the lr rule rescales each group's initial lr"
                )
            rule = BatchSizePolicy(lr_rule=self.lr_rule)
            for g, lr0 in zip(opt.param_groups, self._base_lrs):
                g["lr"] = rule.scale_lr(lr0, self._first_batch, batch)
        lr = opt.param_groups[0]["lr"]
        return float(lr.item()) if isinstance(lr, Tensor) else float(lr)

    def _norms_sums(self, step: int) -> Tuple[int, Tensor, float, float]:
        """Read the captured norms, add Langevin noise, reduce on the device.
        Returns (batch, the two device sums as a (2,) float64 CPU tensor,
        norms scale, grad scale)."""
        assert self._norms is not None
        try:
            sq = self._norms.sq_norms()
        finally:
            self._norms.reset()  # one step per backward: a second step() is an error
        batch = int(sq.shape[0])
        s_norm, s_grad = self._grad_scale()
        params = [p for _, p in trainable_parameters(self._model)]
        if isinstance(self.mechanism, Langevin) and self.mechanism.std > 0:
            std = self.mechanism.sum_noise_std(batch, reduction=self.loss_reduction) * s_grad
            seed = _step_seed(self.seed, step)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if p.grad.is_sparse:
                    raise CaptureError(
                        "DiversityMonitor: Langevin noise on sparse gradients (nn.Embedding(sparse=True)) is not "
                        "supported: the noise is dense; use sparse=False"
                    )
                gen = self._generator(p.grad.device, seed)
                noise = torch.randn(p.grad.shape, generator=gen, device=p.grad.device, dtype=p.grad.dtype)
                p.grad.add_(noise, alpha=std)
        sums = _device_sums(sq, params)
        return batch, sums.to("cpu"), s_norm, s_grad

    def step(
        self,
        *,
        loss: Optional[Union[Tensor, float]] = None,
        inputs: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        targets: Optional[Tensor] = None,
    ) -> Dict[str, Any]:
        """Fold the last backward pass into the estimate and decide the next batch.

        Call it after ``loss.backward()`` (norms mode) or
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
            the mechanism), m2, g, batch_bound, noise_scale, no_signal (the
            smoothed estimate after the step; batch_bound = +inf with
            no_signal), diversity (batch_bound/n, None without
            dataset_size), skipped (None, "non-finite" or "batch of 1").

        Raises:
            CaptureError: nothing captured since the last step, the last
                backward ran in eval mode (``model.eval()``), or other
                capture problems (see ``PerExampleNorms.sq_norms``).
            gdiv.NonFiniteError: NaN/Inf gradients with on_nonfinite="raise".
        """
        k = self._step + 1
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
        else:
            if inputs is not None or targets is not None:
                raise ValueError("DiversityMonitor.step: inputs/targets are for mode='full'")
            batch, sums, s_norm, s_grad = self._norms_sums(k)
        if isinstance(loss, Tensor):
            loss = float(loss.detach().reshape(()).item())
        elif loss is not None:
            loss = float(loss)

        self._step = k
        self._examples += batch
        lr = self._set_lr(batch)
        skipped: Optional[str] = None
        sum_sq = sq_sum = math.nan
        try:
            if batch < 2:
                skipped = "batch of 1"
            elif self.mode == "full":
                sum_sq, sq_sum = _sums_of(rows)  # one Go pass over the rows, in place
                self.estimator.update(batch_size=batch, sum_sq_norms=sum_sq, sq_norm_of_sum=sq_sum)
            else:
                s1, s2 = sums.tolist()
                sum_sq, sq_sum = batch_sums_from_scalars(
                    batch, s1, s2, reduction=self.loss_reduction, norms_scale=s_norm, grad_scale=s_grad
                )
                if isinstance(self.mechanism, Langevin):  # the noise's expected share of Σ‖g_i + ξ_i‖²
                    dim = sum(p.numel() for _, p in trainable_parameters(self._model))
                    sum_sq = self.mechanism.expected_sum_sq_norms(sum_sq, batch, dim)
                self.estimator.update(batch_size=batch, sum_sq_norms=sum_sq, sq_norm_of_sum=sq_sum)
        except (NonFiniteError, SumOverflowError) as e:
            if self.on_nonfinite == "raise":
                raise NonFiniteError(
                    f"gdiv.torch: step {k}: non-finite gradients (a NaN/Inf loss or overflowed gradients): {e}. "
                    "Lower the learning rate, or pass on_nonfinite='skip' to skip such steps."
                ) from None
            skipped = "non-finite"
        if skipped == "batch of 1":
            warnings.warn(
                f"gdiv.torch: step {k} has a batch of 1 example; the unbiased estimate needs at least 2 "
                "(signal and noise cannot be separated), so this step is not estimated and the policy makes no "
                "decision. Use DataLoader(drop_last=True) or gdiv.torch.AdaptiveBatchSampler.",
                RuntimeWarning,
                stacklevel=2,
            )

        if skipped is None and self.policy is not None:
            self._batch = self.policy.next(batch, self.estimator.smoothed, self._decisions)
            self._decisions += 1
        elif self.policy is None:
            self._batch = batch
        sm = self.estimator.smoothed
        rec: Dict[str, Any] = {
            "step": k,
            "examples": self._examples,
            "batch": batch,
            "next_batch": self._batch,
            "lr": lr,
            "loss": loss,
            "sum_sq_norms": sum_sq,
            "sq_norm_of_sum": sq_sum,
            "m2": sm.m2,
            "g": sm.g,
            "batch_bound": sm.batch_bound,
            "diversity": None if self.dataset_size is None else sm.batch_bound / self.dataset_size,
            "noise_scale": sm.noise_scale,
            "no_signal": bool(sm.no_signal),
            "skipped": skipped,
        }
        self.history.append(rec)
        if self.writer is not None:
            for key in _WRITER_KEYS:
                v = rec[key]
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(f"gdiv/{key}", v, k)
            self.writer.add_scalar("gdiv/skipped", 0.0 if skipped is None else 1.0, k)
        return rec

    # ------------------------------------------------------- checkpoints ---

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to make the same decisions: the
        estimator state, the (adjusted) policy, the current batch, the
        step/example/decision counters, the initial lrs and batch of the LR
        rule, the seed and the history. Plain Python data (no tensors).

        The sampler has its own ``state_dict`` (it is not owned by the
        monitor); the model and optimizer too.
        """
        return {
            "version": _STATE_VERSION,
            "mode": self.mode,
            "loss_reduction": self.loss_reduction,
            "sampling": self.sampling,
            "dataset_size": self.dataset_size,
            "lr_rule": self.lr_rule,
            "estimator": self.estimator.state_dict(),
            "policy": None if self.policy is None else self.policy.state_dict(),
            "batch_size": self._batch,
            "step": self._step,
            "examples": self._examples,
            "decisions": self._decisions,
            "base_lrs": None if self._base_lrs is None else list(self._base_lrs),
            "first_batch": self._first_batch,
            "lr_batch": self._lr_batch,
            "seed": self.seed,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a monitor built with the
        same mode, loss reduction and sampling.

        Raises:
            ValueError: an incompatible state (mode, reduction, sampling,
                data set size or version differ).
            KeyError: a missing key. gdiv.ParamError: a bad estimator state.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"DiversityMonitor.load_state_dict: state version {state.get('version')!r}, want {_STATE_VERSION}")
        for key in ("mode", "loss_reduction", "sampling", "dataset_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"DiversityMonitor.load_state_dict: the state has {key}={state[key]!r} but this monitor "
                    f"{key}={getattr(self, key)!r}; build the monitor with the same settings"
                )
        self.estimator.load_state_dict(state["estimator"])
        self.policy = None if state["policy"] is None else BatchSizePolicy(**state["policy"])
        self.lr_rule = state["lr_rule"]
        self._batch = state["batch_size"]
        self._step = int(state["step"])
        self._examples = int(state["examples"])
        self._decisions = int(state["decisions"])
        self._base_lrs = None if state["base_lrs"] is None else [float(x) for x in state["base_lrs"]]
        self._first_batch = state["first_batch"]
        self._lr_batch = state["lr_batch"]
        self._force_lr = self._base_lrs is not None
        self.seed = int(state["seed"])
        self.history = [dict(r) for r in state["history"]]
        self._pending = None

    def __repr__(self) -> str:
        bb = self.estimator.smoothed.batch_bound
        return (
            f"DiversityMonitor({type(self._model).__name__}, mode={self.mode!r}, loss_reduction={self.loss_reduction!r}, "
            f"steps={self._step}, batch_size={self._batch}, batch_bound={bb:.6g})"
        )


def _device_sums(sq_norms: Tensor, params: Sequence[Tensor]) -> Tensor:
    """[Σ_i sq_norms[i], Σ_params ‖p.grad‖²] as a (2,) float64 tensor on the
    device of ``sq_norms``: reductions only, nothing leaves the device."""
    dev = sq_norms.device
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            g = g.coalesce()._values()
        total = total + g.detach().to(torch.float64).square().sum().to(dev)
    return torch.stack([sq_norms.to(torch.float64).sum(), total])


def _sums_of(rows: Tensor) -> Tuple[float, float]:
    """(Σ‖g_i‖², ‖Σ g_i‖²) of CPU rows, computed by Go (gdiv.stats)."""
    from .._stats import stats

    st = stats(rows)
    return st.sum_sq_norms, st.sq_norm_of_sum
