"""gdiv.torch.AdaptiveBatchSampler: batch lengths follow the monitor, each
index once per epoch without replacement, determinism by seed, resume,
DataLoader workers (fork) that never call gdiv.

The "monitor" in most tests is a stub with a ``batch_size`` attribute that the
test changes between batches (the sampler reads only that); one test runs a
real DiversityMonitor with DataLoader workers.
"""

from __future__ import annotations

import multiprocessing as mp
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import gdiv  # noqa: E402
from gdiv.torch import AdaptiveBatchSampler, DiversityMonitor  # noqa: E402

torch.set_num_threads(1)

SAMPLINGS = [pytest.param(True, id="replacement"), pytest.param(False, id="shuffle")]


class Stub:
    def __init__(self, batch_size):
        self.batch_size = batch_size


def take(sampler, stub, sizes):
    """Draw one batch per entry of sizes, setting the stub's size first;
    passes restart as a DataLoader's epochs would."""
    out = []
    it = iter(sampler)
    for b in sizes:
        stub.batch_size = b
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(sampler)
            out.append(next(it))
    return out


@pytest.mark.parametrize("replacement", SAMPLINGS)
def test_lengths_follow_the_monitor(replacement):
    stub = Stub(3)
    s = AdaptiveBatchSampler(50, stub, replacement=replacement, seed=0)
    sizes = [3, 3, 7, 1, 12, 12, 2, 30, 5, 49]
    batches = take(s, stub, sizes)
    assert [len(b) for b in batches] == sizes
    assert all(0 <= i < 50 and isinstance(i, int) for b in batches for i in b)


@pytest.mark.parametrize("sizes", [[7] * 40, [3, 11, 5, 17, 2, 9, 13] * 6], ids=["fixed", "varying"])
def test_without_replacement_each_index_once_per_epoch(sizes):
    n = 23
    stub = Stub(sizes[0])
    s = AdaptiveBatchSampler(n, stub, replacement=False, seed=1)
    stream = [i for b in take(s, stub, sizes) for i in b]
    # The stream is a concatenation of permutations of [0, n), batches that
    # cross a boundary continuing into the next one.
    full = len(stream) // n
    assert full >= 3
    for e in range(full):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n)), f"epoch {e}"


def test_without_replacement_pass_ends_after_the_crossing_batch():
    n, b = 10, 4
    stub = Stub(b)
    s = AdaptiveBatchSampler(n, stub, replacement=False, seed=2)
    first = list(s)
    assert [len(x) for x in first] == [4, 4, 4]  # the last one crosses into the next permutation
    second = list(s)
    assert [len(x) for x in second] == [4, 4]  # resumes at position 2 of that permutation: 8 left
    assert sorted(first[-1][2:] + [i for x in second for i in x]) == list(range(n))
    assert s.epoch == 2


def test_drop_last():
    stub = Stub(4)
    s = AdaptiveBatchSampler(10, stub, replacement=False, drop_last=True, seed=2)
    assert [len(x) for x in s] == [4, 4] and [len(x) for x in s] == [4, 4]
    r = AdaptiveBatchSampler(10, stub, replacement=True, drop_last=True, seed=2)
    assert [len(x) for x in r] == [4, 4]
    stub.batch_size = 11
    with pytest.raises(ValueError, match="drop_last"):
        next(iter(s))


def test_with_replacement_pass_covers_n_draws():
    stub = Stub(4)
    s = AdaptiveBatchSampler(10, stub, replacement=True, seed=3)
    assert [len(x) for x in s] == [4, 4, 4]  # ≥ 10 draws, the last batch whole
    assert len(s) == 3


def test_len_is_an_estimate_at_the_current_size():
    stub = Stub(4)
    s = AdaptiveBatchSampler(range(10), stub, replacement=False, seed=0)
    assert len(s) == 3
    stub.batch_size = 5
    assert len(s) == 2
    it = iter(s)
    next(it)
    assert len(s) == 1  # 5 left in the pass


@pytest.mark.parametrize("replacement", SAMPLINGS)
def test_deterministic_by_seed(replacement):
    sizes = [5, 9, 2, 14, 6, 6, 20]
    a = take(AdaptiveBatchSampler(40, st := Stub(5), replacement=replacement, seed=7), st, sizes)
    b = take(AdaptiveBatchSampler(40, st := Stub(5), replacement=replacement, seed=7), st, sizes)
    c = take(AdaptiveBatchSampler(40, st := Stub(5), replacement=replacement, seed=8), st, sizes)
    g = take(AdaptiveBatchSampler(40, st := Stub(5), replacement=replacement, generator=torch.Generator().manual_seed(7)), st, sizes)
    assert a == b == g and a != c


@pytest.mark.parametrize("replacement", SAMPLINGS)
def test_state_dict_resumes_mid_pass(replacement):
    sizes = [5, 9, 2, 14, 6, 6, 20, 3, 8]
    stub = Stub(5)
    whole = take(AdaptiveBatchSampler(30, stub, replacement=replacement, seed=4), stub, sizes)
    s = AdaptiveBatchSampler(30, stub, replacement=replacement, seed=4)
    head = take(s, stub, sizes[:4])
    state = s.state_dict()
    t = AdaptiveBatchSampler(30, stub, replacement=replacement, seed=99)
    t.load_state_dict(state)
    tail = take(t, stub, sizes[4:])
    assert head + tail == whole
    with pytest.raises(ValueError, match="replacement"):
        AdaptiveBatchSampler(30, stub, replacement=not replacement).load_state_dict(state)


def test_errors():
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveBatchSampler(0, Stub(2))
    with pytest.raises(TypeError, match="batch_size"):
        AdaptiveBatchSampler(5, object())
    with pytest.raises(ValueError, match="not both"):
        AdaptiveBatchSampler(5, Stub(2), seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="no batch size"):
        next(iter(AdaptiveBatchSampler(5, Stub(None))))
    with pytest.raises(ValueError, match="no batch size"):  # a monitor without policy or batch_size
        next(iter(AdaptiveBatchSampler(5, DiversityMonitor(nn.Linear(2, 2)))))


# ------------------------------------------------------ DataLoader workers ---


class ForkChecked(Dataset):
    """Tensors whose __getitem__ reports whether it runs in a forked child
    with gdiv's fork guard armed (gdiv unusable there: any Go call would
    raise ForkError)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], torch.tensor(gdiv.in_forked_child())


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_dataloader_workers_fork_and_never_call_gdiv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(max_batch=64), batch_size=4, dataset_size=120)
    sampler = AdaptiveBatchSampler(120, mon, replacement=False, seed=0)
    loader = DataLoader(ForkChecked(x, y), batch_sampler=sampler, num_workers=2, multiprocessing_context="fork")
    seen, forked = [], []
    for _ in range(3):
        for xb, yb, in_child in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            rec = mon.step()
            opt.step()
            seen.append(len(yb))
            forked.append(bool(in_child.all()))
            assert rec["batch"] == len(yb)
    assert all(forked), "batches were not built in forked workers"
    assert not gdiv.in_forked_child()
    assert len(set(seen)) > 2, seen  # the batch size changed, with the workers' lag
    decided = [r["next_batch"] for r in mon.history]
    assert set(seen[1:]) <= set(decided) | {4}
