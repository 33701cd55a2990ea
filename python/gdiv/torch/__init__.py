"""gdiv.torch — PyTorch integration: per-example gradient norms and gradients.

Capture modes (pure PyTorch, no Go call):

* ``norms``: :class:`PerExampleNorms` hooks a model and returns ‖∇_θ ℓ_i‖² per
  example after ``loss.backward()``, without materializing per-example
  gradients (per-layer rules registered with :func:`register_norm_rule`,
  ``torch.func`` fallback for other layers).
* ``full``: :func:`per_example_grads` materializes the (B, P) matrix of
  per-example gradients with ``torch.func`` in chunks under a memory budget.

Training loops (Go core through ``gdiv``):

* :class:`DiversityMonitor` — after each backward: the unbiased, smoothed
  batch-size bound, the policy's next batch size, the LR rule, mechanisms
  (Langevin in norms mode; Dropout/Quantize in full mode), AMP, logging,
  checkpoints.
* :class:`AdaptiveBatchSampler` — a DataLoader ``batch_sampler`` whose
  batches follow the monitor's batch size (with or without replacement).

See ``gdiv.torch.norms`` for the scaling conventions (``loss_reduction``) and
``gdiv.torch.monitor`` for the loop.
"""

from .errors import CaptureError, NormsError, UnsupportedModuleError
from .monitor import RECORD_FIELDS, DiversityMonitor
from .norms import PerExampleNorms, per_example_grads, trainable_parameters
from .rules import RuleContext, find_norm_rule, register_norm_rule, registered_norm_rules
from .sampler import AdaptiveBatchSampler

__all__ = [
    "DiversityMonitor",
    "AdaptiveBatchSampler",
    "RECORD_FIELDS",
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
