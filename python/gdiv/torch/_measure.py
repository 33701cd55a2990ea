"""One measured step of the monitor, per mode: read the capture, reduce on
the device, gather over the ranks (one collective under DDP), one host copy,
and the keywords of the controller's observation. The numbers are handed to
Go, which converts and estimates; the scales say how the measured gradients
relate to the batch's (loss scale, mean loss, DDP averaging, accumulation).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._dist import DataParallel, step_values
from ._local import LocalGradients
from ._reduce import NoiseDraws, dense_grads, sq_norm
from .capture import PerExampleNorms
from .errors import CaptureError

__all__ = ["measure_norms", "measure_two_scale"]

_F64 = torch.float64


def measure_norms(
    norms: PerExampleNorms,
    params: Sequence[Tensor],
    dp: Optional[DataParallel],
    mean: bool,
    scales: Tuple[float, float],
    noise: NoiseDraws,
    seed: Optional[int],
    loss: Any,
    weighted: bool = False,
) -> Tuple[int, Dict[str, Any], Optional[float]]:
    """Norms mode: every micro-batch's per-example norms since the last step
    (the capture is reset), ‖.grad‖², and with a Langevin ``seed`` the noise
    moments. ``scales`` = (norms, .grad) loss scales; ``weighted``: the
    micro-batches' losses were weighted by size (micro_batches()).
    Returns (the global batch, the observation's keywords, the loss)."""
    try:
        raw = norms._raw_sq_norms()  # per-example norms of the loss as backpropagated
        sizes = norms._micro_sizes()
    finally:
        norms.reset()  # one step per backward: a second step() is an error
    if mean and len(set(sizes)) > 1 and not weighted:
        raise CaptureError(
            f"gdiv.torch: the {len(sizes)} micro-batches accumulated since the last monitor.step() have {sizes} "
            "examples; with a mean loss per micro-batch their examples weigh unequally in .grad, so the norms "
            "cannot be those of one batch. Use micro-batches of equal size (DataLoader(drop_last=True)), "
            "gdiv.torch.micro_batches(batch, max_size, monitor=monitor) (which weighs each loss by its size), "
            "or a sum-reduced loss"
        )
    batch = int(raw.shape[0])
    s_norm, s_grad = scales
    dev = raw.device
    sum_raw, sq_grad = raw.sum(dtype=_F64), sq_norm(dense_grads(params), dev)
    extra: List[Tensor] = [] if seed is None else list(noise.moments(params, seed, dev))
    kw: Dict[str, Any] = dict(mean=mean, norms_scale=s_norm, grad_scale=s_grad)
    if seed is not None:
        kw["dim"] = sum(p.numel() for p in params)
    # ‖.grad‖² and the Langevin moments are equal on every rank (after DDP's all-reduce)
    b = float(batch)
    (sum_sq,), same, (total, total_sq), loss_sum = step_values(
        dp, dev, [sum_raw], [sq_grad, *extra], [b, b * b], loss, b if dp is not None and mean else 1.0
    )
    if dp is not None:
        batch = int(total)
        if mean and dp.world * total_sq != total * total:
            raise CaptureError(
                "gdiv.torch: the ranks' local batches differ in size this step; DDP averages the ranks' mean "
                "losses, which weighs their examples unequally, so the norms cannot be those of one batch. Give "
                "every rank the same number of examples (gdiv.torch.DistributedAdaptiveBatchSampler, or "
                "DistributedSampler with drop_last=True) or use a sum-reduced loss"
            )
        if loss_sum is not None and mean:
            loss_sum /= total
        # DDP averages .grad over the P ranks: a mean loss's per-example
        # gradients are P times those of the global mean, a sum loss's
        # .grad is 1/P of the global sum (Go converts).
        if mean:
            kw["norms_scale"] = s_norm * dp.world
        else:
            kw["grad_scale"] = s_grad / dp.world
    kw["sum_sq_norms"], kw["sq_norm_batch_grad"] = sum_sq, same[0]
    if seed is not None:
        kw["noise_dot"], kw["noise_sq_norm"] = same[1], same[2]
    return batch, kw, loss_sum


def measure_two_scale(
    local: LocalGradients,
    params: Sequence[Tensor],
    dp: Optional[DataParallel],
    mean: bool,
    scales: Tuple[float, float],
    loss: Any,
) -> Tuple[int, Dict[str, Any], Optional[float]]:
    """two_scale mode: each backward pass's own gradient (a micro-batch on a
    rank) and the accumulated, all-reduced ``.grad``.
    Returns (the global batch, the observation's keywords, the loss)."""
    sq, sizes = local.take()
    if not sq or not sizes:
        raise CaptureError(
            "gdiv.torch: no train-mode forward and backward pass since the last monitor.step(): run the forward "
            "(model.train()) and loss.backward() first"
        )
    if len(sq) != len(sizes) or None in sizes:
        raise CaptureError(
            f"gdiv.torch: {len(sizes)} train-mode forward passes and {len(sq)} backward passes since the last "
            "monitor.step(); two_scale pairs each forward (a micro-batch, its examples along batch_dim) with one backward"
        )
    if len(set(sizes)) > 1:
        raise CaptureError(
            f"gdiv.torch: the micro-batches since the last monitor.step() have {sizes} examples; the two-scale "
            "estimate needs local gradients of equal batches (DataLoader(drop_last=True))"
        )
    k, b = len(sizes), int(sizes[0])  # type: ignore[arg-type]
    dev = sq[0].device
    local_sq = torch.stack(sq).sum()
    sq_grad = sq_norm(dense_grads(params), dev)
    s_norm, s_grad = scales
    world = 1 if dp is None else dp.world
    (local_sum,), (sq_grad_v,), (nk, nk2, nb, nb2, total), loss_sum = step_values(dp, dev, [local_sq], [sq_grad], [k, k * k, b, b * b, k * b], loss)
    if world * nk2 != nk * nk or world * nb2 != nb * nb:
        raise CaptureError(
            "gdiv.torch: the ranks' local batches or micro-batch counts differ this step; the two-scale "
            "estimate needs local gradients of equal batches on every rank (DistributedAdaptiveBatchSampler, "
            "or DistributedSampler with drop_last=True)"
        )
    n_local, batch = int(nk), int(total)
    loss = None if loss_sum is None else (loss_sum / world if mean else loss_sum)
    if n_local < 2:
        raise CaptureError(
            "gdiv.torch: mode='two_scale' needs at least 2 local gradients per step: under DDP 2 or more ranks, "
            "on one process 2 or more micro-batches (gradient accumulation: k backward passes, each of the mean "
            "loss divided by k, then one monitor.step())"
        )
    kw: Dict[str, Any] = dict(b_small=b, sq_norm_small=local_sum / n_local, sum_sq_norms=0.0, sq_norm_batch_grad=sq_grad_v, mean=mean)
    # A micro-batch's mean loss divided by k (the accumulation recipe):
    # its gradient is 1/k of its mean gradient. DDP averages .grad over
    # the ranks: a sum loss's is 1/P of the global sum. (Go converts.)
    kw["norms_scale"] = s_norm / k if mean else s_norm
    kw["grad_scale"] = s_grad if mean else s_grad / world
    return batch, kw, loss
