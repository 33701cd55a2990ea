"""One rank of the DDP tests (gloo, CPU, float64): a tiny MLP trained with
DDP + DiversityMonitor + DistributedAdaptiveBatchSampler, the records and
final weights saved for the test to compare with one process.

Used by test_torch_ddp.py through multiprocessing (``run``) and as a
``torchrun`` script (``python -m torch.distributed.run ... _ddp_worker.py
--out DIR --cfg JSON``: env:// rendezvous).
"""

from __future__ import annotations

import argparse
import contextlib
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


def dataset(seed: int = 11, kind: str = "mlp"):
    g = torch.Generator().manual_seed(seed)
    if kind == "gpt2":  # token sequences; the target is the sequence itself (LM)
        x = torch.randint(0, 20, (N, 8), generator=g)
        return x, x
    x = torch.randn(N, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(N, 3, generator=g, dtype=torch.float64)).argmax(1)
    if kind == "cnn":
        x = torch.randn(N, 1, 6, 6, generator=g, dtype=torch.float64) + x[:, :1, None, None]
    return x, y


class _LM(nn.Module):
    """A GPT-2 (Hugging Face transformers, small config, random weights)
    returning its logits."""

    def __init__(self) -> None:
        super().__init__()
        import transformers as tf

        cfg = tf.GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8, attn_implementation="eager",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        # no dropout: its masks come from each process's own RNG stream
        self.m = tf.GPT2LMHeadModel(cfg)

    def forward(self, ids):
        return self.m(input_ids=ids).logits


def loss_of(cfg: Dict[str, Any], out, y, reduction: str):
    if cfg.get("model") == "gpt2":
        v = out.shape[-1]
        per = F.cross_entropy(out[:, :-1].reshape(-1, v), y[:, 1:].reshape(-1), reduction="none").reshape(y.shape[0], -1).mean(1)
        return per.mean() if reduction == "mean" else per.sum()
    return F.cross_entropy(out, y, reduction=reduction)


def mlp(cfg: Dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    if cfg.get("model") == "cnn":
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()
    if cfg.get("model") == "gpt2":
        return _LM().double()
    layers = [nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)]
    if cfg.get("bn"):  # train-mode BatchNorm: two_scale only
        layers.insert(1, nn.BatchNorm1d(8))
    return nn.Sequential(*layers).double()


def train(cfg: Dict[str, Any], world: int, rank: int) -> Dict[str, Any]:
    """world = 0: one process (batch = the global batch); else DDP."""
    import gdiv
    from gdiv.torch import AdaptiveBatchSampler, DistributedAdaptiveBatchSampler, DiversityMonitor

    torch.set_num_threads(1)
    x, y = dataset(kind=cfg.get("model", "mlp"))
    model = mlp(cfg)
    net = nn.parallel.DistributedDataParallel(model) if world else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.get("lr", 0.2))
    pol = None
    if cfg.get("adaptive"):
        pol = gdiv.BatchSizePolicy(min_batch=4, max_batch=48, multiple_of=cfg.get("multiple_of", 1), warmup=cfg.get("warmup", 2))
    red = cfg.get("reduction", "mean")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = DiversityMonitor(
            model if cfg.get("monitor_inner") else net,
            process_group=dist.group.WORLD if cfg.get("process_group") == "world" else cfg.get("process_group", "auto"),
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
    warned = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
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
            if cfg.get("cap"):  # a per-device cap: weighted micro-batches of unequal sizes
                from gdiv.torch import micro_batches

                for (xm, ym), w in micro_batches((xb, yb), cfg["cap"], model=net if world else None, monitor=mon):
                    loss = loss_of(cfg, net(xm), ym, red)
                    (loss * w if red == "mean" else loss).backward()
                micro = 0
            for j in range(micro):
                # DDP: all-reduce on the last micro-batch only (no_sync), as users write it
                sync = net.no_sync() if world and j < micro - 1 else contextlib.nullcontext()
                with sync:
                    loss = loss_of(cfg, net(xb[j * m : (j + 1) * m]), yb[j * m : (j + 1) * m], red)
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
        "warned": warned,
    }


def ground_truth(cfg: Dict[str, Any], world: int, rank: int) -> Dict[str, Any]:
    """Go's reference trainer (the same on every rank) and the DDP run fed
    each global batch's shares: the records and weights, per problem."""
    import numpy as np

    import gdiv
    from gdiv import reference as ref
    from gdiv.torch import DiversityMonitor

    torch.set_num_threads(1)
    raw = np.loadtxt(cfg["digits"], delimiter=",", skiprows=1)
    X, y0 = raw[:300, :64], raw[:300, 64].astype(np.int64)
    sd = X.std(0)
    sd[sd == 0] = 1.0
    X = np.ascontiguousarray((X - X.mean(0)) / sd)
    n, d = X.shape
    out: Dict[str, Any] = {}
    for problem in cfg["problems"]:
        y = y0 % 2 if problem == "logistic" else y0
        k = None if problem == "logistic" else 10
        lr = 0.3
        res = ref.train(
            X, y, problem=problem, l2=0.0, hidden=12, lr=lr, step="mean", batch=8, steps=cfg.get("steps", 40),
            policy=gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0, multiple_of=world), seed=3, estimator_beta=0.9,
            record_indices=True, classes=k,
        )  # fmt: skip
        w0 = ref.initial_weights(problem, d, k, hidden=12, seed=3)
        layout = ref.param_layout(problem, d, k, hidden=12)
        if problem == "logistic":
            model: nn.Module = nn.Linear(d, 1)
            loss_fn = lambda o, t: F.binary_cross_entropy_with_logits(o.squeeze(-1), t.to(o.dtype))  # noqa: E731
        else:
            model = nn.Linear(d, 10) if problem == "softmax" else nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, 10))
            loss_fn = F.cross_entropy
        model = model.double()
        model.load_state_dict({name: torch.as_tensor(v) for name, v in layout.to_torch_state(w0).items()})
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        mon = DiversityMonitor(ddp, policy=res.policy, optimizer=opt, batch_size=8, dataset_size=n, sampling="replacement", seed=3)
        Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
        recs, batches = [], []
        for idx in res.batches:
            batches.append(mon.batch_size)
            share = len(idx) // world
            ii = torch.as_tensor(list(idx)[rank * share : (rank + 1) * share])
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(Xt[ii]), yt[ii]).backward()
            recs.append(mon.step())
            opt.step()
        out[problem] = {"records": recs, "decided": batches, "weights": layout.from_torch_state(model.state_dict())}
    return out


def run(rank: int, world: int, init: str, out: str, cfg: Dict[str, Any]) -> None:
    """multiprocessing entry: one rank, results in out/rank{r}.pt (or the error in out/rank{r}.err)."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=cfg.get("timeout", 60)))
    try:
        res = ground_truth(cfg, world, rank) if cfg.get("job") == "ground_truth" else train(cfg, world, rank)
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
