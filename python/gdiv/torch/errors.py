"""The errors of ``gdiv.torch``'s per-example capture, and the message for
train-mode BatchNorm (refused by the capture, by full mode and by the rule)."""

from torch import nn

__all__ = ["NormsError", "UnsupportedModuleError", "CaptureError", "batch_norm_message"]


class NormsError(RuntimeError):
    """Base class of the errors raised by ``gdiv.torch`` per-example capture."""


class UnsupportedModuleError(NormsError):
    """A module whose per-example gradients cannot be computed (no rule and no
    fallback, the fallback failed, BatchNorm in train mode, ...). The message
    names the module by type and qualified name."""


class CaptureError(NormsError):
    """Norms were asked for in a state where none are available or they would
    be wrong (no backward yet, eval-mode backward, backward twice, a
    parameter that received a gradient outside its module's forward, ...)."""


def batch_norm_message(layer: nn.Module, name: str) -> str:
    return (
        f"gdiv.torch: module '{name}' ({type(layer).__name__}) is in train mode and normalizes with "
        "batch statistics, which couple the examples of a batch: per-example gradients are not "
        "defined (for this layer and every layer before it). Use GroupNorm or LayerNorm, or put "
        "the BatchNorm layers in eval mode (running statistics; e.g. `m.eval()` for each BatchNorm "
        "after `model.train()`), or remove the per-example hooks for this model."
    )
