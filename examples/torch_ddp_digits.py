#!/usr/bin/env python3
"""The distributed main job: the digits MLP trained with DistributedDataParallel
(gloo on the CPU, NCCL on GPUs), a fixed small global batch against
gdiv-adaptive global batches, measured two ways:

  fixed 16             global batch 16 (16/P per rank), lr η = 0.1 (mean loss)
  adaptive norms       DiversityMonitor(ddp_model) + DistributedAdaptiveBatchSampler:
                       per-example norms on each rank, one all-reduce per step;
                       B = δ·B̂_S + 1 in [16, 1024], rounded to the world size;
                       linear lr rule from η at 16
  adaptive two_scale   the same policy with mode="two_scale": no per-example work,
                       the ranks' local gradients against the all-reduced one

The norms-mode run also carries a second, measuring-only two_scale monitor, so
the PNG shows both estimates of B̂_S on one run. Rank 0 prints the table (steps,
examples, final train / test loss and accuracy, mean global batch, wall time)
and writes the PNG; every rank checks that all ranks made the same decisions.

    torchrun --standalone --nproc_per_node 2 examples/torch_ddp_digits.py            # about a minute on 2 cores
    torchrun --standalone --nproc_per_node 2 examples/torch_ddp_digits.py --quick    # a few seconds
    # two machines (run on each; node 0's address):
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST0:29500 --rdzv_id digits examples/torch_ddp_digits.py

Needs torch, numpy, matplotlib (the PNG) and gdiv.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gdiv  # noqa: E402
import gdiv.plot  # noqa: E402
import gdiv.torch  # noqa: E402
from _common import Progress, Run, table  # noqa: E402
from torch_digits import ROOT, Tensors, evaluate, load, mlp  # noqa: E402


class Fixed:
    """A fixed global batch for the sampler (anything with batch_size)."""

    def __init__(self, b: int) -> None:
        self.batch_size = b


def train(
    name: str,
    train_set: Tensors,
    test,
    *,
    budget: int,
    lr: float,
    hidden: int,
    seed: int,
    device: torch.device,
    policy: Optional[gdiv.BatchSizePolicy] = None,
    mode: str = "norms",
    batch: int = 16,
    side_by_side: bool = False,
    verbose: bool = True,
    evals: int = 30,
) -> Run:
    """DDP SGD on a mean-reduced cross-entropy until ``budget`` global
    examples; the monitor's numbers and decisions are global."""
    rank = dist.get_rank()
    model = mlp(seed, hidden).to(device)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = len(train_set)
    monitor = view = None
    if policy is None:
        sampler = gdiv.torch.DistributedAdaptiveBatchSampler(n, Fixed(batch), replacement=False, seed=seed)
    else:
        monitor = gdiv.torch.DiversityMonitor(ddp, optimizer=opt, policy=policy, mode=mode, dataset_size=n, seed=seed)
        sampler = gdiv.torch.DistributedAdaptiveBatchSampler(n, monitor, replacement=False, seed=seed)
        if side_by_side:  # measures only: no policy, no optimizer
            view = gdiv.torch.DiversityMonitor(ddp, mode="two_scale", dataset_size=n, seed=seed)
    run = Run(name)
    every, next_eval = max(1, budget // evals), 0
    bar = Progress(name, budget) if verbose and rank == 0 else None
    t0 = time.perf_counter()
    while run.examples < budget:
        for idx in sampler:
            if run.examples >= next_eval and rank == 0:
                tl, _ = evaluate(model, train_set.x.to(device), train_set.y.to(device))
                run.history.append({"examples": run.examples, "loss": tl})
                next_eval += every
            x, y = train_set.x[idx].to(device), train_set.y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            rec = monitor.step(loss=loss) if monitor is not None else None
            side = view.step() if view is not None else None
            opt.step()
            b = rec["batch"] if rec is not None else sampler.monitor.batch_size
            run.steps += 1
            run.examples += b
            run.batches.append(b)
            if rec is not None:
                run.history.append({"examples": run.examples, "batch": b, "batch_bound": rec["batch_bound"]})
            if side is not None:
                run.history.append({"examples": run.examples, "two_scale_bound": side["batch_bound"]})
            if bar is not None:
                bar.update(run.examples, batch=b)
            if run.examples >= budget:
                break
    run.seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    # every rank decided the same: compare the batch sequences
    seqs: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seqs, run.batches)
    if any(s != seqs[0] for s in seqs):
        raise RuntimeError(f"{name}: the ranks' batch sequences differ")
    tl, ta = evaluate(model, train_set.x.to(device), train_set.y.to(device))
    run.history.append({"examples": run.examples, "loss": tl})
    vl, va = evaluate(model, test[0].to(device), test[1].to(device))
    run.result = {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va}
    for m in (monitor, view):
        if m is not None:
            m.remove()
    return run


def plot(run: Run, runs: Dict[str, Run], path: Path, title: str) -> Path:
    """Loss vs examples for every method, and the norms run's two estimates of
    B̂_S (per-example norms and two_scale) with its batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        pts = [(h["examples"], h["loss"]) for h in r.history if "loss" in h]
        a.plot(*zip(*pts), label=name)
    a.set_xlabel("examples")
    a.set_ylabel("train loss")
    a.set_yscale("log")
    a.legend()
    for key, label in (("batch_bound", "B̂_S, per-example norms"), ("two_scale_bound", "B̂_S, two_scale"), ("batch", "global batch")):
        pts = [(h["examples"], h[key]) for h in run.history if key in h and math.isfinite(h[key])]
        if pts:
            b.plot(*zip(*pts), label=label, lw=1 if key != "batch" else 2)
    b.set_xlabel("examples")
    b.set_yscale("log")
    b.legend()
    b.set_title("one run, both estimators")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 passes, hidden 32 (a few seconds)")
    ap.add_argument("--out", default=str(ROOT / "examples" / "out"), help="directory of the PNG (default examples/out)")
    ap.add_argument("--epochs", type=float, default=None, help="passes per run (default 20; 4 with --quick)")
    args = ap.parse_args(argv)
    if "RANK" not in os.environ:
        print(
            "torch_ddp_digits.py: launch with torchrun, e.g. torchrun --standalone --nproc_per_node 2 examples/torch_ddp_digits.py", file=sys.stderr
        )
        return 2
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        torch.set_num_threads(1)
        epochs = args.epochs if args.epochs is not None else (4 if args.quick else 20)
        hidden = 32 if args.quick else 64
        lr, seed = 0.1, 0
        train_xy, test = load(seed)
        train_set = Tensors(*train_xy)
        n = len(train_set)
        budget = int(math.ceil(epochs * n))
        if rank == 0:
            print(
                f"digits: {n} train / {len(test[1])} test examples, MLP 64-{hidden}-10, DDP on {world} ranks "
                f"({dist.get_backend()}), mean loss, {epochs:g} passes = {budget} examples per run",
                file=sys.stderr,
            )
        policy = gdiv.BatchSizePolicy(delta=1.0, min_batch=16, max_batch=1024, lr_rule="linear")
        runs = {
            "fixed 16": train("fixed 16", train_set, test, budget=budget, lr=lr, hidden=hidden, seed=seed, device=device),
            "adaptive norms": train(
                "adaptive norms", train_set, test, budget=budget, lr=lr, hidden=hidden, seed=seed, device=device, policy=policy, side_by_side=True
            ),
            "adaptive two_scale": train(
                "adaptive two_scale", train_set, test, budget=budget, lr=lr, hidden=hidden, seed=seed, device=device, policy=policy, mode="two_scale"
            ),
        }
        if rank == 0:
            print()
            print(table({k: [v] for k, v in runs.items()}))
            print(
                f"\n{world} ranks; every rank made the same decisions (compared). lr η = {lr} at global batch 16; "
                f"adaptive: B = δ·B̂_S + 1 (δ = {policy.delta:g}) in [{policy.min_batch}, {policy.max_batch}], "
                f"multiples of {world}, lr rule {policy.lr_rule}."
            )
            png = plot(runs["adaptive norms"], runs, Path(args.out) / "torch_ddp_digits.png", f"MLP on digits, DDP × {world}, {epochs:g} passes")
            print(f"wrote {png}")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
