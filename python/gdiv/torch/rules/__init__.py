"""Per-layer rules: per-example squared gradient norms of a layer's parameters
from its input activations and output gradient, registered by module type.
Importing this package registers the built-in rules (one module per layer
family); ``fused_conv`` is the fused convolution the capture may swap in."""

# Registers the built-in rules, in this order (that of registered_norm_rules()).
from . import linear  # noqa: F401, I001
from . import conv  # noqa: F401
from . import embedding  # noqa: F401
from . import normalization  # noqa: F401
from ._registry import (
    SEQUENCE_METHODS,
    NormRule,
    RuleContext,
    find_norm_rule,
    register_norm_rule,
    registered_norm_rules,
)

__all__ = [
    "RuleContext",
    "NormRule",
    "SEQUENCE_METHODS",
    "register_norm_rule",
    "find_norm_rule",
    "registered_norm_rules",
]
