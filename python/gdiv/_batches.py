"""The index stream behind every adaptive-batch sampler (``gdiv.torch``'s
``AdaptiveBatchSampler``, ``gdiv.keras``'s ``adaptive_dataset``): batches
whose size is the monitor's ``batch_size`` at the moment each is drawn,
with or without replacement (DESIGN decision 2). The framework supplies the
random draws (a ``torch.Generator``, a NumPy ``Generator``); the pass
structure is here, once.

* replacement: i.i.d. uniform indices; one pass yields batches until at
  least n indices were drawn, the last batch whole (``drop_last``: the pass
  ends before a batch that would pass n).
* without: a fresh permutation of [0, n) per epoch; a batch that crosses
  its end continues into the next one and ends the pass (every example
  exactly once per epoch); ``drop_last`` drops the rest of the permutation.
"""

from __future__ import annotations

from typing import Any, Iterator, List

__all__ = ["IndexStream"]


class IndexStream:
    """Mixin: set ``n``, ``monitor``, ``replacement``, ``drop_last`` and call
    :meth:`_reset_stream`; implement ``_randperm()`` (a permutation of
    [0, n) with ``tolist`` and slicing) and ``_randint(b)`` (b indices)."""

    n: int
    monitor: Any
    replacement: bool
    drop_last: bool
    _who = "AdaptiveBatchSampler"

    def _reset_stream(self) -> None:
        self._perm: Any = None  # without replacement: the current permutation
        self._pos = 0  # its next position
        self._drawn = 0  # with replacement: indices drawn in the current pass
        self.epoch = 0  # passes completed

    def _randperm(self) -> Any:
        raise NotImplementedError

    def _randint(self, b: int) -> Any:
        raise NotImplementedError

    def _batch_size(self) -> int:
        b = self.monitor.batch_size
        if b is None:
            raise ValueError(f"{self._who}: the monitor has no batch size yet: give DiversityMonitor(batch_size=...) or a policy")
        if isinstance(b, bool) or int(b) != b or b < 1:
            raise ValueError(f"{self._who}: monitor.batch_size = {b!r}, want an integer ≥ 1")
        if self.drop_last and b > self.n:
            raise ValueError(
                f"{self._who}: batch size {b} > {self.n} examples with drop_last=True would yield "
                "nothing; cap the policy's max_batch at the data set size"
            )
        return int(b)

    def _new_perm(self) -> None:
        self._perm = self._randperm()
        self._pos = 0

    def _index_batches(self) -> Iterator[List[int]]:
        """One pass."""
        if self.replacement:
            yield from self._iter_replacement()
        else:
            yield from self._iter_shuffle()
        self.epoch += 1

    def _iter_replacement(self) -> Iterator[List[int]]:
        n = self.n
        while self._drawn < n:
            b = self._batch_size()
            if self.drop_last and self._drawn + b > n:
                break
            idx = self._randint(b)
            self._drawn += b
            yield idx.tolist()
        self._drawn = 0

    def _iter_shuffle(self) -> Iterator[List[int]]:
        n = self.n
        if self._perm is None or self._pos >= n:
            self._new_perm()
        while True:
            b = self._batch_size()
            if self._pos + b <= n:
                out = self._perm[self._pos : self._pos + b].tolist()
                self._pos += b
                yield out
                if self._pos == n:
                    return
                continue
            if self.drop_last:
                self._pos = n  # the rest of this permutation is dropped
                return
            out = self._perm[self._pos :].tolist()
            while len(out) < b:  # continue into the next permutation(s)
                self._new_perm()
                take = min(b - len(out), n)
                out += self._perm[:take].tolist()
                self._pos = take
            yield out
            return

    def _batches_left(self) -> int:
        """An estimate: the batches of the rest of the pass at the current
        batch size, ⌈r/B⌉ (⌊r/B⌋ with drop_last)."""
        b = self._batch_size()
        if self.replacement:
            left = self.n - self._drawn
        else:
            left = self.n - self._pos if self._perm is not None and self._pos < self.n else self.n
        return left // b if self.drop_last else -(-left // b)
