"""The error of ``gdiv.keras``'s per-example norms, and the message for
train-mode BatchNormalization (refused by its rule; the capture may give the
same advice)."""

from __future__ import annotations

from typing import Any

__all__ = ["UnsupportedLayerError", "batch_norm_message"]


class UnsupportedLayerError(ValueError):
    """A layer whose per-example gradient norms cannot be computed: a
    configuration its rule does not handle, train-mode BatchNormalization, an
    output the fallback cannot take (not a single tensor), ... The message
    names the layer by ``layer.name`` and class."""


def batch_norm_message(layer: Any) -> str:
    """The advice for a BatchNormalization layer called in training mode."""
    return (
        f"gdiv.keras: layer '{layer.name}' ({type(layer).__name__}) is called in training mode and normalizes "
        "with batch statistics, which couple the examples of a batch: per-example gradients are not defined "
        "by the batch's loss (for this layer and every layer before it). Replace it by LayerNormalization or "
        "GroupNormalization, or freeze it (`layer.trainable = False`, which in Keras 3 also runs it in "
        "inference mode, with its moving statistics), or use the monitor's mode='two_scale', which needs no "
        "per-example gradients."
    )
