"""Adaptive batches for ``model.fit``: a ``tf.data.Dataset`` whose batches
have the size the monitor decided (``gdiv._batches.IndexStream``, the same
pass structure as ``gdiv.torch.AdaptiveBatchSampler``), drawn from a seeded
NumPy generator, with or without replacement.

Each batch is drawn when the training loop asks for it: the pipeline has no
prefetching (tf.data's autotuning and prefetch injection are off), so every
batch has the size decided after the step before it — Go's reference
schedule. The batch dimension is unknown to the graph, so Keras's
``tf.function`` (``reduce_retracing=True``) traces the train step at most
twice (the first shape, then a relaxed one); with ``jit_compile=True`` XLA
compiles once per distinct batch size (round them: ``BatchSizePolicy(multiple_of=...)``).
"""

from __future__ import annotations

import secrets
from typing import Any, Dict, Iterator, Optional

import numpy as np
import tensorflow as tf

from .._batches import IndexStream
from .._validate import check_seed

__all__ = ["AdaptiveBatches"]

_STATE_VERSION = 1


def _spec(a: np.ndarray) -> Any:
    return tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype))


class AdaptiveBatches(IndexStream):
    """Batches of (x, y[, sample_weight]) that follow ``monitor.batch_size``.

    Args:
        x: the inputs, an array (or a tuple/dict of arrays) with the
            examples along axis 0.
        y: the targets (or None), sample_weight: per-example weights (or None).
        monitor: a :class:`gdiv.keras.DiversityMonitor` (anything with a
            ``batch_size``), read at every batch.
        replacement: i.i.d. draws (the paper; the monitor's
            ``sampling="replacement"``) or shuffled epochs (``"shuffle"``).
        drop_last: end a pass before a batch that would cross n.
        seed: the NumPy generator's seed (None: a random one, kept in
            :meth:`state_dict`).

    Use ``model.fit(batches.dataset(), epochs=...)``: one epoch is one pass
    (about n examples).
    """

    _who = "gdiv.keras.AdaptiveBatches"

    def __init__(
        self,
        x: Any,
        y: Any = None,
        monitor: Any = None,
        *,
        sample_weight: Any = None,
        replacement: bool = True,
        drop_last: bool = False,
        seed: Optional[int] = None,
    ) -> None:
        if monitor is None or not hasattr(monitor, "batch_size"):
            raise TypeError(f"{self._who}: monitor must be a gdiv.keras.DiversityMonitor (anything with batch_size)")
        parts = [tf.nest.map_structure(np.asarray, x)]
        if y is not None:
            parts.append(tf.nest.map_structure(np.asarray, y))
        if sample_weight is not None:
            if y is None:
                raise ValueError(f"{self._who}: sample_weight needs y")
            parts.append(tf.nest.map_structure(np.asarray, sample_weight))
        self._data = tuple(parts) if len(parts) > 1 else parts[0]
        sizes = {a.shape[0] if a.ndim else None for a in tf.nest.flatten(self._data)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"{self._who}: x, y and sample_weight must have the same number of examples along axis 0, got {sorted(map(str, sizes))}")
        n = int(sizes.pop() or 0)
        if n < 1:
            raise ValueError(f"{self._who}: the data set has {n} examples; want at least 1")
        self.n = int(n)
        self.monitor = monitor
        self.replacement = bool(replacement)
        self.drop_last = bool(drop_last)
        self.seed = secrets.randbits(63) if seed is None else check_seed(seed)
        self.rng = np.random.default_rng(self.seed)
        self._reset_stream()

    def _randperm(self) -> np.ndarray:
        return self.rng.permutation(self.n)

    def _randint(self, b: int) -> np.ndarray:
        return self.rng.integers(0, self.n, b)

    def __iter__(self) -> Iterator[Any]:
        """One pass of (x, y[, sample_weight]) batches as NumPy arrays."""
        for idx in self._index_batches():
            take = np.asarray(idx, dtype=np.int64)
            yield tf.nest.map_structure(lambda a, t=take: a[t], self._data)

    def __len__(self) -> int:
        """An estimate: the batches left in the pass at the current batch size."""
        return self._batches_left()

    def dataset(self) -> Any:
        """The ``tf.data.Dataset`` of the passes (each iteration: one pass;
        no prefetching, so each batch follows the latest decision). Under
        the monitor's ``MirroredStrategy`` (more than one replica): the
        distributed dataset, each global batch split over the replicas,
        without fetching ahead to the devices; tf.distribute still reads one
        batch ahead, so there a decision takes effect a batch later (two at
        a pass's start); the monitor measures each batch as it is."""
        spec = tf.nest.map_structure(_spec, self._data)
        ds = tf.data.Dataset.from_generator(self.__iter__, output_signature=spec)
        opts = tf.data.Options()
        opts.autotune.enabled = False
        opts.experimental_optimization.inject_prefetch = False
        opts.deterministic = True
        ds = ds.with_options(opts)
        strategy = getattr(self.monitor, "strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            ahead = tf.distribute.InputOptions(experimental_fetch_to_device=False, experimental_per_replica_buffer_size=0)
            ds = strategy.experimental_distribute_dataset(ds, ahead)
        return ds

    def state_dict(self) -> Dict[str, Any]:
        """The pass position and the generator state (plain data)."""
        return {
            "version": _STATE_VERSION,
            "n": self.n,
            "replacement": self.replacement,
            "drop_last": self.drop_last,
            "rng": self.rng.bit_generator.state,
            "perm": None if self._perm is None else self._perm.tolist(),
            "pos": self._pos,
            "drawn": self._drawn,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"{self._who}.load_state_dict: state version {state.get('version')!r}, want {_STATE_VERSION}")
        for key in ("n", "replacement", "drop_last"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"{self._who}.load_state_dict: the state has {key}={state.get(key)!r}, this one {key}={getattr(self, key)!r}")
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        self.rng = rng
        self._perm = None if state["perm"] is None else np.asarray(state["perm"], dtype=np.int64)
        self._pos = int(state["pos"])
        self._drawn = int(state["drawn"])
        self.epoch = int(state["epoch"])

    def __repr__(self) -> str:
        return f"AdaptiveBatches(n={self.n}, replacement={self.replacement}, drop_last={self.drop_last}, batch_size={self.monitor.batch_size})"
