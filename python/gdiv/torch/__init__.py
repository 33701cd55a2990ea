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
* :class:`DistributedAdaptiveBatchSampler` — the same global batches on
  every rank of a DDP job, each rank yielding its equal share;
  :func:`micro_batches` splits a batch under a per-device memory cap into
  weighted micro-batches (gradient accumulation).

Modules: ``capture`` (norms mode), ``full`` (full mode), ``rules`` (the rule
table, one module per layer family, ``rules.fused_conv``), ``fallback`` (the
``torch.func`` fallback), ``errors``; ``monitor`` and ``sampler``; private:
``_measure`` (one measured step per mode), ``_dist`` (DDP: the step's one
all-reduce), ``_local`` (two_scale's local gradients), ``_reduce``. The scaling
conventions (``loss_reduction``), hooks, fused convolutions, fallbacks and what
is refused: python/README.md, "Per-example norms in PyTorch".
"""

from .capture import PerExampleNorms
from .errors import CaptureError, NormsError, UnsupportedModuleError
from .full import per_example_grads, trainable_parameters
from .monitor import RECORD_FIELDS, DiversityMonitor
from .rules import RuleContext, find_norm_rule, register_norm_rule, registered_norm_rules
from .sampler import AdaptiveBatchSampler, DistributedAdaptiveBatchSampler, micro_batches

__all__ = [
    "DiversityMonitor",
    "AdaptiveBatchSampler",
    "DistributedAdaptiveBatchSampler",
    "micro_batches",
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
