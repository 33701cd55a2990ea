"""Full mode: materialized per-example gradients, the (B, P) matrix, by
``torch.func`` in chunks under a memory budget."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._hooks import _no_capture
from ._units import _display, _is_batch_norm, _uses_batch_stats, trainable_parameters
from .errors import UnsupportedModuleError, batch_norm_message

__all__ = ["per_example_grads", "trainable_parameters"]

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
            raise ValueError(f"per_example_grads: loss_fn must return a scalar tensor, got shape {tuple(getattr(loss, 'shape', ()))}")
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
                    f"per_example_grads: torch.func could not compute per-example gradients of {type(model).__name__}: {type(e).__name__}: {e}"
                ) from e
            # One pass into the preallocated rows; this chunk's gradients are
            # dropped before the next chunk is computed.
            torch.cat([g[n].reshape(stop - start, -1) for n, _ in named], dim=1, out=out[start:stop])
            del g
    return out
