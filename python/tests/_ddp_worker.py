"""One rank of the DDP tests (gloo, CPU, float64): a tiny MLP trained with
DDP + DiversityMonitor + DistributedAdaptiveBatchSampler, the records and
final weights saved for the test to compare with one process.

Used by test_torch_ddp.py through multiprocessing (``run``) and as a
``torchrun`` script (``python -m torch.distributed.run ... _ddp_worker.py
--out DIR --cfg JSON``: env:// rendezvous).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import traceback
from typing import Any, Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

N = 96  # examples in the data set


def dataset(seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(N, 3, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


def mlp(cfg: Dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)]
    if cfg.get("bn"):  # train-mode BatchNorm: two_scale only
        layers.insert(1, nn.BatchNorm1d(8))
    return nn.Sequential(*layers).double()


def train(cfg: Dict[str, Any], world: int, rank: int) -> Dict[str, Any]:
    """world = 0: one process (batch = the global batch); else DDP."""
    import gdiv
    from gdiv.torch import AdaptiveBatchSampler, DistributedAdaptiveBatchSampler, DiversityMonitor

    torch.set_num_threads(1)
    x, y = dataset()
    model = mlp(cfg)
    net = nn.parallel.DistributedDataParallel(model) if world else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.get("lr", 0.2))
    pol = None
    if cfg.get("adaptive"):
        pol = gdiv.BatchSizePolicy(min_batch=4, max_batch=48, multiple_of=cfg.get("multiple_of", 1), warmup=cfg.get("warmup", 2))
    red = cfg.get("reduction", "mean")
    mon = DiversityMonitor(
        net,
        optimizer=opt,
        policy=pol,
        loss_reduction=red,
        batch_size=cfg["batch"],
        dataset_size=N,
        estimator_beta=0.5,
        seed=5,
        measure_every=cfg.get("measure_every", 1),
        mode=cfg.get("mode", "norms"),
    )
    if world:
        sampler = DistributedAdaptiveBatchSampler(N, mon, replacement=cfg.get("replacement", False), seed=3)
    else:
        sampler = AdaptiveBatchSampler(N, mon, replacement=cfg.get("replacement", False), seed=3)
    if cfg.get("load"):  # resume from a checkpoint written by a run with state_at
        ck = torch.load(cfg["load"], weights_only=False)
        model.load_state_dict(ck["weights"])
        opt.load_state_dict(ck["optimizer"])
        mon.load_state_dict(ck["monitor"])
        sampler.load_state_dict(ck["sampler"])
    records, local = [], []
    steps = cfg.get("steps", 12)
    state_at = cfg.get("state_at")
    saved = None
    while len(records) < steps:
        for idx in sampler:
            if cfg.get("uneven") and rank == 1:
                idx = idx[:-1]  # rank 1 is one example short
            xb, yb = x[idx], y[idx]
            if cfg.get("nan_at") == len(records) and rank == cfg.get("nan_rank", 0):
                xb = xb.clone()
                xb[0, 0] = float("nan")
            if cfg.get("fail_at") == len(records) and rank == cfg.get("fail_rank", 1):
                raise ValueError(f"rank {rank}: a bad batch at step {len(records)}")
            opt.zero_grad(set_to_none=True)
            micro = cfg.get("micro", 1)  # gradient accumulation: equal micro-batches, each mean loss / micro
            m = len(idx) // micro
            for j in range(micro):
                loss = F.cross_entropy(net(xb[j * m : (j + 1) * m]), yb[j * m : (j + 1) * m], reduction=red)
                (loss / micro if red == "mean" else loss).backward()
            rec = mon.step(loss=loss)
            records.append(rec)
            local.append(len(idx))
            if rec["skipped"] != "non-finite":
                opt.step()
            if state_at is not None and len(records) == state_at:
                saved = {
                    "monitor": mon.state_dict(),
                    "sampler": sampler.state_dict(),
                    "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                }
            if len(records) >= steps:
                break  # before the sampler draws a batch it would not train on
    return {
        "records": records,
        "local": local,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "policy": None if mon.policy is None else mon.policy.state_dict(),
        "saved": saved,
    }


def run(rank: int, world: int, init: str, out: str, cfg: Dict[str, Any]) -> None:
    """multiprocessing entry: one rank, results in out/rank{r}.pt (or the error in out/rank{r}.err)."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=cfg.get("timeout", 60)))
    try:
        res = train(cfg, world, rank)
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    except BaseException as e:  # noqa: BLE001 — reported to the test
        with open(os.path.join(out, f"rank{rank}.err"), "w") as f:
            f.write(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cfg", default="{}")
    a = ap.parse_args()
    cfg = json.loads(a.cfg)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    run(rank, world, "env://", a.out, cfg)


if __name__ == "__main__":
    sys.exit(main())
