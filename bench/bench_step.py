#!/usr/bin/env python3
"""The step users run: the README's monitored training step next to the same
plain step (a printed table + PNG + JSON; measured, never asserted).

One row is (model, batch, optimizer, allocator). Its worker process builds
three identical copies of the model (same seed) and times, interleaved in
rounds (the order rotating each round):

  plain      optimizer.zero_grad(); loss = loss_fn(model(x), y); loss.backward();
             optimizer.step()
  gdiv k=1   the README's loop: the same, with ``monitor.step(loss=loss)`` between
             backward and the optimizer step; ``DiversityMonitor(model,
             optimizer=opt, policy=BatchSizePolicy(min_batch=B, max_batch=B),
             dataset_size=...)`` — every step measured (the policy runs but
             keeps B, so both steps see the same batch)
  gdiv k=10  the same with ``measure_every=10`` (the amortized cost of the
             cadence: one measured step in ten)

Rounds are grouped in blocks of 10: a block's ratio is the summed gdiv step
time over the summed plain step time of the same rounds (for k=10 the
amortized cost of one measured step in ten); the table shows the median over
the blocks and the quartiles. The
plain-vs-plain noise of the machine is one more column (two plain copies).
Every row runs twice: with glibc's default malloc (the headline: what an
untuned user process gets) and with glibc tuned to keep freed memory
(MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, as bench_torch.py's
``--malloc reuse``; jemalloc and tcmalloc behave alike).

The epoch row times one pass over a data set through the README's
``AdaptiveBatchSampler`` + ``DataLoader`` + monitor against a plain
``DataLoader(batch_size=B, shuffle=True)`` epoch (same model, same B).

Models: the bench's MLP and CNN (bench_torch.py), the README example's MLP
(64-64-10, tanh), a ResNet-style CNN with GroupNorm, and GPT-2-style and
BERT-style transformers built from small configs with random weights
(Hugging Face ``transformers``; skipped, with the reason, when it is missing
or the monitor refuses the model).

Usage:
    python bench/bench_step.py [--quick] [--smoke] [--models ...] [--batches ...]
                               [--optimizers sgd adamw] [--threads 1] [--out bench/out]

--quick: batch 64, SGD, a shorter budget (a few minutes); --smoke: one tiny
row (for the test suite). Targets (issue 11): gdiv k=1 ≤ 1.10× plain at batch
≥ 64 for the MLPs and CNNs, ≤ 1.35× for the transformers; k=10 ≤ 1.03×.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _interleave import interleaved_blocks, spread, until  # noqa: E402

TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
MODELS = ["mlp", "cnn", "readme-mlp", "resnet-gn", "gpt2", "bert"]
DESC = {
    "mlp": "MLP 784-512-512-10 (ReLU)",
    "cnn": "CNN 2×conv3×3 + pool + linear",
    "readme-mlp": "README MLP 64-64-10 (tanh)",
    "resnet-gn": "ResNet-style CNN, GroupNorm",
    "gpt2": "GPT-2-style (2 layers, d=64, T=32)",
    "bert": "BERT-style (2 layers, d=64, T=32)",
}
SEQ = 32
VOCAB = 512
VARIANTS = ["plain2", "gdiv1", "gdiv10"]
MIN_ROUNDS = 40


# ----------------------------------------------------------------- models ---


def build(name: str):
    """(model, make_batch(B) -> (inputs tuple, target), loss(out, y))."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    ce = F.cross_entropy
    if name in ("mlp", "cnn"):
        from bench_torch import build_model

        model = build_model(name)

        def data(b):
            g = torch.Generator().manual_seed(1)
            return (torch.randn(b, 1, 28, 28, generator=g),), torch.randint(0, 10, (b,), generator=g)

        return model, data, ce
    if name == "readme-mlp":
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))

        def data(b):
            g = torch.Generator().manual_seed(1)
            return (torch.randn(b, 64, generator=g),), torch.randint(0, 10, (b,), generator=g)

        return model, data, ce
    if name == "resnet-gn":
        model = resnet_gn()

        def data(b):
            g = torch.Generator().manual_seed(1)
            return (torch.randn(b, 3, 32, 32, generator=g),), torch.randint(0, 10, (b,), generator=g)

        return model, data, ce
    if name in ("gpt2", "bert"):
        import transformers as tf

        if name == "gpt2":
            cfg = tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=SEQ, attn_implementation="eager")
            model = Logits(tf.GPT2LMHeadModel(cfg))

            def loss(out, y):
                return ce(out[:, :-1].reshape(-1, VOCAB), y[:, 1:].reshape(-1))
        else:
            cfg = tf.BertConfig(
                num_hidden_layers=2,
                hidden_size=64,
                num_attention_heads=4,
                intermediate_size=128,
                vocab_size=VOCAB,
                max_position_embeddings=SEQ,
                num_labels=4,
                attn_implementation="eager",
            )
            model = Logits(tf.BertForSequenceClassification(cfg))
            loss = ce

        def data(b):
            g = torch.Generator().manual_seed(1)
            t = torch.randint(0, VOCAB, (b, SEQ), generator=g)
            return (t,), (t if name == "gpt2" else torch.randint(0, 4, (b,), generator=g))

        model.train()
        return model, data, loss
    raise ValueError(f"unknown model {name!r}")


def resnet_gn():
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.n1 = nn.GroupNorm(4, c)
            self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.n2 = nn.GroupNorm(4, c)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(x + self.n2(self.c2(self.act(self.n1(self.c1(x))))))

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        Block(16),
        nn.MaxPool2d(2),
        Block(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def Logits(hf):
    """A Hugging Face model as out = model(tokens) (the logits)."""
    from torch import nn

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = hf

        def forward(self, t):
            return self.m(input_ids=t).logits

    return Wrap()


# ----------------------------------------------------------------- worker ---


def worker(model_name: str, batch: int, opt_name: str, threads: int, budget: float, max_rounds: int) -> Dict[str, Any]:
    import torch

    import gdiv
    import gdiv.torch as gt

    torch.set_num_threads(threads)
    copies = {}
    for v in ["plain"] + VARIANTS:
        model, data, loss_fn = build(model_name)
        opt = torch.optim.SGD(model.parameters(), lr=0.01) if opt_name == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-3)
        mon = None
        if v.startswith("gdiv"):
            mon = gt.DiversityMonitor(
                model,
                optimizer=opt,
                policy=gdiv.BatchSizePolicy(min_batch=batch, max_batch=batch),
                batch_size=batch,
                dataset_size=100 * batch,
                measure_every=1 if v == "gdiv1" else 10,
            )
        copies[v] = (model, opt, mon)
    xs, y = data(batch)

    def step(v: str) -> float:
        model, opt, mon = copies[v]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(*xs), y)
        loss.backward()
        if mon is not None:
            mon.step(loss=loss)
        opt.step()
        return time.perf_counter() - t0

    order = ["plain"] + VARIANTS
    for _ in range(3):  # warm-up (allocator, oneDNN primitives, the monitor's first step and audit)
        for v in order:
            step(v)
    # Rounds of one step per copy (order rotating), grouped in blocks of
    # BLOCK rounds: a block's ratio is Σ gdiv / Σ plain over its rounds — for
    # k=10 that is the amortized cost of one measured step in ten.
    ratios, r, plain_t = interleaved_blocks(step, order, until(budget, MIN_ROUNDS, max_rounds))
    mon = copies["gdiv1"][2]
    out: Dict[str, Any] = {
        "model": model_name,
        "batch": batch,
        "optimizer": opt_name,
        "rounds": r,
        "plain_ms": 1e3 * statistics.median(plain_t),
        "measured": mon.history[-1]["batch_bound"] if mon and mon.history else None,
    }
    for v in VARIANTS:
        out[v] = spread(ratios[v])
    return out


def epoch_worker(threads: int, batch: int, repeats: int) -> Dict[str, Any]:
    """One epoch of the README MLP on 1797 digits-like examples: plain
    DataLoader vs AdaptiveBatchSampler + monitor (fixed policy at B)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import gdiv
    import gdiv.torch as gt

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(1797, 64, generator=g), torch.randint(0, 10, (1797,), generator=g))
    ce = torch.nn.functional.cross_entropy

    def epoch(adaptive: bool) -> float:
        model, _, _ = build("readme-mlp")
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        if adaptive:
            mon = gt.DiversityMonitor(model, optimizer=opt, policy=gdiv.BatchSizePolicy(min_batch=batch, max_batch=batch), dataset_size=len(ds))
            loader = DataLoader(ds, batch_sampler=gt.AdaptiveBatchSampler(ds, mon, replacement=False, seed=0))
        else:
            mon, loader = None, DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
        t0 = time.perf_counter()
        seen = 0
        for x, y in loader:
            opt.zero_grad()
            loss = ce(model(x), y)
            loss.backward()
            if mon is not None:
                mon.step(loss=loss)
            opt.step()
            seen += len(y)
            if seen >= len(ds) - batch:
                break
        return time.perf_counter() - t0

    epoch(False), epoch(True)
    ratios = []
    for _ in range(repeats):
        a, b = epoch(False), epoch(True)
        ratios.append(b / a)
    return {"model": "readme-mlp epoch", "batch": batch, **spread(ratios)}


# ----------------------------------------------------------------- driver ---


def run(args_list: List[str], tuned: bool, threads: int) -> Dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for k in TUNED_ENV:
        env.pop(k, None)
    if tuned:
        env.update(TUNED_ENV)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args_list], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        err = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "?")
        return {"error": err.strip()[:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cell(r: Optional[Dict[str, Any]], key: str) -> str:
    if r is None or "error" in r:
        return "—"
    v = r[key]
    return f"{v['median']:.2f}× ({v['q1']:.2f}–{v['q3']:.2f})"


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no PNG)")
        return
    ok = [r for r in rows if "error" not in r["default"]]
    if not ok:
        return
    labels = [f"{r['model']}\nB={r['batch']} {r['optimizer']}" for r in ok]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ok)), 4))
    xs = range(len(ok))
    for off, key, name in ((-0.2, "gdiv1", "k=1"), (0.2, "gdiv10", "k=10")):
        meds = [r["default"][key]["median"] for r in ok]
        lo = [max(m - r["default"][key]["q1"], 0.0) for m, r in zip(meds, ok)]
        hi = [max(r["default"][key]["q3"] - m, 0.0) for m, r in zip(meds, ok)]
        ax.bar([x + off for x in xs], meds, width=0.4, yerr=[lo, hi], label=f"gdiv {name}", capsize=2)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.10, color="r", lw=0.8, ls="--", label="1.10× target (MLP/CNN)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
    ax.set_ylabel("monitored step / plain step (median, quartiles)")
    ax.set_title("The README's monitored step vs the plain step (glibc default malloc)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "BATCH", "OPT"))
    ap.add_argument("--epoch-worker", type=int, metavar="BATCH")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed rounds per row (default 4)")
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.worker[2], a.threads, a.budget, a.rounds)))
        return
    if a.epoch_worker:
        print(json.dumps(epoch_worker(a.threads, a.epoch_worker, 3 if a.smoke else 9)))
        return
    if a.quick:
        a.batches, a.optimizers, a.budget = [64], ["sgd"], 2.0
    if a.smoke:
        a.models, a.batches, a.optimizers, a.budget, a.rounds = ["readme-mlp"], [16], ["sgd"], 0.2, 20
    rows = []
    configs = [(m, b, o) for m in a.models for b in a.batches for o in a.optimizers]
    t0 = time.perf_counter()
    for i, (m, b, o) in enumerate(configs, 1):
        row: Dict[str, Any] = {"model": m, "batch": b, "optimizer": o}
        for alloc in ("default", "tuned"):
            row[alloc] = run(
                ["--worker", m, str(b), o, "--threads", str(a.threads), "--budget", str(a.budget), "--rounds", str(a.rounds)],
                alloc == "tuned",
                a.threads,
            )
        rows.append(row)
        eta = (time.perf_counter() - t0) / i * (len(configs) - i)
        status = row["default"].get("error", f"k=1 {row['default'].get('gdiv1', {}).get('median', float('nan')):.2f}×")
        print(f"[{i}/{len(configs)}] {m} B={b} {o}: {status}  (eta {eta:.0f} s)", file=sys.stderr, flush=True)
    epoch = {
        alloc: run(
            ["--epoch-worker", str(64 if not a.smoke else 16), "--threads", str(a.threads)] + (["--smoke"] if a.smoke else []),
            alloc == "tuned",
            a.threads,
        )
        for alloc in ("default", "tuned")
    }

    import torch

    print(
        f"\nThe README's monitored step / the plain step, median (quartiles) over interleaved rounds; "
        f"{a.threads} thread(s), torch {torch.__version__}, {os.cpu_count()} cores"
    )
    print(
        "| model | batch | opt | plain ms | gdiv k=1, default malloc | gdiv k=10, default malloc | gdiv k=1, tuned | gdiv k=10, tuned | plain vs plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, t = r["default"], r["tuned"]
        if "error" in d:
            print(f"| {DESC.get(r['model'], r['model'])} | {r['batch']} | {r['optimizer']} | — | not run: {d['error']} | | | | |")
            continue
        print(
            f"| {DESC.get(r['model'], r['model'])} | {r['batch']} | {r['optimizer']} | {d['plain_ms']:.2f} | {cell(d, 'gdiv1')} | "
            f"{cell(d, 'gdiv10')} | {cell(t, 'gdiv1')} | {cell(t, 'gdiv10')} | {cell(d, 'plain2')} |"
        )
    for alloc, e in epoch.items():
        if "error" in e:
            print(f"epoch ({alloc} malloc): not run: {e['error']}")
        else:
            print(
                f"one epoch, README MLP, AdaptiveBatchSampler + DataLoader + monitor / plain DataLoader, B={e['batch']}, "
                f"{alloc} malloc: {e['median']:.2f}× ({e['q1']:.2f}–{e['q3']:.2f})"
            )
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "step.json"), "w") as f:
        json.dump({"rows": rows, "epoch": epoch, "threads": a.threads}, f, indent=1)
    plot(rows, os.path.join(a.out, "step.png"))


if __name__ == "__main__":
    main()
