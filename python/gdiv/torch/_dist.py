"""The monitor's view of data-parallel training (torch.distributed, DDP).

Every rank captures its own examples; one all-reduce of a few float64 scalars
per measured step makes every rank hold the same global numbers, so every
rank's Go controller receives the same input and makes the same decision,
bit for bit. Values that are already equal on every rank (the squared norm
of the all-reduced ``.grad``) enter the sum from rank 0 only (x + 0 + … = x
exactly), so no rank's rounding can differ.

Nothing here is a formula: the scales say how DDP's averaging relates the
measured gradients to the global batch's, and Go converts.
"""

from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .errors import CaptureError

__all__ = ["DataParallel", "resolve", "step_values"]

_F64 = torch.float64


class DataParallel:
    """A process group the monitor reduces over, and this rank's place in it.

    DDP averages the ranks' gradients: ``.grad`` = (1/P) Σ_r ∇L_r. With a
    mean loss over b local examples, L_r = (1/b) Σ_{i∈r} ℓ_i, so with equal
    local batches ``.grad`` is the mean over the global batch B = P·b, and
    each per-example gradient as backpropagated is P times that of the
    global mean loss (``norms_scale`` P). With a sum loss ``.grad`` is Σ/P
    (``grad_scale`` 1/P) and any local batches are exact.
    """

    def __init__(self, group: Any) -> None:
        import torch.distributed as dist

        self.group = group
        self.world = int(dist.get_world_size(group))
        self.rank = int(dist.get_rank(group))

    def all_reduce(self, vec: Tensor) -> Tensor:
        """Σ over the ranks of a float64 vector: the measured step's one
        collective (in place; returns ``vec``)."""
        import torch.distributed as dist

        dist.all_reduce(vec, op=dist.ReduceOp.SUM, group=self.group)
        return vec

    def from_rank0(self, value: Tensor) -> Tensor:
        """``value`` on rank 0, 0 elsewhere: summed, every rank gets rank
        0's value exactly."""
        return value if self.rank == 0 else torch.zeros_like(value)

    def broadcast_int(self, value: int, device: torch.device) -> int:
        """Rank 0's integer on every rank (a seed drawn at random)."""
        import torch.distributed as dist

        t = torch.tensor([value if self.rank == 0 else 0], dtype=torch.int64, device=device)
        dist.broadcast(t, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0, group=self.group)
        return int(t.item())

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world})"


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _refuse_sharded(model: nn.Module) -> None:
    names = {type(m).__name__ for m in model.modules()}
    if names & {"FullyShardedDataParallel", "FSDPModule"} or any(n.startswith("FSDP") for n in names):
        raise CaptureError(
            "gdiv.torch: FSDP shards the parameters and their gradients over the ranks; per-example norms "
            "need every layer's whole weight. Use DistributedDataParallel"
        )


def resolve(model: nn.Module, process_group: Any) -> Optional[DataParallel]:
    """The data-parallel context of a monitored model.

    ``process_group="auto"``: a ``DistributedDataParallel`` model under an
    initialized torch.distributed reduces over its own process group; any
    other model is single-process. None: single-process (each rank measures
    alone; its decisions may differ from the other ranks'). A process group:
    reduce over it (the model's gradients must be averaged over it as DDP
    does).
    """
    _refuse_sharded(model)
    if isinstance(process_group, str):
        if process_group != "auto":
            raise ValueError(f"DiversityMonitor: process_group must be 'auto', None or a process group, got {process_group!r}")
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return None
        if not _is_ddp(model):
            if dist.get_world_size() > 1:
                warnings.warn(
                    f"DiversityMonitor: torch.distributed is initialized ({dist.get_world_size()} ranks) but the model is "
                    f"not a DistributedDataParallel ({type(model).__name__}): this rank measures and decides alone, "
                    "and the ranks' batch sizes may differ. Monitor the DDP wrapper, or pass "
                    "process_group=torch.distributed.group.WORLD if the gradients are averaged over it; "
                    "process_group=None silences this",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        return DataParallel(getattr(model, "process_group", None))
    if process_group is None:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("DiversityMonitor: process_group given but torch.distributed is not initialized (init_process_group first)")
    return DataParallel(process_group)


def step_values(
    dp: Optional[DataParallel],
    device: torch.device,
    summed: List[Tensor],
    same: List[Tensor],
    counts: List[float],
    loss: Any,
    loss_weight: float = 1.0,
) -> Tuple[List[float], List[float], List[float], Optional[float]]:
    """The measured step's one host copy — and, under data parallelism, its
    one all-reduce.

    Args:
        summed: 0-dim float64 tensors summed over the ranks (local sums).
        same: 0-dim float64 tensors already equal on every rank (taken from
            rank 0 alone, so every rank gets the same bits).
        counts: numbers summed over the ranks (batch sizes and the like).
        loss: the recorded loss (a scalar tensor, a number or None),
            multiplied by ``loss_weight`` before the sum.

    Returns:
        (summed, same, counts, loss sum — None unless every rank gave one).
    """
    loss_t = _loss_tensor(loss, device)
    has = 0.0 if loss_t is None else 1.0
    lw = torch.zeros((), dtype=_F64, device=device) if loss_t is None else loss_t * loss_weight
    if dp is None:
        vals = torch.stack([*summed, *same, lw]).to("cpu").tolist()
        counted = [*counts, has]
    else:
        head = torch.stack([*summed, *(dp.from_rank0(t) for t in same), lw])
        vec = dp.all_reduce(torch.cat([head, torch.tensor([*counts, has], dtype=_F64, device=device)]))
        vals = vec.to("cpu").tolist()
        counted = vals[len(summed) + len(same) + 1 :]
    ns, nm = len(summed), len(same)
    n_loss = counted.pop()
    world = 1 if dp is None else dp.world
    return vals[:ns], vals[ns : ns + nm], counted, (vals[ns + nm] if n_loss >= world else None)


def _loss_tensor(loss: Any, device: torch.device) -> Optional[Tensor]:
    """The recorded loss as a float64 0-dim tensor on ``device`` (None
    without a loss), read with the step's other sums."""
    if loss is None:
        return None
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"DiversityMonitor.step: loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
        return loss.detach().reshape(()).to(device=device, dtype=_F64)
    return torch.tensor(float(loss), dtype=_F64, device=device)
