"""What the capture tracks: units (the modules it hooks) and their calls
(records), found from the model; small model helpers; the check that the
model's parameters are still those seen at attach."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import NormsError
from .rules import RuleContext, find_norm_rule
from .rules._registry import FUSED_TOTALS


def _compute_dtype(params: Sequence[Tensor]) -> torch.dtype:
    for p in params:
        if p.dtype is torch.float64:
            return torch.float64
    return torch.float32


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


@dataclasses.dataclass(eq=False)
class _Unit:
    module: nn.Module
    name: str  # qualified name in the model ("" for the root)
    params: Dict[str, nn.Parameter]  # trainable, named relative to the module
    rule: Optional[Callable]  # None: torch.func fallback
    subtree: bool  # owns the parameters of trainable descendants too
    tied: bool = False  # a parameter also belongs to another unit
    fused: bool = False  # a convolution swapped to its fused class (see rules.fused_conv)

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

    __slots__ = ("unit", "generation", "args", "kwargs", "out_index", "batch", "grads", "pending", "done", "bcast", "bcast_acc", "direct")

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
        # A call with a batch of 1 whose output is broadcast over the batch
        # (see _broadcast): the batch it was broadcast to (0: none), the sum
        # of the expanded outputs' gradients, the first other use seen.
        self.bcast = 0
        self.bcast_acc: Optional[Tensor] = None
        self.direct: Optional[str] = None


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, Tensor) else x


def find_units(model: nn.Module) -> List[_Unit]:
    """The units of ``model`` (modules owning trainable parameters directly;
    one that also has trainable descendants covers them: a subtree unit), each
    with its rule, and marked ``tied`` where a parameter belongs to several."""
    units: List[_Unit] = []
    covered: List[str] = []  # names of subtree units: descendants are theirs
    for name, m in model.named_modules():
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


# (qualified module name, its parameter dict, what the dict held at attach:
# (key, parameter, trainable) per entry).
ParamSlot = Tuple[str, Dict[str, Any], Tuple[Tuple[str, Any, bool], ...]]


def param_slots(model: nn.Module) -> List[ParamSlot]:
    """For the per-capture check that no parameter was frozen, thawed or
    replaced since attach: every module's parameter dict and what it holds
    (cheaper than walking named_parameters each step)."""
    return [
        (name, m._parameters, tuple((k, v, v is not None and v.requires_grad) for k, v in m._parameters.items())) for name, m in model.named_modules()
    ]


def param_changes(param_slots: List[ParamSlot]) -> List[str]:
    """Qualified names of the trainable parameters (then or now) that were
    added, removed, replaced, frozen or thawed in the modules' parameter
    dicts since :func:`param_slots` was taken (attach); [] when none (the common case, checked cheaply)."""
    changed: List[str] = []
    for mod, params, held in param_slots:
        if len(params) == len(held) and all(params.get(k) is v and (v is None or v.requires_grad == trainable) for k, v, trainable in held):
            continue
        before = {k: (v, trainable) for k, v, trainable in held}
        for k in sorted(set(before) | set(params)):
            old, new = before.get(k, (None, False)), params.get(k)
            now_trainable = new is not None and new.requires_grad
            if (old[1] or now_trainable) and (old[0] is not new or old[1] != now_trainable):
                changed.append(f"{mod}.{k}" if mod else k)
    return changed


def bad_rule_output(unit: _Unit, parts: Dict[str, Tensor], batch: int) -> None:
    """Raise the NormsError that names what is wrong with a rule's output."""
    for n, v in parts.items():
        if n not in unit.params:
            raise NormsError(f"gdiv.torch: the rule for {unit.label} returned unknown parameter {n!r}")
        if not isinstance(v, Tensor) or v.shape != (batch,):
            raise NormsError(f"gdiv.torch: the rule for {unit.label} returned shape {tuple(getattr(v, 'shape', ()))} for {n!r}, expected ({batch},)")
    missing = set(unit.params) - set(parts)
    raise NormsError(f"gdiv.torch: the rule for {unit.label} returned nothing for {sorted(missing)}")
