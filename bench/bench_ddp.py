#!/usr/bin/env python3
"""The DDP step users run: plain DDP vs DDP + gdiv (norms and two_scale), on 2
ranks (gloo, CPU), a printed table + PNG + JSON; measured, never asserted.

Each rank builds three copies of the model (same seed), each wrapped in its
own DistributedDataParallel, and times, interleaved in rounds (the order
rotating each round, the same on every rank):

  plain DDP   opt.zero_grad(); loss = loss_fn(ddp(x), y); loss.backward(); opt.step()
  norms       the same with monitor.step(loss=loss) before opt.step()
              (DiversityMonitor(ddp, optimizer=opt, policy=...): every step measured)
  two_scale   the same with DiversityMonitor(ddp, mode="two_scale", ...)

Blocks of 10 rounds give the ratio Σ gdiv / Σ plain (rank 0's times; every
rank waits for the others in the all-reduces, so rank 0's step is the job's);
the table shows the median and quartiles over the blocks, and the number of
collectives gdiv itself issues per measured step (counted by wrapping
torch.distributed.all_reduce; DDP's own bucket all-reduces are not counted).
glibc's default malloc (what an untuned process gets).

Usage:
    python bench/bench_ddp.py [--quick] [--smoke] [--models mlp cnn] [--batches 64 256] [--out bench/out]

Targets (issue 12): two_scale ≤ 1.02× plain DDP; norms within the
single-process targets (bench_step.py); collectives per measured step = 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

VARIANTS = ["norms", "two_scale"]


def rank_main(rank: int, world: int, init: str, jobs: List[Dict[str, Any]], out: str, budget: float, min_rounds: int) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    import gdiv
    import gdiv.torch as gt
    from _interleave import interleaved_blocks, spread, until
    from bench_step import build

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    calls = [0]
    real = dist.all_reduce

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    dist.all_reduce = counted  # gdiv's collectives (DDP's reducer does not go through it)
    results = []
    try:
        for job in jobs:
            name, b = job["model"], job["batch"]
            copies = {}
            for v in ["plain"] + VARIANTS:
                model, data, loss_fn = build(name)
                ddp = nn.parallel.DistributedDataParallel(model)
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                mon = None
                if v != "plain":
                    mon = gt.DiversityMonitor(
                        ddp,
                        optimizer=opt,
                        mode=v,
                        policy=gdiv.BatchSizePolicy(min_batch=world * b, max_batch=world * b),
                        batch_size=world * b,
                        dataset_size=100 * world * b,
                        seed=0,
                    )
                copies[v] = (ddp, opt, mon)
            xs, y = data(b)

            def step(v: str) -> float:
                ddp, opt, mon = copies[v]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(ddp(*xs), y)
                loss.backward()
                if mon is not None:
                    mon.step(loss=loss)
                opt.step()
                return time.perf_counter() - t0

            order = ["plain"] + VARIANTS
            for _ in range(3):
                for v in order:
                    step(v)
            coll: Dict[str, List[int]] = {v: [] for v in VARIANTS}

            def counted_step(v: str) -> float:
                before = calls[0]
                t = step(v)
                if v != "plain":
                    coll[v].append(calls[0] - before)
                return t

            local_go = until(budget, min_rounds)

            def go_on(r: int) -> bool:  # every rank stops after the same block
                flag = torch.tensor([1 if local_go(r) else 0])
                real(flag, group=None)  # not counted: the bench's own
                return int(flag.item()) == world

            ratios, r, _ = interleaved_blocks(counted_step, order, go_on)
            row: Dict[str, Any] = {"model": name, "batch": b, "world": world, "rounds": r}
            for v in VARIANTS:
                row[v] = dict(spread(ratios[v]), collectives=statistics.mean(coll[v]))
            results.append(row)
            if rank == 0:
                print(f"  {name} b={b}: {r} rounds", file=sys.stderr, flush=True)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nb={r['batch']}/rank" for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.6))
    w = 0.38
    for j, v in enumerate(VARIANTS):
        med = [r[v]["median"] for r in rows]
        err = [[r[v]["median"] - r[v]["q1"] for r in rows], [r[v]["q3"] - r[v]["median"] for r in rows]]
        ax.bar([i + (j - 0.5) * w for i in range(len(rows))], med, w, yerr=err, label=f"gdiv {v}", capsize=3)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.02, color="gray", lw=0.8, ls="--", label="two_scale target 1.02×")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("step time / plain DDP step")
    ax.set_title(f"DDP step on {rows[0]['world']} ranks (gloo, CPU): monitored vs plain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--quick", action="store_true", help="batch 64, a shorter budget")
    ap.add_argument("--smoke", action="store_true", help="one tiny row (the test suite)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    models, batches, budget, min_rounds = args.models, args.batches, 20.0, 60
    if args.quick:
        batches, budget, min_rounds = [64], 8.0, 40
    if args.smoke:
        models, batches, budget, min_rounds = ["readme-mlp"], [16], 0.5, 20
    jobs = [{"model": m, "batch": b} for m in models for b in batches]
    os.makedirs(args.out, exist_ok=True)
    import torch.multiprocessing as mp

    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        res = os.path.join(tmp, "rows.json")
        print(f"bench_ddp: {len(jobs)} rows on {world} ranks (gloo)", file=sys.stderr, flush=True)
        mp.spawn(rank_main, args=(world, f"file://{tmp}/rdv", jobs, res, budget, min_rounds), nprocs=world, join=True)
        with open(res) as f:
            rows = json.load(f)
    head = f"{'model':<12} {'batch/rank':>10} {'norms ×':>16} {'two_scale ×':>16} {'collectives/step':>17}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = [f"{r[v]['median']:.3f} [{r[v]['q1']:.2f}–{r[v]['q3']:.2f}]" for v in VARIANTS]
        coll = "/".join(f"{r[v]['collectives']:g}" for v in VARIANTS)
        print(f"{r['model']:<12} {r['batch']:>10} {cells[0]:>16} {cells[1]:>16} {coll:>17}")
    print("\nratios: median [quartiles] over blocks of 10 interleaved rounds, rank 0; glibc default malloc.")
    with open(os.path.join(args.out, "ddp.json"), "w") as f:
        json.dump(rows, f, indent=1)
    png = os.path.join(args.out, "ddp.png")
    plot(rows, png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
