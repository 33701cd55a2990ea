"""Per-example squared gradient norms from hooks (the ``norms`` capture mode),
and materialized per-example gradients (the ``full`` capture mode).

``PerExampleNorms(model)`` hooks the model and, after ``loss.backward()``,
returns ‖∇_θ ℓ_i‖² for every example i of the batch, summed over all
trainable parameters, without forming per-example gradients (B × P) except
where documented below. These are the per-example norms the diversity
estimators need (``sum_sq_norms`` = Σ_i ‖g_i‖²).

How it works
------------
The model is split into *units*: modules that own trainable parameters
directly (``module._parameters``). A unit with no trainable descendants is a
*layer* and gets its rule from the table in ``rules`` (Linear, Conv1d/2d/3d,
Embedding, LayerNorm, RMSNorm, GroupNorm, eval-mode BatchNorm), else the
generic fallback. A unit that also has trainable descendants (e.g.
``nn.MultiheadAttention``, whose forward uses ``out_proj.weight`` without
calling ``out_proj``) is handled as a whole, with the fallback. Modules with
only frozen parameters are skipped.

For each unit call in train mode, a forward hook keeps the inputs (detached)
and puts a pre-hook on the autograd node of each output that requires grad
(a tensor hook for an output without one); when the output gradients arrive
during backward, the rule turns (inputs, output gradient) into per-example
squared norms and the inputs are released. Hooks on the outputs' nodes
(rather than ``register_full_backward_hook``) keep working when a later
in-place op (``ReLU(inplace=True)``) modifies the output.

Fused convolutions (``fuse_conv=True``, the default): a convolution's norms
need its per-example weight gradients, as many flops as the layer's own
weight gradient; plain ``Conv1d/2d/3d`` units therefore compute them once and
take the batch weight and bias gradients (``.grad``) to be their sums, instead
of the hook above (see ``gdiv.torch.rules.fused_conv``: the module's class is swapped
for a subclass while attached; ``.grad`` equals PyTorch's to rounding; double
backward, ``retain_graph``, autocast and torch.func run the plain path).

Generic fallback (``torch.func``): for each example, the parameter gradient of
⟨module(x_i), G_i⟩ with ``vmap(grad(...))`` over the module's captured
inputs. It materializes the unit's per-example gradients — memory B × P_unit
(in chunks of the batch under ``workspace_bytes``), compute about B forward +
backward passes of the module. Inputs whose size along ``batch_dim`` is B are
treated as batched, other tensors as shared by all examples. It cannot run
modules with data-dependent control flow, ``.item()``, random ops, in-place
updates of captured tensors or ops without vmap support; it then raises
:class:`UnsupportedModuleError` naming the module. ``fallback=False`` refuses,
at construction, every unit without a rule.

Shared parameters. A parameter used by two units (weight tying, e.g. an
embedding and the output projection of a language model), or a unit called
more than once per forward (a module reused in a loop), gets one per-example
gradient that is the *sum* of its contributions; squared norms of the parts
do not add up to it. Those units are *materialized*: per-example gradients of
their parameters (B × P_param, by ``torch.func``) are accumulated over calls
and units and normed at the end. Correct, and as costly as it sounds.

Loss reduction and rescaling
----------------------------
PerExampleNorms returns the squared norms of ∇_θ ℓ_i, the gradient of example
i's own loss, whichever reduction the training loss uses:

* ``loss_reduction="sum"``: the loss is L = Σ_i ℓ_i; the output gradients the
  hooks see are those of ℓ_i; nothing is rescaled.
* ``loss_reduction="mean"``: the loss is L = (1/B) Σ_i ℓ_i; the hooks see
  (1/B)·∂ℓ_i/∂out, so each captured per-example gradient is (1/B)·∇ℓ_i and
  its squared norm is multiplied by B² (B = the batch size of the captured
  forward pass, the size of ``batch_dim`` of the layer inputs).

"mean" over several dims per example (a token-mean cross-entropy over
(B, T)) is L = (1/B)Σ_i ℓ_i with ℓ_i the mean over example i's T tokens, so
the norms are those of that ℓ_i. A mean whose denominator is not B times a
per-example constant (``ignore_index`` / padding masks: cross-entropy divides
by the number of kept tokens in the *batch*) is neither: use a "sum" loss and
``loss_reduction="sum"``, and rescale yourself. Loss terms that use parameters
outside their modules' forward (an L2 penalty added to the loss) are not part
of any example's gradient and are not seen.

Dtypes. Rules compute in float32 (float64 for float64 parameters), whatever
the activation dtype (autocast, bf16); norms are accumulated and returned in
float64, on the device of the activations.

Gradient accumulation. The norms describe one captured batch: the next
train-mode forward after a backward starts a new capture. Read the norms
after each backward. A second backward through the same graph
(``retain_graph=True``) is refused when the norms are read.

Unsupported
-----------
Train-mode BatchNorm (refused, see the message); Embedding with
``scale_grad_by_freq`` (refused); activation checkpointing (a forward
recomputed inside backward is refused); ``torch.compile``d modules (hooks may
not fire; a small conv model gave the right norms in eager-hook fallback, but
this is not tested); ``torch.jit.script`` of a hooked model (Python hooks
cannot be scripted: script before attaching, or remove() first;
``torch.jit.trace`` works and records plain convolutions);
``torch.fx.symbolic_trace`` of a hooked model records fused convolutions as
``F.conv2d`` calls (same computation; trace before attaching to keep
``call_module`` nodes); ``sparse=True`` embeddings are fine.

User hooks. PerExampleNorms' forward hooks run first (``prepend=True``), so a
forward hook registered earlier that replaces a layer's output does not
change what is normed (the gradient of the layer's own output), but one
registered later with ``prepend=True`` runs before it and does. A tensor hook
the user puts on a layer's output that rescales the gradient is seen by
every rule (tensor hooks run before node pre-hooks; fused convolutions
receive the final gradient): the norms are those of the gradient the layer's
backward uses. Layers whose weight is computed from other parameters
in a pre-hook (``torch.nn.utils.prune``, the old ``weight_norm``) get the
torch.func fallback (their rule would norm the computed weight's gradient). A train-mode forward with
gradients enabled that is never backpropagated still counts as a call: the
next forward before a backward makes every unit "called twice", which is
correct but materialized (slow) — run such forwards under ``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .errors import CaptureError, NormsError, UnsupportedModuleError, batch_norm_message
from .rules import SEQUENCE_METHODS, RuleContext, find_norm_rule
from .rules import fused_conv as _fused
from .rules._common import row_sq_norms
from .rules._registry import FUSED_TOTALS
from .rules.conv import _conv_rule, conv_method, conv_norms_and_grads

__all__ = ["PerExampleNorms", "per_example_grads", "trainable_parameters"]

_LOSS_REDUCTIONS = ("mean", "sum")

# Forward hooks do nothing while this is > 0: set while the torch.func
# fallback or per_example_grads re-runs modules (under vmap), so that hooks do
# not capture batched-tensor wrappers. Thread-local: the fallback runs in the
# autograd thread that calls the output hooks.
_suspend = threading.local()


def _suspended() -> bool:
    return getattr(_suspend, "depth", 0) > 0


@contextlib.contextmanager
def _no_capture() -> Iterator[None]:
    _suspend.depth = getattr(_suspend, "depth", 0) + 1
    try:
        yield
    finally:
        _suspend.depth -= 1


_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def _in_backward() -> bool:
    """True inside the autograd engine (a hook, or a forward recomputed by
    activation checkpointing)."""
    return _graph_task_id is not None and _graph_task_id() != -1


def _compute_dtype(params: Sequence[Tensor]) -> torch.dtype:
    for p in params:
        if p.dtype is torch.float64:
            return torch.float64
    return torch.float32


def _row_sq_norms64(t: Tensor) -> Tensor:
    """(B,) float64 squared norms of the rows of t (B, ...): ``vector_norm``
    in t's dtype (no temporary; ``t.square().sum(1)`` is an order of
    magnitude slower on large tensors), squared and summed in float64."""
    return row_sq_norms(t, torch.float64)


def _is_batch_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _uses_batch_stats(m: nn.Module) -> bool:
    return m.training or m.running_mean is None


def _display(name: str) -> str:
    return name if name else "<root>"


def trainable_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """(name, parameter) for every trainable parameter, in ``named_parameters``
    order (tied parameters once). This is the column order of
    :func:`per_example_grads`: each parameter flattened row-major, then
    concatenated."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------- internals ---


@dataclasses.dataclass(eq=False)
class _Unit:
    module: nn.Module
    name: str  # qualified name in the model ("" for the root)
    params: Dict[str, nn.Parameter]  # trainable, named relative to the module
    rule: Optional[Callable]  # None: torch.func fallback
    subtree: bool  # owns the parameters of trainable descendants too
    tied: bool = False  # a parameter also belongs to another unit
    fused: bool = False  # a convolution swapped to its fused class (see _fused)

    def __post_init__(self) -> None:
        # Per-call constants, computed once.
        self.key = _display(self.name)  # its entry in sq_norms_by_layer
        self.plist = tuple(self.params.values())
        self.param_ids = frozenset(id(p) for p in self.plist)
        self.param_names = frozenset(self.params)
        self.ctx: Optional[RuleContext] = None  # the RuleContext of the last call, reused while valid
        self.total = FUSED_TOTALS.get(self.rule) if self.rule is not None else None

    @property
    def label(self) -> str:
        return f"'{self.key}' ({type(self.module).__name__})"


class _Record:
    """One call of a unit in the current capture."""

    __slots__ = ("unit", "generation", "args", "kwargs", "out_index", "batch", "grads", "pending", "done")

    def __init__(
        self,
        unit: _Unit,
        generation: int,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        out_index: List[int],  # positions (in the flattened output) of outputs with hooks
        batch: int,
    ) -> None:
        self.unit = unit
        self.generation = generation
        self.args = args
        self.kwargs = kwargs
        self.out_index = out_index
        self.batch = batch
        self.grads: List[Optional[Tensor]] = [None] * len(out_index)
        self.pending = len(out_index)
        self.done = False


class _WeakHook:
    """A hook calling ``obj.method(*bound, *args)`` that does not keep ``obj``
    alive: dropping the PerExampleNorms object removes its hooks (``__del__``).

    Copies are inert: ``copy.deepcopy`` of a hooked model (an EMA copy, a
    checkpoint) and pickling it (``torch.save(model)``) give hooks that do
    nothing, so that a copy never feeds the original's capture."""

    __slots__ = ("ref", "method", "bound")

    def __init__(self, obj: Any, method: str, *bound: Any) -> None:
        self.ref = weakref.ref(obj)
        self.method = method
        self.bound = bound

    def __call__(self, *args: Any) -> Any:
        o = self.ref()
        return None if o is None else getattr(o, self.method)(*self.bound, *args)

    def __reduce__(self) -> Tuple[Any, Tuple[()]]:
        return (_inert_hook, ())

    def __deepcopy__(self, memo: Dict[int, Any]) -> Callable[..., None]:
        return _inert_hook()


class _OwnForward(nn.Module):
    """Runs ``m`` on inputs captured by a forward hook: its forward pre-hooks
    for their side effects (pruning and weight_norm compute the weight
    there) but not their return values (the captured inputs already are what
    they returned), then ``m.forward``, without ``m``'s forward hooks (the
    captured gradient is that of the forward's own output). Hooks of its
    submodules run as usual."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        m = self.m
        with_kwargs = m._forward_pre_hooks_with_kwargs
        for hook_id, hook in list(m._forward_pre_hooks.items()):
            if hook_id in with_kwargs:
                hook(m, args, kwargs)
            else:
                hook(m, args)
        return m.forward(*args, **kwargs)


class _OutputGradHook:
    """Node pre-hook handing output ``nr``'s gradient to
    ``owner._grad_hook(rec, slot, grad)``; holds the owner weakly."""

    __slots__ = ("ref", "rec", "slot", "nr")

    def __init__(self, owner: Any, rec: "_Record", slot: int, nr: int) -> None:
        self.ref = weakref.ref(owner)
        self.rec = rec
        self.slot = slot
        self.nr = nr

    def __call__(self, grad_outputs: Tuple[Optional[Tensor], ...]) -> None:
        owner = self.ref()
        grad = grad_outputs[self.nr]
        if owner is not None and grad is not None:
            owner._grad_hook(self.rec, self.slot, grad)


def _inert(*args: Any) -> None:
    return None


def _inert_hook() -> Callable[..., None]:
    return _inert



def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, Tensor) else x


class PerExampleNorms:
    """Per-example squared gradient norms ‖∇_θ ℓ_i‖² of a PyTorch model, from hooks.

    Args:
        model: the model; hooks go on its units (see the module doc). The
            model's own ``training`` flag decides capture: in eval mode the
            hooks do nothing.
        loss_reduction: "mean" if the loss you call ``backward`` on is the mean
            of the per-example losses (PyTorch's default), "sum" if it is their
            sum. With "mean", squared norms are multiplied by B² so that they
            are those of ∇ℓ_i (see "Loss reduction and rescaling").
        batch_dim: the example dimension of every layer input and output
            (1 for sequence-first models). Rules see the batch moved to dim 0.
        fallback: use the ``torch.func`` fallback for units without a rule.
            False: raise at construction, naming every such unit.
        sequence_method: for Linear on sequences and convolutions, "gram",
            "materialize" or "auto" (fewer flops; see ``rules``).
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
        units = self._find_units()
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
            handles.append(
                u.module.register_forward_hook(_WeakHook(self, "_forward_hook", u), with_kwargs=True, prepend=True)
            )
        for name, m in self._model.named_modules():
            if _is_batch_norm(m):
                handles.append(m.register_forward_pre_hook(_WeakHook(self, "_batch_norm_check", name)))
        if hasattr(Tensor, "register_post_accumulate_grad_hook"):
            for _, p in trainable_parameters(self._model):
                handles.append(p.register_post_accumulate_grad_hook(_WeakHook(self, "_param_hook")))
        if self.fuse_conv and self.batch_dim == 0:
            for u in units:
                if u.rule is _conv_rule and not (u.tied or u.subtree):
                    u.fused = _fused.bind(u.module, self)
        self._units = units
        self._handles = handles
        self._param_names = {id(p): n for n, p in self._model.named_parameters()}
        self._trainable = frozenset(id(p) for _, p in trainable_parameters(self._model))
        # For the per-capture check that no parameter was frozen, thawed or
        # replaced since attach: every module's parameter dict and what it held
        # (cheaper than walking named_parameters each step).
        self._param_slots = [
            (name, m._parameters, tuple((k, v, v is not None and v.requires_grad) for k, v in m._parameters.items()))
            for name, m in self._model.named_modules()
        ]
        self._attached = True
        self._generation += 1
        self._reset_capture()
        return self

    def remove(self) -> None:
        """Remove every hook this object added. Safe to call twice. Norms of the
        last capture are discarded; a backward still in flight is ignored."""
        for h in self._handles:
            h.remove()
        for u in self._units:
            if u.fused:
                _fused.unbind(u.module, self)
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
                    _fused.unbind(u.module)
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return (
            f"PerExampleNorms({type(self._model).__name__}, loss_reduction={self.loss_reduction!r}, "
            f"batch_dim={self.batch_dim}, units={len(self._units)}, attached={self._attached})"
        )

    def _find_units(self) -> List[_Unit]:
        units: List[_Unit] = []
        covered: List[str] = []  # names of subtree units: descendants are theirs
        for name, m in self._model.named_modules():
            if any(name.startswith(c + ".") or c == "" for c in covered):
                continue
            own = [n for n, p in m.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            all_params = {n: p for n, p in m.named_parameters() if p.requires_grad}
            subtree = len(all_params) > len(own)
            rule = None if subtree else find_norm_rule(m)
            units.append(_Unit(m, name, all_params, rule, subtree))
            if subtree:
                covered.append(name)
        owners: Dict[int, List[_Unit]] = {}
        for u in units:
            for p in u.params.values():
                owners.setdefault(id(p), []).append(u)
        for us in owners.values():
            if len(us) > 1:
                for u in us:
                    u.tied = True
        return units

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
        if _suspended() or not torch.is_grad_enabled() or not self._model.training:
            return
        if _uses_batch_stats(module):
            raise UnsupportedModuleError(batch_norm_message(module, _display(name)))

    def _forward_hook(self, unit: _Unit, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not torch.is_grad_enabled() or _suspended():
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
            self._generation += 1
            self._reset_capture()
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
        if unit.fused and type(output.grad_fn) is _fused.FUSED_NODE:
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
        return (
            self._attached
            and self._model.training
            and torch.is_grad_enabled()
            and not _suspended()
            and not _in_backward()
        )

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
        if not _suspended():
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
                for n, g in self._vmap_grads(rec).items():
                    p = unit.params[n]
                    label = self._param_names.get(id(p), n) if unit.tied else unit.key
                    prev = self._acc.get(id(p))
                    self._acc[id(p)] = (label, g if prev is None else prev[1] + g)
            else:
                self._add_layer_norms(unit, self._rule_norms(rec) if self._rule_applies(rec) else self._fallback_norms(rec))
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
        if (
            ctx is None
            or ctx.dtype is not dtype
            or ctx.sequence_method != self.sequence_method
            or ctx.workspace_bytes != self.workspace_bytes
        ):
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
        g = self._to_batch_first(rec.grads[0], dtype)
        ctx = self._context(unit, dtype)
        inputs = tuple(self._to_batch_first(a, dtype) if isinstance(a, Tensor) else a for a in rec.args)
        if unit.total is not None:
            total = unit.total(unit.module, inputs, g, ctx)
            if total is not None:
                return total
        parts = unit.rule(unit.module, inputs, g, ctx)
        want = (rec.batch,)
        if len(parts) != len(unit.params) or any(
            n not in unit.params or not isinstance(v, Tensor) or v.shape != want for n, v in parts.items()
        ):
            self._bad_rule_output(unit, parts, rec.batch)
        values = list(parts.values())
        if len(values) == 1:
            return values[0].to(torch.float64)
        # Summed in float64, whatever the rule's dtype (stack promotes mixed dtypes).
        return torch.stack(values).sum(0, dtype=torch.float64)

    @staticmethod
    def _bad_rule_output(unit: _Unit, parts: Dict[str, Tensor], batch: int) -> None:
        for n, v in parts.items():
            if n not in unit.params:
                raise NormsError(f"gdiv.torch: the rule for {unit.label} returned unknown parameter {n!r}")
            if not isinstance(v, Tensor) or v.shape != (batch,):
                raise NormsError(
                    f"gdiv.torch: the rule for {unit.label} returned shape {tuple(getattr(v, 'shape', ()))} "
                    f"for {n!r}, expected ({batch},)"
                )
        missing = set(unit.params) - set(parts)
        raise NormsError(f"gdiv.torch: the rule for {unit.label} returned nothing for {sorted(missing)}")

    def _fallback_norms(self, rec: _Record) -> Tensor:
        total = None
        for g in self._vmap_grads(rec).values():
            sq = _row_sq_norms64(g)
            total = sq if total is None else total + sq
        return total

    def _vmap_grads(self, rec: _Record) -> Dict[str, Tensor]:
        """Per-example gradients {name: (B, *shape)} of the unit's trainable
        parameters for this call, by torch.func, batch first."""
        unit, bd, batch = rec.unit, self.batch_dim, rec.batch
        module = unit.module
        dtype = _compute_dtype(unit.plist)

        def cast(t: Any) -> Any:
            return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

        constants = {n: cast(t.detach()) for n, t in module.named_parameters() if n not in unit.params}
        constants.update({n: cast(t) for n, t in module.named_buffers()})
        train = {n: cast(p.detach()) for n, p in unit.params.items()}

        flat, spec = pytree.tree_flatten((list(rec.args), dict(rec.kwargs)))
        positions, batched = [], []
        for k, t in enumerate(flat):
            if isinstance(t, Tensor) and t.dim() > bd and t.shape[bd] == batch:
                positions.append(k)
                batched.append(cast(t).unsqueeze(bd + 1))  # vmap drops dim bd, keeps a size-1 batch
            else:
                flat[k] = cast(t)
        slots = [(j, cast(g).unsqueeze(bd + 1)) for j, g in zip(rec.out_index, rec.grads) if g is not None]
        out_pos = [j for j, _ in slots]
        gouts = [g for _, g in slots]

        def inner(params: Dict[str, Tensor], xs: List[Tensor], gs: List[Tensor]) -> Tensor:
            full = list(flat)
            for k, x in zip(positions, xs):
                full[k] = x
            args, kwargs = pytree.tree_unflatten(full, spec)
            # The unit's own computation (see _OwnForward): its forward hooks
            # ran in the real forward already, after the output whose
            # gradient was captured.
            state = {"m." + k: v for k, v in {**constants, **params}.items()}
            out = torch.func.functional_call(_OwnForward(module), state, tuple(args), kwargs)
            outs, _ = pytree.tree_flatten(out)
            total = None
            for j, g in zip(out_pos, gs):
                term = (outs[j] * g).sum()
                total = term if total is None else total + term
            return total

        per_example = sum(p.numel() for p in train.values()) * torch.finfo(dtype).bits // 8
        chunk = max(1, self.workspace_bytes // max(1, per_example))
        fn = torch.func.vmap(
            torch.func.grad(inner),
            in_dims=(None, [bd] * len(batched), [bd] * len(gouts)),
            randomness="error",
            chunk_size=chunk if chunk < batch else None,
        )
        try:
            with _no_capture(), torch.enable_grad():
                grads = fn(train, batched, gouts)
        except NormsError:
            raise
        except Exception as e:  # vmap/grad failures: name the module
            raise UnsupportedModuleError(
                f"gdiv.torch: the torch.func fallback could not compute per-example gradients of "
                f"module {unit.label}: {type(e).__name__}: {e}. The fallback needs a forward that "
                "vmap can run (no data-dependent control flow, .item(), random ops or in-place "
                "updates of captured tensors). Register a rule with @register_norm_rule("
                f"{type(module).__name__}), or freeze the module's parameters."
            ) from e
        return grads

    # ---------------------------------------------------------- results ---

    def _finalize(self) -> Tuple[Tensor, Dict[str, Tensor]]:
        if self._last_backward == "eval":
            raise CaptureError(
                "gdiv.torch: the last backward pass went through a forward run in eval mode "
                "(model.training is False); PerExampleNorms captures only in train mode. "
                "Call model.train() before the forward pass whose norms you want."
            )
        if self._result is not None:
            return self._result
        changes = self._param_changes() if self._attached else []
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
                "then loss.backward(), before asking for norms"
                + ("" if self._attached else " (the hooks are removed: call attach())")
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
        layer = dict(self._layer)
        for label, g in self._acc.values():
            sq = _row_sq_norms64(g)
            layer[label] = layer[label] + sq if label in layer else sq
        if not layer:
            raise CaptureError("gdiv.torch: no gradient reached a hooked module in the last backward pass")
        scale = float(batch) ** 2 if self.loss_reduction == "mean" else 1.0
        values = list(layer.values())
        total = torch.stack(values).sum(0) if len(values) > 1 else values[0]
        self._acc = {}
        self._result = (total, layer, scale)  # unscaled: scaled when asked for (a new tensor)
        return self._result

    def _param_changes(self) -> List[str]:
        """Qualified names of the trainable parameters (then or now) that were
        added, removed, replaced, frozen or thawed in the modules' parameter
        dicts since attach; [] when none (the common case, checked cheaply)."""
        changed: List[str] = []
        for mod, params, held in self._param_slots:
            if len(params) == len(held) and all(
                params.get(k) is v and (v is None or v.requires_grad == trainable) for k, v, trainable in held
            ):
                continue
            before = {k: (v, trainable) for k, v, trainable in held}
            for k in sorted(set(before) | set(params)):
                old, new = before.get(k, (None, False)), params.get(k)
                now_trainable = new is not None and new.requires_grad
                if (old[1] or now_trainable) and (old[0] is not new or old[1] != now_trainable):
                    changed.append(f"{mod}.{k}" if mod else k)
        return changed

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

    def reset(self) -> None:
        """Forget the current capture (hooks stay attached)."""
        self._generation += 1
        self._reset_capture()
        self._last_backward = None


# ---------------------------------------------------------------- full mode ---

# per_example_grads' default chunk: at most this many examples, whose
# per-example gradients take at most this many bytes, per vmap call. vmap's
# own intermediates (the chunk's activations) grow with the chunk too. Small
# chunks also run faster on large models (on the CPU, an MLP with 670k
# parameters: chunks of 8-16 examples beat 64-256), a little slower on small
# ones (a 20k-parameter CNN: 64 examples ~10% slower than 256).
_FULL_CHUNK_BYTES = 32 << 20
_FULL_CHUNK_EXAMPLES = 64


def per_example_grads(
    model: nn.Module,
    loss_fn: Callable[..., Tensor],
    inputs: Union[Tensor, Sequence[Tensor]],
    targets: Optional[Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
    max_bytes: Optional[int] = None,
    randomness: str = "error",
) -> Tensor:
    """Materialize per-example gradients with ``torch.func`` (``vmap(grad)``).

    Row i is ∇_θ ℓ_i with ℓ_i = ``loss_fn(model(x_i), y_i)`` evaluated on the
    one-example batch (x_i, y_i) (batch dim 0 kept, of size 1): the gradient of
    example i's own loss, with no 1/B factor, whatever ``loss_fn``'s reduction
    (a mean over an example's elements — e.g. tokens — stays in ℓ_i).

    Args:
        model: the model; its trainable parameters are the columns.
        loss_fn: ``loss_fn(output, target) -> scalar`` (``loss_fn(output)``
            when ``targets`` is None).
        inputs: a tensor or a sequence of tensors, batched along dim 0 (passed
            as ``model(*inputs)``).
        targets: a tensor batched along dim 0, or None.
        chunk_size: examples per vmap call (default: at most 64, and as many
            as keep one chunk's per-example gradients within 32 MiB, at least
            one; fewer if ``max_bytes`` requires). Each chunk is written into
            the result as soon as it is computed: the memory is the (B, P)
            result plus one chunk (and vmap's intermediates for the chunk).
        max_bytes: memory budget in bytes for the (B, P) result plus one
            chunk's per-example gradients (chunk × P × itemsize). The chunk
            shrinks to fit.
        randomness: passed to ``torch.func.vmap`` ("error", "different",
            "same"): "error" refuses random ops such as dropout in train mode.

    Returns:
        A (B, P) contiguous tensor in the parameters' dtype and device.
        Columns: :func:`trainable_parameters` order, each parameter flattened
        row-major (tied parameters once).

    Raises:
        MemoryError: ``max_bytes`` is too small even for chunks of one example
            (the message gives the bytes needed).
        ValueError: no trainable parameters, inconsistent batch sizes, bad
            ``chunk_size``.
        UnsupportedModuleError: train-mode BatchNorm, or torch.func failed.

    Example:
        >>> G = per_example_grads(model, F.cross_entropy, x, y, max_bytes=1 << 30)
        >>> gdiv.stats(G)
    """
    named = trainable_parameters(model)
    if not named:
        raise ValueError("per_example_grads: the model has no trainable parameters")
    for name, m in model.named_modules():
        if _is_batch_norm(m) and _uses_batch_stats(m):
            raise UnsupportedModuleError(batch_norm_message(m, _display(name)))
    xs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not xs or not all(isinstance(x, Tensor) and x.dim() >= 1 for x in xs):
        raise ValueError("per_example_grads: inputs must be a tensor or a sequence of tensors with a batch dim 0")
    batch = xs[0].shape[0]
    sizes = [x.shape[0] for x in xs] + ([targets.shape[0]] if targets is not None else [])
    if any(s != batch for s in sizes):
        raise ValueError(f"per_example_grads: inputs and targets disagree on the batch size (dim 0): {sizes}")
    if batch == 0:
        raise ValueError("per_example_grads: empty batch")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"per_example_grads: chunk_size must be a positive int, got {chunk_size!r}")
    dtype = named[0][1].dtype
    for _, p in named[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    device = named[0][1].device
    n_params = sum(p.numel() for _, p in named)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if chunk_size is None:
        chunk_size = max(1, min(_FULL_CHUNK_EXAMPLES, _FULL_CHUNK_BYTES // max(1, n_params * itemsize)))
    chunk = min(chunk_size, batch)
    if max_bytes is not None:
        out_bytes = batch * n_params * itemsize
        per_example = n_params * itemsize
        fit = (max_bytes - out_bytes) // per_example
        if fit < 1:
            raise MemoryError(
                f"per_example_grads: max_bytes={max_bytes} is too small: the (B={batch}, P={n_params}) "
                f"{dtype} result needs {out_bytes} bytes and one example's gradient {per_example} more, "
                f"i.e. at least {out_bytes + per_example} bytes"
            )
        chunk = min(chunk, int(fit))

    params = {n: p.detach() for n, p in named}

    def loss_one(ps: Dict[str, Tensor], xs_i: Tuple[Tensor, ...], y_i: Optional[Tensor]) -> Tensor:
        out = torch.func.functional_call(model, ps, tuple(x.unsqueeze(0) for x in xs_i))
        loss = loss_fn(out) if y_i is None else loss_fn(out, y_i.unsqueeze(0))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"per_example_grads: loss_fn must return a scalar tensor, got shape "
                f"{tuple(getattr(loss, 'shape', ()))}"
            )
        return loss.reshape(())

    fn = torch.func.vmap(
        torch.func.grad(loss_one),
        in_dims=(None, 0, None if targets is None else 0),
        randomness=randomness,
    )
    out = torch.empty(batch, n_params, dtype=dtype, device=device)
    with _no_capture(), torch.enable_grad():
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            try:
                g = fn(params, tuple(x[start:stop] for x in xs), None if targets is None else targets[start:stop])
            except ValueError:
                raise
            except Exception as e:
                raise UnsupportedModuleError(
                    f"per_example_grads: torch.func could not compute per-example gradients of "
                    f"{type(model).__name__}: {type(e).__name__}: {e}"
                ) from e
            # One pass into the preallocated rows; this chunk's gradients are
            # dropped before the next chunk is computed.
            torch.cat([g[n].reshape(stop - start, -1) for n, _ in named], dim=1, out=out[start:stop])
            del g
    return out
