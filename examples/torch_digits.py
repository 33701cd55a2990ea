#!/usr/bin/env python3
"""Train a small MLP on scikit-learn's digits with PyTorch, five ways, on the
same example budget, with gdiv's DiversityMonitor and AdaptiveBatchSampler:

  fixed 16            batch 16, lr η = 0.1 (mean-reduced loss)
  fixed 512           batch 512, lr η (per example 32× smaller than batch 16's)
  fixed 512, lr×32    batch 512, lr 32η: the same per-example step η/16 (the linear rule)
  adaptive            DiversityMonitor + AdaptiveBatchSampler + BatchSizePolicy: the
                      batch follows B = δ·B̂_S + 1 in [16, 1024] and the lr the linear
                      rule from η at 16 (the paper's sum step: per-example step η/16)
  adaptive+Langevin   the same with a diversity-inducing mechanism: Langevin noise,
                      added once to the batch gradient (norms mode)

and print a table (steps, examples, final train / test loss and accuracy, mean
batch, wall time; the mean ± standard deviation over seeds) and write a PNG
(training loss vs examples; batch size and B̂_S vs examples for the adaptive
runs; the first seed). The data is testdata/digits.csv (1797 8×8 images, 10
classes; no scikit-learn needed), split 80/20 (seeded) and standardized with
the training split's statistics.

    python examples/torch_digits.py            # 5 seeds × 30 passes: about half a minute on 2 cores
    python examples/torch_digits.py --quick    # 1 seed × 6 passes: a few seconds
    python examples/torch_digits.py --out DIR  # the PNG goes to DIR/torch_digits.png

Needs torch, numpy, matplotlib (for the PNG) and gdiv (`make py-install`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

import gdiv
import gdiv.plot
import gdiv.torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, Run, load_digits, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------- data ---


class Tensors(Dataset):
    """(x, y) tensors, fetched a whole batch at a time: DataLoader calls
    ``__getitems__`` with the sampler's index list (no per-example Python
    calls, no collation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def __getitems__(self, idx: List[int]):
        t = torch.as_tensor(idx)
        return self.x[t], self.y[t]


def first(batch):  # the collate_fn for __getitems__: the batch is already built
    return batch


def load(seed: int):
    (xtr, ytr), (xte, yte) = load_digits(seed)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr)), (torch.from_numpy(xte), torch.from_numpy(yte))


def mlp(seed: int, hidden: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.eval()
    out = model(x)
    model.train()
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- training ---


def train(
    name: str,
    train_set: Tensors,
    test,
    *,
    budget: int,
    lr: float,
    hidden: int,
    seed: int,
    batch: Optional[int] = None,
    policy: Optional[gdiv.BatchSizePolicy] = None,
    mechanism: Optional[gdiv.Mechanism] = None,
    evals: int = 40,
) -> Run:
    """SGD on a mean-reduced cross-entropy until ``budget`` examples have been
    processed (the last batch whole). A fixed ``batch``, or a gdiv ``policy``
    (starting at its min_batch)."""
    model = mlp(seed, hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = len(train_set)
    monitor = None
    if policy is None:
        g = torch.Generator().manual_seed(seed)
        sampler = BatchSampler(RandomSampler(train_set, generator=g), batch, drop_last=False)
    else:
        # The three lines gdiv adds to a training loop: the monitor, its sampler, monitor.step().
        monitor = gdiv.torch.DiversityMonitor(model, optimizer=opt, policy=policy, mechanism=mechanism, dataset_size=n, estimator_beta=0.9, seed=seed)
        sampler = gdiv.torch.AdaptiveBatchSampler(train_set, monitor, replacement=False, seed=seed)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=first)
    run = Run(name)
    every = max(1, budget // evals)
    next_eval = 0
    bar = Progress(name, budget)
    t0 = time.perf_counter()
    done = False
    while not done:
        for x, y in loader:
            if run.examples >= next_eval:  # the full training loss at regular example counts
                tl, _ = evaluate(model, train_set.x, train_set.y)
                run.history.append({"examples": run.examples, "loss": tl})
                next_eval += every
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            rec = monitor.step(loss=loss) if monitor is not None else None
            opt.step()
            run.steps += 1
            run.examples += len(y)
            run.batches.append(len(y))
            if rec is not None:  # the adaptive runs' batch size and bound estimate
                run.history.append({"examples": run.examples, "batch": len(y), "batch_bound": rec["batch_bound"]})
            bar.update(run.examples, batch=len(y), loss=f"{loss.item():.3f}")
            if run.examples >= budget:
                done = True
                break
    run.seconds = time.perf_counter() - t0
    bar.close()
    if monitor is not None:
        monitor.remove()
    tl, ta = evaluate(model, train_set.x, train_set.y)
    run.history.append({"examples": run.examples, "loss": tl})
    vl, va = evaluate(model, *test)
    run.result = {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va}
    return run


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 6 passes, hidden 32 (a few seconds)")
    ap.add_argument("--out", default=str(ROOT / "examples" / "out"), help="directory of the PNG (default examples/out)")
    ap.add_argument("--epochs", type=float, default=None, help="passes over the training set per run (default 30; 6 with --quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 5; 1 with --quick)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # tiny matrices: threads cost more than they give
    epochs = args.epochs if args.epochs is not None else (6 if args.quick else 30)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    hidden = 32 if args.quick else 64
    lr = 0.1  # for batch 16 (mean loss): a per-example step of 0.1/16
    policy = gdiv.BatchSizePolicy(delta=1.0, min_batch=16, max_batch=1024, lr_rule="linear")
    langevin = gdiv.Langevin(std=0.05)
    methods = {
        "fixed 16": dict(batch=16, lr=lr),
        "fixed 512": dict(batch=512, lr=lr),
        "fixed 512, lr×32": dict(batch=512, lr=32 * lr),
        "adaptive": dict(policy=policy, lr=lr),
        "adaptive+Langevin": dict(policy=policy, mechanism=langevin, lr=lr),
    }
    results: Dict[str, List[Run]] = {m: [] for m in methods}
    t0 = time.perf_counter()
    for seed in range(seeds):
        train_xy, test = load(seed)
        train_set = Tensors(*train_xy)
        n = len(train_set)
        budget = int(math.ceil(epochs * n))
        if seed == 0:
            print(
                f"digits: {n} train / {len(test[1])} test examples, MLP 64-{hidden}-10 (tanh), SGD, mean loss, "
                f"{epochs:g} passes = {budget} examples per run, {seeds} seed(s)",
                file=sys.stderr,
            )
        for name, kw in methods.items():
            label = name if seeds == 1 else f"{name} s{seed}"
            results[name].append(train(label, train_set, test, budget=budget, hidden=hidden, seed=seed, **kw))
    note = (
        f"lr η = {lr} at batch 16. adaptive: B = δ·B̂_S + 1 (δ = {policy.delta:g}) in "
        f"[{policy.min_batch}, {policy.max_batch}], without replacement (estimator with the finite-population "
        f"correction), EMA β = 0.9, lr rule {policy.lr_rule}; Langevin: gdiv.Langevin(std={langevin.std:g}) "
        f"in norms mode. Total {time.perf_counter() - t0:.1f} s."
    )
    report(results, note, Path(args.out) / "torch_digits.png", f"MLP on digits, {epochs:g} passes per run (seed 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
