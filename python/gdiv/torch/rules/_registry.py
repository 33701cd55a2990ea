"""The rule table: per-layer rules keyed by module type (after Opacus'
``@register_grad_sampler``), their context, and the lookup that serves
subclasses. What a rule receives and returns: python/README.md, "Per-layer
rules"."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Callable, Dict, FrozenSet, Optional, Type, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "RuleContext",
    "NormRule",
    "SEQUENCE_METHODS",
    "register_norm_rule",
    "find_norm_rule",
    "registered_norm_rules",
]

SEQUENCE_METHODS = ("auto", "gram", "materialize")


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """What a rule needs besides the tensors.

    Attributes:
        params: names (as in ``layer.named_parameters(recurse=False)``) of the
            trainable parameters to compute; others may be skipped.
        sequence_method: "auto", "gram" or "materialize" (python/README.md, "Formulas").
        workspace_bytes: soft cap on temporary memory; rules process the
            batch in chunks to stay under it (a chunk is at least 1 example).
        dtype: the compute dtype (float32, or float64 for float64 models).
        name: the layer's qualified name, for error messages.
    """

    params: FrozenSet[str]
    sequence_method: str = "auto"
    workspace_bytes: int = 256 << 20
    dtype: torch.dtype = torch.float32
    name: str = ""


# fn(layer, inputs, grad_output, ctx) -> {param name: (B,) squared norms}:
# layer is an instance of a registered type, inputs a Tuple[Tensor, ...]. The
# arguments are left open (...) so that a rule may type ``layer`` as the
# concrete class it is registered for (nn.Linear, nn.Conv2d, ...): a Callable
# taking nn.Module would refuse those (parameters are contravariant).
NormRule = Callable[..., Dict[str, Tensor]]
_R = TypeVar("_R", bound=NormRule)

_RULES: Dict[Type[nn.Module], NormRule] = {}


def register_norm_rule(*module_types: Type[nn.Module]) -> Callable[[_R], _R]:
    """Register ``fn`` as the per-example squared-norm rule of ``module_types``.

    Example:
        >>> @register_norm_rule(MyScale)
        ... def scale_rule(layer, inputs, grad_output, ctx):
        ...     x, g = inputs[0], grad_output           # (B, d), (B, d)
        ...     return {"weight": (g * x).square().sum(1)}

    A later registration for the same type replaces the earlier one.
    """
    if not module_types:
        raise TypeError("register_norm_rule needs at least one module type")
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"register_norm_rule: {t!r} is not an nn.Module subclass")

    def deco(fn: _R) -> _R:
        for t in module_types:
            _RULES[t] = fn
        return fn

    return deco


# The parameters each built-in rule computes. A module of such a type that
# owns other parameters (torch.nn.utils.prune's weight_orig, the old
# weight_norm's weight_g / weight_v: the weight is computed from them in a
# forward pre-hook) gets the torch.func fallback instead (find_norm_rule).
_RULE_PARAMS: Dict[NormRule, FrozenSet[str]] = {}


# Rules for the layers of optional libraries: {a module of the library: the
# gdiv module registering its rules}. The rules are registered at the first
# lookup after the library was imported by someone else: gdiv never imports
# it (no dependency, no import cost), and a model built from its classes can
# only exist once it is imported.
LAZY_RULES: Dict[str, str] = {"transformers.pytorch_utils": "gdiv.torch.rules.hf"}
_lazy_loaded: set = set()


def _load_lazy_rules() -> None:
    if len(_lazy_loaded) == len(LAZY_RULES):
        return
    for lib, rules in LAZY_RULES.items():
        if lib not in _lazy_loaded and lib in sys.modules:
            _lazy_loaded.add(lib)
            importlib.import_module(rules)


def find_norm_rule(module: nn.Module) -> Optional[NormRule]:
    """The rule for ``module``: its type's, else the nearest registered base
    class whose ``forward`` the module's class does not override; else None."""
    _load_lazy_rules()
    cls = type(module)
    cls = cls.__dict__.get("_gdiv_unfused", cls)  # a class swapped in by fused_conv: its base's rule
    rule = _RULES.get(cls)
    if rule is None:
        for base in cls.__mro__[1:]:
            if base in _RULES and cls.forward is base.forward:
                rule = _RULES[base]
                break
    known = _RULE_PARAMS.get(rule) if rule is not None else None
    if known is not None and not set(module._parameters) <= known:
        return None
    return rule


def registered_norm_rules() -> Dict[Type[nn.Module], NormRule]:
    """A copy of the rule table (with the rules of optional libraries already
    imported, see ``LAZY_RULES``)."""
    _load_lazy_rules()
    return dict(_RULES)


# Internal: rule -> a faster function for callers that only need the sum of
# the rule's entries (the unit's total): fn(layer, inputs, grad_output, ctx)
# -> (B,) float64, or None for the cases it does not cover (then the rule
# runs). Keyed by the rule function: a rule the user registers for nn.Linear
# replaces the built-in one in the table, and with it this. Filled by the
# rule modules (linear).
FUSED_TOTALS: Dict[NormRule, Callable[..., Optional[Tensor]]] = {}
