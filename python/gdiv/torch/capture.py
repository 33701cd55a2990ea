"""Norms mode: :class:`PerExampleNorms`, per-example squared gradient norms from
hooks. It hooks the model's units, keeps each call's inputs and output
gradients, and hands them to the per-layer rules (``rules``), the fused
convolutions (``rules.fused_conv``) or the ``torch.func`` fallback
(``fallback``). How, and what is refused: python/README.md, "Per-example
norms in PyTorch"."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ._audit import UseAudit
from ._hooks import _in_backward, _OutputGradHook, _suspended, _WeakHook
from ._units import (
    _compute_dtype,
    _detach,
    _display,
    _is_batch_norm,
    _Record,
    _Unit,
    _uses_batch_stats,
    bad_rule_output,
    find_units,
    param_changes,
    param_slots,
    trainable_parameters,
)
from .errors import CaptureError, UnsupportedModuleError, batch_norm_message
from .fallback import fallback_norms, vmap_grads
from .rules import SEQUENCE_METHODS, RuleContext, fused_conv
from .rules._common import row_sq_norms64
from .rules.conv import _conv_rule, conv_method, conv_norms_and_grads

__all__ = ["PerExampleNorms"]

_LOSS_REDUCTIONS = ("mean", "sum")


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


class PerExampleNorms:
    """Per-example squared gradient norms ‖∇_θ ℓ_i‖² of a PyTorch model, from hooks.

    Args:
        model: the model; hooks go on its units (python/README.md, "Units and hooks"). The
            model's own ``training`` flag decides capture: in eval mode the
            hooks do nothing.
        loss_reduction: "mean" if the loss you call ``backward`` on is the mean
            of the per-example losses (PyTorch's default), "sum" if it is their
            sum. With "mean", squared norms are multiplied by B² so that they
            are those of ∇ℓ_i (python/README.md, "Loss reduction and rescaling").
        batch_dim: the example dimension of every layer input and output
            (1 for sequence-first models). Rules see the batch moved to dim 0.
        fallback: use the ``torch.func`` fallback for units without a rule.
            False: raise at construction, naming every such unit.
        sequence_method: for Linear on sequences and convolutions, "gram",
            "materialize" or "auto" (fewer flops; python/README.md, "Formulas").
        workspace_bytes: soft cap on temporary memory per layer computation;
            the batch is processed in chunks (of at least one example) below it.
        fuse_conv: plain ``Conv1d/2d/3d`` layers compute their batch weight
            and bias gradients as the sums of the per-example gradients their
            norms need, instead of computing them a second time (see
            ``gdiv.torch.rules.fused_conv``: their class is swapped for a subclass
            while attached; ``.grad`` equal to rounding). False: leave the
            modules alone (slower on conv models).
        attach: attach the hooks now (default). See :meth:`attach`.

    Raises:
        ValueError: bad arguments.
        UnsupportedModuleError: ``fallback=False`` and a unit has no rule.

    Example:
        >>> norms = PerExampleNorms(model, loss_reduction="mean")
        >>> loss = F.cross_entropy(model(x), y)      # mean over the batch
        >>> loss.backward()
        >>> sq = norms.sq_norms()                      # (B,) float64: ‖∇ℓ_i‖²
        >>> norms.remove()

        or ``with PerExampleNorms(model) as norms: ...`` (removed on exit).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_reduction: str = "mean",
        batch_dim: int = 0,
        fallback: bool = True,
        sequence_method: str = "auto",
        workspace_bytes: int = 256 << 20,
        fuse_conv: bool = True,
        attach: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"PerExampleNorms: model must be an nn.Module, got {type(model).__name__}")
        if loss_reduction not in _LOSS_REDUCTIONS:
            raise ValueError(f"PerExampleNorms: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if not isinstance(batch_dim, int) or isinstance(batch_dim, bool) or batch_dim < 0:
            raise ValueError(f"PerExampleNorms: batch_dim must be a non-negative int, got {batch_dim!r}")
        if sequence_method not in SEQUENCE_METHODS:
            raise ValueError(f"PerExampleNorms: sequence_method must be one of {SEQUENCE_METHODS}, got {sequence_method!r}")
        if not (isinstance(workspace_bytes, int) and workspace_bytes > 0):
            raise ValueError(f"PerExampleNorms: workspace_bytes must be a positive int, got {workspace_bytes!r}")
        if not isinstance(fuse_conv, bool):
            raise ValueError(f"PerExampleNorms: fuse_conv must be a bool, got {fuse_conv!r}")
        self._model = model
        self.loss_reduction = loss_reduction
        self.batch_dim = batch_dim
        self.fallback = fallback
        self.sequence_method = sequence_method
        self.workspace_bytes = workspace_bytes
        self.fuse_conv = fuse_conv
        self._handles: List[Any] = []
        self._units: List[_Unit] = []
        self._param_names: Dict[int, str] = {}
        self._trainable: frozenset = frozenset()
        self._param_slots: List[Tuple[str, Dict[str, Any], Tuple[Tuple[str, Any, bool], ...]]] = []
        self._attached = False
        self._generation = 0
        self._replaced = 0  # captures replaced by a later forward since the last reset()
        self._audit: Optional[UseAudit] = None  # the use audit of the first forward after attach()
        self._audit_pending = False
        self._audit_problem: Optional[str] = None
        self._root_depth = 0
        # Inert (unmeasured steps of a monitor's cadence): the hooks return at
        # a flag check; the root's pre-hook only notes the batch size.
        self.enabled = True
        self._inert_batch: Optional[int] = None
        self._inert_forwards = 0
        # Gradient accumulation (set by a monitor): a forward after a
        # backward keeps the finished capture's norms as a micro-batch
        # instead of dropping them; _raw_sq_norms() concatenates.
        self.accumulate = False
        self._micro: List[Tensor] = []
        self._micro_error: Optional[BaseException] = None
        self._reset_capture()
        self._last_backward: Optional[str] = None  # "train" | "eval" | None
        if attach:
            self.attach()

    # ------------------------------------------------------------ hooks ---

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def units(self) -> Dict[str, str]:
        """{qualified name: how it is handled} for every hooked unit:
        "rule", "fallback", or "materialized" (shared parameters)."""
        out = {}
        for u in self._units:
            out[_display(u.name)] = "materialized" if u.tied else ("rule" if u.rule is not None else "fallback")
        return out

    def attach(self) -> "PerExampleNorms":
        """Attach the hooks. Idempotent: a second call does nothing (no hook is
        added twice). After :meth:`remove`, attaches again from scratch."""
        if self._attached:
            return self
        units = find_units(self._model)
        if not self.fallback:
            missing = [u.label for u in units if u.rule is None]
            if missing:
                raise UnsupportedModuleError(
                    "gdiv.torch: fallback=False and no per-example norm rule for: "
                    + ", ".join(missing)
                    + ". Register one with @register_norm_rule(ModuleType), or pass fallback=True "
                    "(torch.func; materializes that module's per-example gradients)."
                )
        for u in units:
            if u.subtree and u.name == "":
                warnings.warn(
                    f"gdiv.torch: the model ({type(self._model).__name__}) owns parameters directly "
                    f"({', '.join(n for n in u.module._parameters if u.module._parameters[n] is not None)}), "
                    "so the whole model is one unit for the torch.func fallback, which materializes "
                    "per-example gradients of every parameter (B × P). Move those parameters into a "
                    "submodule to keep the per-layer rules.",
                    stacklevel=3,
                )
        handles = []
        for u in units:
            # prepend: before hooks registered earlier, which may replace the
            # output; the rule needs the gradient of the layer's own output
            handles.append(u.module.register_forward_hook(_WeakHook(self, "_forward_hook", u), with_kwargs=True, prepend=True))
        for name, m in self._model.named_modules():
            if _is_batch_norm(m):
                handles.append(m.register_forward_pre_hook(_WeakHook(self, "_batch_norm_check", name)))
        # The root's hooks run the use audit on the first train-mode forward.
        handles.append(self._model.register_forward_pre_hook(_WeakHook(self, "_root_pre"), prepend=True, with_kwargs=True))
        handles.append(self._model.register_forward_hook(_WeakHook(self, "_root_post"), always_call=True))
        if hasattr(Tensor, "register_post_accumulate_grad_hook"):
            for _, p in trainable_parameters(self._model):
                handles.append(p.register_post_accumulate_grad_hook(_WeakHook(self, "_param_hook")))
        if self.fuse_conv and self.batch_dim == 0:
            for u in units:
                if u.rule is _conv_rule and not (u.tied or u.subtree):
                    u.fused = fused_conv.bind(u.module, self)
        self._units = units
        self._handles = handles
        self._param_names = {id(p): n for n, p in self._model.named_parameters()}
        self._trainable = frozenset(id(p) for _, p in trainable_parameters(self._model))
        self._param_slots = param_slots(self._model)
        self._attached = True
        self._audit_pending, self._audit_problem, self._root_depth = True, None, 0
        self._generation += 1
        self._reset_capture()
        return self

    def _root_pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._root_depth += 1
        if not self.enabled:
            if self._root_depth == 1 and self._model.training and torch.is_grad_enabled():
                self._inert_forwards += 1
                bd = self.batch_dim
                x = args[0] if args and isinstance(args[0], Tensor) else None
                if x is None or x.dim() <= bd:
                    x = next((t for t in pytree.tree_flatten((args, kwargs))[0] if isinstance(t, Tensor) and t.dim() > bd), None)
                b = None if x is None else int(x.shape[bd])
                if self.accumulate and self._inert_forwards > 1:  # micro-batches add up
                    self._inert_batch = None if b is None or self._inert_batch is None else self._inert_batch + b
                else:
                    self._inert_batch = b
            return None
        if (
            self._root_depth == 1
            and self._audit_pending
            and self._model.training
            and torch.is_grad_enabled()
            and not _suspended()
            and not _in_backward()
            and not torch.jit.is_tracing()
            and not _compiling()
        ):
            audit = UseAudit([(u.module, u.plist) for u in self._units], self._param_names)
            if any(u.module is module for u in self._units):
                audit.running[id(module)] = 1  # the root's own pre-hook added now does not run this call
            audit.start()
            self._audit = audit

    def _take_inert_batch(self) -> Tuple[Optional[int], int]:
        """(the batch of the last inert train-mode forward, the number of
        such forwards) since the last call; both reset."""
        out = (self._inert_batch, self._inert_forwards)
        self._inert_batch, self._inert_forwards = None, 0
        return out

    def _root_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._root_depth = max(self._root_depth - 1, 0)
        if self._root_depth == 0 and self._audit is not None:
            audit, self._audit = self._audit, None
            self._audit_pending = False
            self._audit_problem = audit.stop()

    def _stop_audit(self) -> None:
        if self._audit is not None:
            self._audit.stop()
            self._audit = None

    def remove(self) -> None:
        """Remove every hook this object added. Safe to call twice. Norms of the
        last capture are discarded; a backward still in flight is ignored."""
        self._stop_audit()
        for h in self._handles:
            h.remove()
        for u in self._units:
            if u.fused:
                fused_conv.unbind(u.module, self)
                u.fused = False
        self._handles = []
        self._units = []
        self._attached = False
        self._generation += 1
        self._reset_capture()
        self._last_backward = None

    def __enter__(self) -> "PerExampleNorms":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __del__(self) -> None:  # the hooks hold only a weak reference to self
        try:
            for h in self._handles:
                h.remove()
            for u in self._units:
                if u.fused:
                    fused_conv.unbind(u.module)
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return (
            f"PerExampleNorms({type(self._model).__name__}, loss_reduction={self.loss_reduction!r}, "
            f"batch_dim={self.batch_dim}, units={len(self._units)}, attached={self._attached})"
        )

    def _reset_capture(self) -> None:
        self._records: List[_Record] = []
        self._calls: Dict[int, int] = {}  # id(unit) -> calls in this capture
        self._layer: Dict[str, Tensor] = {}  # unit name -> (B,) float64
        self._acc: Dict[int, Tuple[str, Tensor]] = {}  # id(param) -> (label, (B, *shape))
        self._batch: Optional[int] = None
        self._batch_from = ""
        self._seen_params: set = set()  # id(p): units whose outputs got gradients
        self._grad_params: set = set()  # id(p): received .grad in this capture's backward
        self._problems: List[str] = []
        self._backward_seen = False
        self._result: Optional[Tuple[Tensor, Dict[str, Tensor], float]] = None

    def _batch_norm_check(self, name: str, module: nn.Module, args: Any) -> None:
        if not self.enabled or _suspended() or not torch.is_grad_enabled() or not self._model.training:
            return
        if _uses_batch_stats(module):
            raise UnsupportedModuleError(batch_norm_message(module, _display(name)))

    def _forward_hook(self, unit: _Unit, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not self.enabled or not torch.is_grad_enabled() or _suspended():
            return
        # Fast paths (one tensor output; one positional tensor input, no
        # kwargs: every rule-handled layer) skip the pytree walks.
        if isinstance(output, Tensor):
            if not output.requires_grad:
                return
            outs, index = [output], [0]
        else:
            outs, _ = pytree.tree_flatten(output)
            index = [j for j, t in enumerate(outs) if isinstance(t, Tensor) and t.requires_grad]
            if not index:
                return
        if not self._model.training:
            # No capture; only remember that a backward went through an
            # eval-mode graph, to refuse norms that would be stale.
            outs[index[0]].register_hook(self._eval_grad_hook)
            return
        if _in_backward():
            raise UnsupportedModuleError(
                f"gdiv.torch: module {unit.label} ran its forward inside a backward pass (activation "
                "checkpointing, torch.utils.checkpoint, recomputes forwards during backward); "
                "PerExampleNorms does not support recomputed forwards: disable checkpointing for "
                "the steps whose norms you read, or remove the hooks"
            )
        if self._backward_seen:  # first forward after a backward: a new capture
            if self.accumulate:
                self._stash_micro_batch()
            self._generation += 1
            self._reset_capture()
            self._replaced += 1
        bd = self.batch_dim
        if not kwargs and len(args) == 1 and isinstance(args[0], Tensor) and args[0].dim() > bd:
            x = args[0]
            batch = x.shape[bd]
            rec = _Record(unit, self._generation, (x.detach(),), {}, index, batch)
        else:
            tensors = [t for t in pytree.tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
            batched = [t for t in tensors if t.dim() > bd]
            if not batched:
                raise UnsupportedModuleError(
                    f"gdiv.torch: module {unit.label} was called without a tensor input with a batch "
                    f"dimension (batch_dim={bd}); per-example norms need one"
                )
            batch = batched[0].shape[bd]
            rec = _Record(
                unit,
                self._generation,
                tuple(pytree.tree_map(_detach, list(args))),
                pytree.tree_map(_detach, dict(kwargs)),
                index,
                batch,
            )
        self._records.append(rec)
        calls = self._calls
        calls[id(unit)] = calls.get(id(unit), 0) + 1
        if unit.fused and type(output.grad_fn) is fused_conv.FUSED_NODE:
            # The fused convolution's backward delivers the output gradient
            # (and takes the batch weight gradient from the norms' by-product).
            output.grad_fn.sink = _WeakHook(self, "_fused_backward", rec)
            return
        for slot, j in enumerate(index):
            out = outs[j]
            node = out.grad_fn
            if node is None:  # a leaf that requires grad
                out.register_hook(functools.partial(self._grad_hook, rec, slot))
            else:
                # A pre-hook on the node that made the output: called with the
                # gradient the node receives (after the output's own tensor
                # hooks, as fused convolutions do), and about half the cost of
                # registering a tensor hook (1 vs 2 µs in a loop).
                node.register_prehook(_OutputGradHook(self, rec, slot, out.output_nr))

    def _fusing(self) -> bool:
        """Whether a fused convolution's forward should run the fused Function
        now (see ``rules.fused_conv``): the forward hooks will capture this call."""
        return self._attached and self.enabled and self._model.training and torch.is_grad_enabled() and not _suspended() and not _in_backward()

    def _fused_backward(self, rec: _Record, x: Tensor, g: Tensor, geom: Any, need_bias: bool) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """The sink of a fused convolution's backward node: the call's norms
        and its batch (weight, bias) gradients as the sums of the per-example
        gradients; or None, after handing ``g`` to the ordinary hook path,
        when fusing does not apply (see ``rules.fused_conv``), and then the node
        computes the gradients itself."""
        unit = rec.unit
        if rec.generation != self._generation or not self._attached:
            return None  # a stale graph: no capture
        dtype = g.dtype
        ctx = self._context(unit, dtype) if dtype is x.dtype else None
        bias = "bias" in unit.param_names
        if (
            ctx is None
            or rec.batch == 0
            or torch.is_grad_enabled()  # create_graph=True: differentiable formulas
            or rec.done
            or rec.grads[0] is not None
            or self._calls.get(id(unit), 0) != 1
            or dtype is not _compute_dtype(unit.plist)
            or need_bias != bias
            or conv_method(geom, g, ctx) != "materialize"
        ):
            self._grad_hook(rec, 0, g)
            return None
        self._backward_seen = True
        self._last_backward = "train"
        if self._batch != rec.batch:
            self._check_batch(rec)
        try:
            sq, gw, gb = conv_norms_and_grads(geom, x, g, ctx, bias)
            self._add_layer_norms(unit, sq)
            self._seen_params.update(unit.param_ids)
        finally:
            self._release(rec)
        return gw, gb

    def _eval_grad_hook(self, grad: Tensor) -> None:
        self._last_backward = "eval"

    def _param_hook(self, p: Tensor) -> None:
        if self.enabled and not _suspended():
            self._grad_params.add(id(p))

    def _grad_hook(self, rec: _Record, slot: int, grad: Tensor) -> None:
        if rec.generation != self._generation or not self._attached:
            return  # a stale graph (a later capture began, or hooks removed)
        self._backward_seen = True
        self._last_backward = "train"
        if rec.done or rec.grads[slot] is not None:
            msg = (
                "a second backward pass went through the same captured forward (retain_graph=True, "
                "or torch.autograd.grad over it); per-example norms of accumulated gradients cannot "
                "be computed from norms. Run one backward per forward."
            )
            if msg not in self._problems:
                self._problems.append(msg)
            return
        rec.grads[slot] = grad.detach() if grad.requires_grad else grad
        rec.pending -= 1
        if rec.pending == 0:
            self._process(rec)

    # --------------------------------------------------------- compute ---

    def _check_batch(self, rec: _Record) -> None:
        if self._batch is None:
            self._batch, self._batch_from = rec.batch, rec.unit.label
        elif rec.batch != self._batch:
            raise CaptureError(
                f"gdiv.torch: inconsistent batch sizes along batch_dim={self.batch_dim}: module "
                f"{self._batch_from} saw {self._batch}, module {rec.unit.label} saw {rec.batch}. "
                "Set batch_dim to the example dimension of the layer inputs."
            )

    def _process(self, rec: _Record) -> None:
        unit = rec.unit
        if self._batch != rec.batch:
            self._check_batch(rec)
        try:
            if rec.batch == 0:  # an empty batch: no examples, no norms (rules and vmap need B >= 1)
                g0 = next(g for g in rec.grads if g is not None)
                empty = torch.zeros(0, dtype=torch.float64, device=g0.device)
                self._layer[unit.key] = empty
            elif unit.tied or self._calls.get(id(unit), 0) > 1:
                for n, g in vmap_grads(rec, self.batch_dim, self.workspace_bytes).items():
                    p = unit.params[n]
                    label = self._param_names.get(id(p), n) if unit.tied else unit.key
                    prev = self._acc.get(id(p))
                    self._acc[id(p)] = (label, g if prev is None else prev[1] + g)
            else:
                if self._rule_applies(rec):
                    sq = self._rule_norms(rec)
                else:
                    sq = fallback_norms(rec, self.batch_dim, self.workspace_bytes)
                self._add_layer_norms(unit, sq)
            self._seen_params.update(unit.param_ids)
        finally:
            self._release(rec)

    def _add_layer_norms(self, unit: _Unit, sq: Tensor) -> None:
        prev = self._layer.get(unit.key)
        self._layer[unit.key] = sq if prev is None else prev + sq

    @staticmethod
    def _release(rec: _Record) -> None:
        rec.done = True
        rec.pending = 0
        rec.args, rec.kwargs, rec.grads = (), {}, []

    def _rule_applies(self, rec: _Record) -> bool:
        return (
            rec.unit.rule is not None
            and len(rec.out_index) == 1
            and rec.grads[0] is not None
            and len(rec.args) >= 1
            and isinstance(rec.args[0], Tensor)
        )

    def _to_batch_first(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        if self.batch_dim != 0:
            t = t.movedim(self.batch_dim, 0)
        return t.to(dtype) if t.dtype is not dtype and t.is_floating_point() else t

    def _context(self, unit: _Unit, dtype: torch.dtype) -> RuleContext:
        """The unit's RuleContext, rebuilt only when a setting it carries changed."""
        ctx = unit.ctx
        if ctx is None or ctx.dtype is not dtype or ctx.sequence_method != self.sequence_method or ctx.workspace_bytes != self.workspace_bytes:
            ctx = unit.ctx = RuleContext(
                params=unit.param_names,
                sequence_method=self.sequence_method,
                workspace_bytes=self.workspace_bytes,
                dtype=dtype,
                name=unit.key,
            )
        return ctx

    def _rule_norms(self, rec: _Record) -> Tensor:
        unit = rec.unit
        dtype = _compute_dtype(unit.plist)
        g0 = rec.grads[0]
        assert g0 is not None  # processed only once its output gradient arrived
        g = self._to_batch_first(g0, dtype)
        ctx = self._context(unit, dtype)
        inputs = tuple(self._to_batch_first(a, dtype) if isinstance(a, Tensor) else a for a in rec.args)
        if unit.total is not None:
            total = unit.total(unit.module, inputs, g, ctx)
            if total is not None:
                return total
        assert unit.rule is not None  # units without a rule go through the fallback
        parts = unit.rule(unit.module, inputs, g, ctx)
        want = (rec.batch,)
        if len(parts) != len(unit.params) or any(n not in unit.params or not isinstance(v, Tensor) or v.shape != want for n, v in parts.items()):
            bad_rule_output(unit, parts, rec.batch)
        values = list(parts.values())
        if len(values) == 1:
            return values[0].to(torch.float64)
        # Summed in float64, whatever the rule's dtype (stack promotes mixed dtypes).
        return torch.stack(values).sum(0, dtype=torch.float64)

    # ---------------------------------------------------------- results ---

    def _finalize(self) -> Tuple[Tensor, Dict[str, Tensor], float]:
        if self._last_backward == "eval":
            raise CaptureError(
                "gdiv.torch: the last backward pass went through a forward run in eval mode "
                "(model.training is False); PerExampleNorms captures only in train mode. "
                "Call model.train() before the forward pass whose norms you want."
            )
        if self._audit_problem is not None:
            raise CaptureError("gdiv.torch: " + self._audit_problem)
        if self._result is not None:
            return self._result
        changes = param_changes(self._param_slots) if self._attached else []
        if changes:
            now = frozenset(id(p) for _, p in trainable_parameters(self._model))
            if now != self._trainable:
                names = {id(p): n for n, p in self._model.named_parameters()}
                frozen = sorted(names.get(i, "?") for i in self._trainable - now)
                thawed = sorted(names.get(i, "?") for i in now - self._trainable)
                raise CaptureError(
                    "gdiv.torch: the set of trainable parameters changed since attach() (now frozen: "
                    f"{frozen or 'none'}; now trainable: {thawed or 'none'}); call remove() then "
                    "attach() after changing requires_grad"
                )
            raise CaptureError(
                "gdiv.torch: trainable parameters were moved or re-registered since attach() ("
                + ", ".join(changes)
                + "; e.g. by torch.nn.utils.parametrize), so the hooks no longer describe how they are "
                "used; call remove() then attach() after changing the model"
            )
        if self._problems:
            raise CaptureError("gdiv.torch: " + " ".join(self._problems))
        if not self._records:
            raise CaptureError(
                "gdiv.torch: nothing captured: run a forward pass in train mode with gradients enabled, "
                "then loss.backward(), before asking for norms" + ("" if self._attached else " (the hooks are removed: call attach())")
            )
        if not self._backward_seen:
            raise CaptureError("gdiv.torch: no backward pass since the last forward pass: call loss.backward() first")
        for rec in self._records:  # outputs that never got a gradient: finish with those that did
            if not rec.done and rec.pending < len(rec.grads):
                self._process(rec)
        missed = [self._param_names.get(i, "?") for i in self._grad_params - self._seen_params]
        if missed:
            raise CaptureError(
                "gdiv.torch: parameters received gradients that no hooked forward produced: "
                + ", ".join(sorted(missed))
                + ". Their module's parameters are used outside its forward (e.g. F.linear(x, "
                "layer.weight) in a parent module); make the parent own them, or call the module."
            )
        batch = self._batch
        assert batch is not None  # set by the first captured forward
        layer = dict(self._layer)
        for label, g in self._acc.values():
            sq = row_sq_norms64(g)
            layer[label] = layer[label] + sq if label in layer else sq
        if not layer:
            raise CaptureError("gdiv.torch: no gradient reached a hooked module in the last backward pass")
        scale = float(batch) ** 2 if self.loss_reduction == "mean" else 1.0
        values = list(layer.values())
        total = torch.stack(values).sum(0) if len(values) > 1 else values[0]
        self._acc = {}
        self._result = (total, layer, scale)  # unscaled: scaled when asked for (a new tensor)
        return self._result

    def sq_norms(self) -> Tensor:
        """Per-example squared gradient norms Σ_params ‖∇_θ ℓ_i‖² of the last
        captured batch.

        Returns:
            A (B,) float64 tensor on the activations' device (a new tensor).

        Raises:
            CaptureError: no train-mode forward + backward captured, the last
                backward ran on an eval-mode forward, backward ran twice over
                one forward, parameters received gradients outside their
                module's forward, or ``requires_grad`` changed since attach.
            UnsupportedModuleError: a deferred fallback computation failed.
        """
        total, _, scale = self._finalize()
        return total * scale if scale != 1.0 else total.clone()

    def sq_norms_by_layer(self) -> Dict[str, Tensor]:
        """The per-unit breakdown of :meth:`sq_norms`: {qualified module name
        ("<root>" for the model itself): (B,) float64}; the values sum to
        ``sq_norms()``. Parameters tied across units appear under the
        parameter's qualified name instead. Raises like :meth:`sq_norms`."""
        _, layer, scale = self._finalize()
        return {k: v * scale if scale != 1.0 else v.clone() for k, v in layer.items()}

    def _raw_sq_norms(self) -> Tensor:
        """The per-example squared norms of the gradients of the loss as it
        was backpropagated ((B,) float64, not a copy; not rescaled by B² for
        "mean": the caller's controller converts). With :attr:`accumulate`,
        the micro-batches since the last :meth:`reset`, concatenated."""
        cur = self._finalize()[0]
        if self._micro_error is not None:
            raise self._micro_error
        return torch.cat([*self._micro, cur]) if self._micro else cur

    def _micro_sizes(self) -> List[int]:
        """The examples of each micro-batch since the last reset (the
        current capture last; empty before the first forward)."""
        cur = [] if self._batch is None else [int(self._batch)]
        return [int(t.shape[0]) for t in self._micro] + cur

    def _stash_micro_batch(self) -> None:
        """Keep the finished capture's raw norms (a micro-batch of an
        accumulated step); a capture problem is raised at the step."""
        if self._micro_error is not None:
            return
        try:
            self._micro.append(self._finalize()[0])
        except (CaptureError, UnsupportedModuleError) as e:
            self._micro_error = e

    def reset(self) -> None:
        """Forget the current capture (hooks stay attached)."""
        self._replaced = 0  # captures a later forward replaced since the last reset
        self._inert_batch, self._inert_forwards = None, 0
        self._micro, self._micro_error = [], None
        self._generation += 1
        self._reset_capture()
        self._last_backward = None
