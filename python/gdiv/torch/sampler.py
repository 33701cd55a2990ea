"""AdaptiveBatchSampler: a DataLoader ``batch_sampler`` whose batches have the
size a :class:`gdiv.torch.DiversityMonitor` decided.

Each index list has length ``monitor.batch_size`` *at the moment the
DataLoader asks for it*. Without workers (``num_workers=0``) that is right
after the previous step's ``monitor.step()``, so every batch has the size
decided after the step before it — the reference trainer's schedule. With
workers the DataLoader asks ahead (``prefetch_factor × num_workers`` batches
in flight), so a new size takes effect that many batches later; the monitor
reads the size of each batch it sees, so estimates and the lr stay correct.

The sampler runs in the main process only: DataLoader workers receive index
lists and call ``dataset[i]``, never gdiv, so fork-started workers are fine
(gdiv's fork guard would raise :class:`gdiv.ForkError` in a worker that
called Go).

Sampling (DESIGN decision 2):

* ``replacement=True`` (default): i.i.d. uniform indices — the paper's
  sampling, under which Lemma 1 is exact (pair with the monitor's
  ``sampling="replacement"``). One pass over the sampler ("an epoch") yields
  batches until at least n indices were drawn; the last batch is whole
  (``drop_last=True``: the pass ends before a batch that would pass n).
* ``replacement=False``: shuffled epochs, a fresh permutation of [0, n) per
  epoch from the generator. A batch that crosses the end of the permutation
  continues into the next one (every example exactly once per epoch, as
  Go's ``Shuffle``; such a batch may hold an example twice) and ends the
  pass; the next pass continues in that permutation. ``drop_last=True``
  instead drops the rest of the permutation and starts the next pass on a
  fresh one. Pair with the monitor's ``sampling="shuffle"`` (its
  ``dataset_size`` default).

Randomness comes only from the sampler's ``torch.Generator`` (``seed`` or
``generator``), so a seeded sampler gives the same batches for the same
sizes, and :meth:`AdaptiveBatchSampler.state_dict` resumes mid-pass.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any, Dict, Iterator, List, Optional, Sized, Union

import torch
from torch.utils.data import Sampler

from .._batches import IndexStream
from .._validate import check_seed

__all__ = ["AdaptiveBatchSampler", "DistributedAdaptiveBatchSampler", "micro_batches"]

_STATE_VERSION = 1


class AdaptiveBatchSampler(Sampler[List[int]], IndexStream):
    """A ``batch_sampler`` for ``torch.utils.data.DataLoader`` that follows
    the monitor's batch size.

    Args:
        data_source: the data set (anything with ``len``) or its size n.
        monitor: a :class:`gdiv.torch.DiversityMonitor` (or any object with a
            ``batch_size`` attribute ≥ 1), read at every batch.
        replacement: True for i.i.d. draws (the paper), False for shuffled
            epochs (see the module doc).
        drop_last: end a pass before a batch that would cross n (see the
            module doc).
        generator: the ``torch.Generator`` to draw from (CPU); or
        seed: seed a new generator (None and no generator: a random seed,
            kept in :meth:`state_dict`).

    Raises:
        ValueError: n < 1, both generator and seed, a bad seed.

    Example:
        >>> sampler = AdaptiveBatchSampler(ds, monitor, replacement=False, seed=0)
        >>> loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)
    """

    def __init__(
        self,
        data_source: Union[int, Sized],
        monitor: Any,
        *,
        replacement: bool = True,
        drop_last: bool = False,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        n = data_source if isinstance(data_source, int) and not isinstance(data_source, bool) else None
        if n is None:
            if not hasattr(data_source, "__len__"):
                raise TypeError(f"AdaptiveBatchSampler: data_source must be a sized data set or an int, got {type(data_source).__name__}")
            n = len(data_source)  # type: ignore[arg-type]
        if n < 1:
            raise ValueError(f"AdaptiveBatchSampler: the data set has {n} examples; want at least 1")
        if not hasattr(monitor, "batch_size"):
            raise TypeError(f"AdaptiveBatchSampler: monitor must have a batch_size (a gdiv.torch.DiversityMonitor), got {type(monitor).__name__}")
        if generator is not None and seed is not None:
            raise ValueError("AdaptiveBatchSampler: give a generator or a seed, not both")
        if generator is None:
            seed = secrets.randbits(63) if seed is None else check_seed(seed)
            generator = torch.Generator().manual_seed(seed)
        self.n = n
        self.monitor = monitor
        self.replacement = bool(replacement)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.seed = seed
        self._reset_stream()

    def _randperm(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator)

    def _randint(self, b: int) -> torch.Tensor:
        return torch.randint(self.n, (b,), generator=self.generator)

    def __iter__(self) -> Iterator[List[int]]:
        return self._index_batches()

    def __len__(self) -> int:
        """An estimate: the number of batches of one pass at the current
        batch size, ⌈r/B⌉ (⌊r/B⌋ with drop_last) for the r examples left in
        the pass. The true number changes when the monitor changes B during
        the pass; DataLoader uses it only for ``len(loader)``."""
        return self._batches_left()

    def state_dict(self) -> Dict[str, Any]:
        """The position in the current pass and the generator state, to resume
        mid-pass (``torch.save``-able; holds tensors). With DataLoader workers
        the state includes batches already requested ahead but not yet
        trained on: checkpoint with ``num_workers=0`` or accept the skip."""
        return {
            "version": _STATE_VERSION,
            "n": self.n,
            "replacement": self.replacement,
            "drop_last": self.drop_last,
            "generator": self.generator.get_state(),
            "perm": None if self._perm is None else self._perm.clone(),
            "pos": self._pos,
            "drawn": self._drawn,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: another data set size, sampling or version.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"AdaptiveBatchSampler.load_state_dict: state version {state.get('version')!r}, want {_STATE_VERSION}")
        for key in ("n", "replacement", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"AdaptiveBatchSampler.load_state_dict: the state has {key}={state[key]!r}, this sampler {key}={getattr(self, key)!r}"
                )
        self.generator.set_state(state["generator"])
        self._perm = None if state["perm"] is None else state["perm"].clone()
        self._pos = int(state["pos"])
        self._drawn = int(state["drawn"])
        self.epoch = int(state["epoch"])

    def __repr__(self) -> str:
        return f"AdaptiveBatchSampler(n={self.n}, replacement={self.replacement}, drop_last={self.drop_last}, batch_size={self.monitor.batch_size})"


class DistributedAdaptiveBatchSampler(AdaptiveBatchSampler):
    """The data-parallel ``batch_sampler``: every rank draws the same global
    batches (one seeded stream, as :class:`AdaptiveBatchSampler` with the
    same seed in one process) and yields its contiguous share of each.

    A global batch of B = ``monitor.batch_size`` examples (the same on every
    rank: the monitor's decisions are) is split into P equal shares of B/P;
    rank r gets examples [r·B/P, (r+1)·B/P) of it. The monitor's policy is
    rounded to multiples of P (``DiversityMonitor`` under DDP does it), so
    the shares are always equal. Concatenating the ranks' shares gives the
    single-process sampler's batch, so a P-rank run sees the examples a
    single-process run with batch B sees.

    Args:
        data_source, monitor, replacement, drop_last: as
            :class:`AdaptiveBatchSampler` (the data set is the whole one,
            not a shard).
        seed: the stream's seed; it must be the same on every rank. None:
            rank 0 draws one and broadcasts it (a collective: every rank
            must build its sampler).
        num_replicas, rank: the world size and this rank (default: those
            of the monitor's process group, else torch.distributed's).

    Raises:
        ValueError: as :class:`AdaptiveBatchSampler`; a global batch that P
            does not divide (names the batch and P); a rank outside [0, P).

    Example:
        >>> sampler = DistributedAdaptiveBatchSampler(ds, monitor, replacement=False, seed=0)
        >>> loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)
    """

    def __init__(
        self,
        data_source: Union[int, Sized],
        monitor: Any,
        *,
        replacement: bool = True,
        drop_last: bool = False,
        seed: Optional[int] = None,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ) -> None:
        dp = getattr(monitor, "_dp", None)
        if num_replicas is None or rank is None or seed is None:
            import torch.distributed as dist

            if dp is None and not (dist.is_available() and dist.is_initialized()):
                raise ValueError("DistributedAdaptiveBatchSampler: torch.distributed is not initialized; give num_replicas, rank and seed")
            if num_replicas is None:
                num_replicas = dp.world if dp is not None else dist.get_world_size()
            if rank is None:
                rank = dp.rank if dp is not None else dist.get_rank()
            if seed is None:
                if dp is None:
                    raise ValueError("DistributedAdaptiveBatchSampler: give a seed (the same on every rank)")
                seed = dp.broadcast_int(secrets.randbits(63), torch.device("cpu") if _gloo(dp) else torch.device("cuda"))
        for name, v in (("num_replicas", num_replicas), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"DistributedAdaptiveBatchSampler: {name} must be an integer, got {v!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedAdaptiveBatchSampler: rank {rank} of {num_replicas} replicas: want 0 ≤ rank < num_replicas ≥ 1")
        super().__init__(data_source, monitor, replacement=replacement, drop_last=drop_last, seed=seed)
        self.num_replicas = num_replicas
        self.rank = rank

    def _share(self, batch: List[int]) -> List[int]:
        p = self.num_replicas
        b = len(batch)
        if b % p:
            raise ValueError(
                f"DistributedAdaptiveBatchSampler: a global batch of {b} examples does not split over {p} ranks; "
                f"give the policy multiple_of={p} (DiversityMonitor does under DDP) or an initial batch_size divisible by {p}"
            )
        k = b // p
        return batch[self.rank * k : (self.rank + 1) * k]

    def __iter__(self) -> Iterator[List[int]]:
        for batch in super().__iter__():
            yield self._share(batch)

    def __len__(self) -> int:
        return super().__len__()

    def __repr__(self) -> str:
        return (
            f"DistributedAdaptiveBatchSampler(n={self.n}, rank={self.rank}, num_replicas={self.num_replicas}, "
            f"replacement={self.replacement}, batch_size={self.monitor.batch_size})"
        )


def _gloo(dp: Any) -> bool:
    import torch.distributed as dist

    try:
        return dist.get_backend(dp.group) == "gloo"
    except Exception:  # noqa: BLE001 — unknown backends: the CPU
        return True


def micro_batches(batch: Any, max_size: int, *, model: Any = None, monitor: Any = None) -> Iterator[Any]:
    """Split one (local) batch into micro-batches of at most ``max_size``
    examples for gradient accumulation — the per-device memory cap — with
    each micro-batch's loss weight, so that ``.grad`` is the whole batch's
    mean gradient whatever the sizes.

    Yields ``(micro, weight)`` for k = ⌈n/max_size⌉ micro-batches whose
    sizes differ by at most one; ``micro`` has the structure of ``batch`` (a
    tensor, or a tuple/list of tensors, batch first), ``weight`` = its size
    / n. Multiply each micro-batch's mean loss by ``weight`` and backward it:
    every example then weighs 1/n, as in one pass over the batch. With a
    DDP ``model``, every backward but the last runs under
    ``model.no_sync()`` (one all-reduce per batch). With the ``monitor``,
    unequal micro-batches are accepted for this step (norms mode: the
    weights make them one batch; two_scale still needs equal ones).

    Example:
        >>> for (xm, ym), w in micro_batches((x, y), 64, model=ddp, monitor=monitor):
        ...     (F.cross_entropy(ddp(xm), ym) * w).backward()
        >>> rec = monitor.step()   # one batch of len(x) local examples
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"micro_batches: max_size must be an integer ≥ 1, got {max_size!r}")
    parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
    if not parts or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in parts):
        raise TypeError("micro_batches: batch must be a tensor or a tuple/list of tensors, batch first")
    n = int(parts[0].shape[0])
    if n < 1 or any(int(t.shape[0]) != n for t in parts):
        raise ValueError(f"micro_batches: the tensors' batch sizes differ or are 0: {[int(t.shape[0]) for t in parts]}")
    k = -(-n // max_size)
    sizes = [n // k + (1 if j < n % k else 0) for j in range(k)]
    if monitor is not None:
        monitor._weighted_micro = True
    start = 0
    for j, m in enumerate(sizes):
        chunk = [t[start : start + m] for t in parts]
        micro: Any = tuple(chunk) if isinstance(batch, tuple) else chunk if isinstance(batch, list) else chunk[0]
        start += m
        sync = model.no_sync() if model is not None and j < k - 1 and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            yield micro, m / n
