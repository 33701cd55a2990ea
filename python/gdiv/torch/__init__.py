"""gdiv.torch — PyTorch integration: per-example gradient norms and gradients.

Capture modes (pure PyTorch, no Go call):

* ``norms``: :class:`PerExampleNorms` hooks a model and returns ‖∇_θ ℓ_i‖² per
  example after ``loss.backward()``, without materializing per-example
  gradients (per-layer rules registered with :func:`register_norm_rule`,
  ``torch.func`` fallback for other layers).
* ``full``: :func:`per_example_grads` materializes the (B, P) matrix of
  per-example gradients with ``torch.func`` in chunks under a memory budget.

See ``gdiv.torch.norms`` for the scaling conventions (``loss_reduction``).
"""

from ._rules import (
    CaptureError,
    NormsError,
    RuleContext,
    UnsupportedModuleError,
    find_norm_rule,
    register_norm_rule,
    registered_norm_rules,
)
from .norms import PerExampleNorms, per_example_grads, trainable_parameters

__all__ = [
    "PerExampleNorms",
    "per_example_grads",
    "trainable_parameters",
    "register_norm_rule",
    "find_norm_rule",
    "registered_norm_rules",
    "RuleContext",
    "NormsError",
    "UnsupportedModuleError",
    "CaptureError",
]
