"""gdiv — gradient diversity and the largest useful batch size, over a Go core.

Implements Yin et al., "Gradient Diversity: a Key Ingredient for Scalable
Distributed Learning" (AISTATS 2018). For per-example gradients g_i:

    diversity    Δ   = Σ‖g_i‖² / ‖Σ g_i‖²
    batch bound  B_S = n·Δ = M²/G      (the largest batch size that converges
                                         like serial SGD per gradient computed)
    noise scale  trΣ/G = B_S − 1       (McCandlish et al.)

Every formula runs in Go (the ``gdiv`` Go package); this package validates
inputs and hands their memory to Go without copying (numpy arrays, torch CPU
tensors, Arrow arrays).

Core API:
    stats(grads), stats_differential(grads_w, grads_w2), stats_from_sums(...)
    Estimator(beta, ...), estimate(...), estimate_from_norms(...),
    estimate_from_sums(...), estimate_two_scale(...), batch_sums_from_scalars(...)
    Dropout(p, rescale=False), Langevin(std), Quantize(levels=1):
        .apply_(grads, seed=...), .apply(grads, seed=...), .expected(grads),
        .monte_carlo(grads, samples=..., seed=...)
    bounds.glm(X), bounds.sparse(grads), bounds.stability_step(...)
    BatchSizePolicy(delta=..., min_batch=..., ...): .next(current, estimate, step),
        .scale_lr(lr, old_batch, new_batch), .state_dict(), .load_state_dict(...)
    Controller(policy=..., batch_size=..., ...): .observe(batch, sums...) -> Decision,
        one Go call per measured step (estimate, smoothing, policy, LR factor);
        what every framework adapter calls; step_seed(seed, k)
    reference.train(X, y, ...), reference.step(...), reference.loss_grad(...),
        reference.initial_weights(...), reference.param_layout(...):
        Go's reference SGD trainer, the ground truth for framework integrations
    plot.history(history, path): a PNG of a training history (matplotlib)
    gdiv.torch (import separately): DiversityMonitor, AdaptiveBatchSampler,
        PerExampleNorms, per_example_grads

Errors: bad data raises subclasses of :class:`GdivError` (a ``ValueError``),
wrong types ``TypeError``; a call from a ``fork()``-ed child raises
:class:`ForkError` (use the 'spawn' start method).
"""

from . import bounds, plot, reference
from . import errors as _errors
from ._bridge import in_forked_child
from ._results import Estimate, Expectation, GLMBound, MonteCarloResult, SparseBound, Stats
from ._stats import stats, stats_differential, stats_from_sums
from ._version import __version__ as __version__
from .controller import Controller, Decision, step_seed
from .errors import *  # noqa: F403 — the exception classes, listed once in errors.__all__
from .estimator import Estimator, batch_sums_from_scalars, estimate, estimate_from_norms, estimate_from_sums, estimate_two_scale
from .mechanisms import Dropout, Langevin, Mechanism, Quantize
from .policy import BatchSizePolicy

__all__ = [
    "stats",
    "stats_differential",
    "stats_from_sums",
    "Stats",
    "Estimator",
    "Estimate",
    "estimate",
    "estimate_from_norms",
    "estimate_from_sums",
    "estimate_two_scale",
    "batch_sums_from_scalars",
    "Mechanism",
    "Dropout",
    "Langevin",
    "Quantize",
    "Expectation",
    "MonteCarloResult",
    "bounds",
    "BatchSizePolicy",
    "Controller",
    "Decision",
    "step_seed",
    "reference",
    "plot",
    "GLMBound",
    "SparseBound",
    "in_forked_child",
    *_errors.__all__,
]
