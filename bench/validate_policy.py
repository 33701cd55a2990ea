#!/usr/bin/env python3
"""Does gdiv's adaptive batch hurt? Five model/data pairs, each trained the
same number of examples with a fixed small batch, a fixed large batch (same
lr, and the linearly scaled lr) and gdiv-adaptive with the defaults a user
gets (and with the AdaScale LR rule, and with Langevin noise as a DIM),
several seeds; a printed table per pair, a verdict, and a PNG.

Pairs (data bundled in testdata/ or generated; models built with random
weights): logistic regression on breast cancer, softmax regression and an
MLP on digits, a CNN on digits as 8×8 images, a tiny transformer on a
generated sequence task (the class is how often token 0 occurs, capped at 3).

Methods (mean-reduced cross-entropy, plain SGD, lr η per pair at batch 16):

  fixed 16             batch 16, lr η
  fixed 512            batch 512, lr η
  fixed 512, lr×32     batch 512, lr 32η (the linear rule's rate)
  adaptive             DiversityMonitor + AdaptiveBatchSampler with the defaults:
                       BatchSizePolicy(min_batch=16, max_batch=1024) (δ = 1, growth ≤ 2× per
                       decision, lr rule "linear"), estimator β = 0.9, shuffled epochs
  adaptive, adascale   the same with lr_rule="adascale" (AdaScale's gain ratio)
  adaptive+Langevin    the defaults with gdiv.Langevin(0.05)
  adaptive, burn-in 10 the defaults with warmup=10: no decision before the β = 0.9
                       EMA has folded 1/(1 − β) = 10 batches (a candidate default)
  adaptive, max lr 4×  the defaults with max_lr_factor=4: the lr never above 4η
  adaptive, lr warm-up W
                       the defaults with lr_warmup_steps=W (W = 5, 20): after each batch change
                       the lr ramps linearly over W steps from the step before's to the linear
                       rule's (Goyal et al. 2017's warm-up; a decrease applies at once)
  adaptive, warm-up 20, max lr 8×
                       both: lr_warmup_steps=20 and max_lr_factor=8

Columns: steps, final train loss and test accuracy (mean ± sd over seeds),
mean batch, the largest loss spike (the full training loss, evaluated 30
times per run, over the running mean of its previous three evaluations;
1.00 = never rose; the largest over the seeds), and a
**simulated wall clock on P = 8 workers**:
Σ over steps of c(B), c(B) the measured time of one plain step (forward,
backward, SGD step) at the local batch ⌈B/8⌉ on this machine, interpolated
in the local batch (no communication cost is modelled; the cost model is
printed). The verdict for an adaptive method: "wins" if its final train loss
is within the factor 1 + δ/2 of batch 16's (Theorem 3), its test accuracy
within one point, no spike above 2× in any seed, with ≥ 4× fewer steps;
"ties" if only the steps criterion fails; else "loses" (which criterion is
named).

    python bench/validate_policy.py             # 3 seeds, ~10 minutes on 2 cores
    python bench/validate_policy.py --quick     # 1 seed, fewer passes, 3 pairs (a minute)
    python bench/validate_policy.py --pairs CNN --methods "fixed 16" warm-up   # a subset

Writes bench/out/validate_policy.png and .json. Nothing is asserted here.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import gdiv  # noqa: E402
import gdiv.torch  # noqa: E402
from torch_digits import Progress  # noqa: E402

P = 8  # simulated workers


# ------------------------------------------------------------------- data ---


def _split(X: np.ndarray, y: np.ndarray, seed: int, standardize: bool = True):
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(0.2 * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    if standardize:
        mu, sd = X[train].mean(0), X[train].std(0)
        sd[sd == 0] = 1.0
        X = (X - mu) / sd
    as_x = (lambda a: torch.from_numpy(a.astype(np.float32))) if X.dtype != np.int64 else torch.from_numpy
    return (as_x(X[train]), torch.from_numpy(y[train])), (as_x(X[test]), torch.from_numpy(y[test]))


def load(data: str, seed: int):
    if data in ("digits", "digits-img"):
        raw = np.loadtxt(ROOT / "testdata" / "digits.csv", delimiter=",", skiprows=1)
        (xt, yt), (xv, yv) = _split(raw[:, :64], raw[:, 64].astype(np.int64), seed)
        if data == "digits-img":
            xt, xv = xt.reshape(-1, 1, 8, 8), xv.reshape(-1, 1, 8, 8)
        return (xt, yt), (xv, yv)
    if data == "breast_cancer":
        raw = np.loadtxt(ROOT / "testdata" / "breast_cancer.csv", delimiter=",", skiprows=1)
        return _split(raw[:, :-1], raw[:, -1].astype(np.int64), seed)
    if data == "sequence":
        g = np.random.default_rng(1000 + seed)
        x = g.integers(0, 8, size=(2500, 10)).astype(np.int64)
        y = np.minimum((x == 0).sum(1), 3).astype(np.int64)
        return _split(x, y, seed, standardize=False)
    raise ValueError(data)


# ----------------------------------------------------------------- models ---


class TinyTransformer(nn.Module):
    """One pre-norm attention block (hand-written from Linear/LayerNorm/
    Embedding, so every layer has an exact per-example rule), mean pooling,
    a linear head."""

    def __init__(self, vocab: int = 8, t: int = 10, d: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(t, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        b, t = ids.shape
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device).expand(b, t))
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        h = h + self.proj(att @ v)
        h = h + self.mlp(self.ln2(h))
        return self.head(h.mean(1))


def build(model: str, seed: int, d_in: int, classes: int) -> nn.Module:
    torch.manual_seed(seed)
    if model == "logistic":
        return nn.Linear(d_in, classes)
    if model == "softmax":
        return nn.Linear(d_in, classes)
    if model == "mlp":
        return nn.Sequential(nn.Linear(d_in, 64), nn.Tanh(), nn.Linear(64, classes))
    if model == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, classes),
        )  # fmt: skip
    if model == "transformer":
        return TinyTransformer(classes=classes)
    raise ValueError(model)


PAIRS: Dict[str, Dict[str, Any]] = {
    "logistic / breast cancer": dict(data="breast_cancer", model="logistic", lr=0.1, passes=30),
    "softmax / digits": dict(data="digits", model="softmax", lr=0.1, passes=20),
    "MLP / digits": dict(data="digits", model="mlp", lr=0.1, passes=20),
    "CNN / digits images": dict(data="digits-img", model="cnn", lr=0.05, passes=15),
    "transformer / sequences": dict(data="sequence", model="transformer", lr=0.1, passes=20),
}
METHODS: Dict[str, Dict[str, Any]] = {
    "fixed 16": dict(batch=16),
    "fixed 512": dict(batch=512),
    "fixed 512, lr×32": dict(batch=512, lr_mult=32),
    "adaptive": dict(policy={}),
    "adaptive, adascale": dict(policy={"lr_rule": "adascale"}),
    "adaptive+Langevin": dict(policy={}, mechanism=0.05),
    "adaptive, burn-in 10": dict(policy={"warmup": 10}),
    "adaptive, max lr 4×": dict(policy={}, max_lr_factor=4.0),
    "adaptive, lr warm-up 5": dict(policy={}, lr_warmup_steps=5),
    "adaptive, lr warm-up 20": dict(policy={}, lr_warmup_steps=20),
    "adaptive, warm-up 20, max lr 8×": dict(policy={}, lr_warmup_steps=20, max_lr_factor=8.0),
}


# --------------------------------------------------------------- training ---


@torch.no_grad()
def evaluate(model: nn.Module, x, y):
    model.eval()
    out = model(x)
    model.train()
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def train_run(pair: Dict[str, Any], method: Dict[str, Any], seed: int, passes: float, label: str) -> Dict[str, Any]:
    (xt, yt), (xv, yv) = load(pair["data"], seed)
    n = len(yt)
    classes = int(max(int(yt.max()), int(yv.max())) + 1)
    model = build(pair["model"], seed, xt.shape[1] if xt.dim() == 2 and xt.dtype != torch.int64 else 0, classes)
    lr = pair["lr"] * method.get("lr_mult", 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = None
    if "policy" in method:
        policy = gdiv.BatchSizePolicy(min_batch=16, max_batch=min(1024, n), **method["policy"])
        mech = gdiv.Langevin(method["mechanism"]) if method.get("mechanism") else None
        mon = gdiv.torch.DiversityMonitor(
            model,
            optimizer=opt,
            policy=policy,
            mechanism=mech,
            dataset_size=n,
            seed=seed,
            max_lr_factor=method.get("max_lr_factor"),
            lr_warmup_steps=method.get("lr_warmup_steps", 0),
        )
        sampler = gdiv.torch.AdaptiveBatchSampler(n, mon, replacement=False, seed=seed)
    else:
        sampler = gdiv.torch.AdaptiveBatchSampler(n, _Fixed(min(method["batch"], n)), replacement=False, seed=seed)
    budget = int(math.ceil(passes * n))
    bar = Progress(label, budget)
    steps, examples, batches, curve = 0, 0, [], []
    every = max(1, budget // 30)
    next_eval = 0
    while examples < budget:
        for idx in sampler:
            if examples >= next_eval:
                curve.append((examples, evaluate(model, xt, yt)[0]))
                next_eval += every
            ii = torch.as_tensor(idx)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[ii]), yt[ii])
            loss.backward()
            if mon is not None:
                mon.step(loss=loss)
            opt.step()
            steps += 1
            examples += len(idx)
            batches.append(len(idx))
            bar.update(examples, batch=len(idx))
            if examples >= budget:
                break
    bar.close()
    if mon is not None:
        mon.remove()
    tl, ta = evaluate(model, xt, yt)
    curve.append((examples, tl))
    vl, va = evaluate(model, xv, yv)
    spike = 1.0
    losses = [lv for _, lv in curve]
    for t in range(1, len(losses)):
        if not math.isfinite(losses[t]):
            spike = math.inf
            break
        running = statistics.fmean(losses[max(0, t - 3) : t])  # the previous three evaluations
        spike = max(spike, losses[t] / running)
    return {"steps": steps, "examples": examples, "batches": batches, "train_loss": tl, "test_acc": va, "spike": spike, "curve": curve}


class _Fixed:
    def __init__(self, b: int) -> None:
        self.batch_size = b


def cost_model(pair: Dict[str, Any], repeats: int = 20) -> Dict[int, float]:
    """Seconds of one plain step at local batches 2..128 (this machine)."""
    (xt, yt), _ = load(pair["data"], 0)
    classes = int(yt.max()) + 1
    model = build(pair["model"], 0, xt.shape[1] if xt.dim() == 2 and xt.dtype != torch.int64 else 0, classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = {}
    for b in (2, 8, 32, 128):
        x, y = xt[:b], yt[:b]
        ts = []
        for r in range(repeats + 3):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if r >= 3:
                ts.append(time.perf_counter() - t0)
        out[b] = min(ts)  # the machine is shared: the least disturbed run
    return out


def step_cost(cm: Dict[int, float], batch: int) -> float:
    local = math.ceil(batch / P)
    xs = sorted(cm)
    return float(np.interp(local, xs, [cm[b] for b in xs]))


# ------------------------------------------------------------------ report ---


def verdict(row: Dict[str, Any], small: Dict[str, Any], delta: float = 1.0) -> str:
    loss_ok = row["train_loss"] <= (1 + delta / 2) * small["train_loss"]
    acc_ok = row["test_acc"] >= small["test_acc"] - 0.01
    spike_ok = row["spike"] <= 2.0
    steps_ok = row["steps"] * 4 <= small["steps"]
    if loss_ok and acc_ok and spike_ok and steps_ok:
        return "wins"
    if loss_ok and acc_ok and spike_ok:
        return "ties (steps < 4× fewer)"
    why = [w for w, ok in (("train loss", loss_ok), ("test acc", acc_ok), ("spike > 2×", spike_ok)) if not ok]
    return "loses (" + ", ".join(why) + ")"


def summarize(runs: List[Dict[str, Any]], cm: Dict[int, float]) -> Dict[str, Any]:
    def ms(key):
        vals = np.array([r[key] for r in runs], dtype=float)  # NaN for a diverged run
        return float(vals.mean()), (float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)

    return {
        "steps": statistics.fmean(r["steps"] for r in runs),
        "examples": statistics.fmean(r["examples"] for r in runs),
        "train_loss": ms("train_loss")[0],
        "train_loss_sd": ms("train_loss")[1],
        "test_acc": ms("test_acc")[0],
        "test_acc_sd": ms("test_acc")[1],
        "mean_batch": statistics.fmean(r["examples"] / r["steps"] for r in runs),
        "spike": max(r["spike"] for r in runs),
        "sim_s": statistics.fmean(sum(step_cost(cm, b) for b in r["batches"]) for r in runs),
    }


def print_pair(name: str, rows: Dict[str, Dict[str, Any]], cm: Dict[int, float]) -> None:
    print(f"\n{name}   (cost model, one step at local batch 2/8/32/128: " + " / ".join(f"{1e3 * cm[b]:.2f}" for b in sorted(cm)) + " ms)")
    head = f"{'method':<31} {'steps':>6} {'train loss':>16} {'test acc':>14} {'mean B':>7} {'spike':>6} {'sim P=8 s':>9}  verdict"
    print(head)
    print("-" * (len(head) + 12))
    small = rows["fixed 16"]
    for m, r in rows.items():
        v = verdict(r, small) if m.startswith("adaptive") else ""
        print(
            f"{m:<31} {r['steps']:>6.0f} {r['train_loss']:>9.4f}±{r['train_loss_sd']:.4f} {r['test_acc']:>7.3f}±{r['test_acc_sd']:.3f} "
            f"{r['mean_batch']:>7.0f} {r['spike']:>6.2f} {r['sim_s']:>9.3f}  {v}"
        )


def plot(curves: Dict[str, Dict[str, List]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(curves)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.6), squeeze=False)
    for ax, (name, per) in zip(axes[0], curves.items()):
        for m, c in per.items():
            ax.plot(*zip(*c), label=m, lw=1.2)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("examples")
    axes[0][0].set_ylabel("train loss (seed 0)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, a third of the passes, 3 pairs")
    ap.add_argument("--smoke", action="store_true", help="one pair, 2 passes (the test suite)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--pairs", nargs="+", default=None, help="substrings of the pair names")
    ap.add_argument("--methods", nargs="+", default=None, help="substrings of the method names (fixed 16, the reference, always runs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    pairs = dict(PAIRS)
    if args.quick:
        pairs = {k: v for k, v in pairs.items() if k.split()[0] in ("logistic", "MLP", "transformer")}
    if args.smoke:
        pairs = {k: dict(v, passes=2) for k, v in pairs.items() if k.startswith("logistic")}
    if args.pairs:
        pairs = {k: v for k, v in pairs.items() if any(s.lower() in k.lower() for s in args.pairs)}
    methods = dict(METHODS)
    if args.methods:
        methods = {k: v for k, v in methods.items() if k == "fixed 16" or any(s.lower() in k.lower() for s in args.methods)}
    results: Dict[str, Any] = {}
    curves: Dict[str, Dict[str, List]] = {}
    t0 = time.perf_counter()
    for name, pair in pairs.items():
        passes = pair["passes"] / (3 if args.quick else 1)
        print(f"{name}: {passes:g} passes, {seeds} seed(s)", file=sys.stderr)
        cm = cost_model(pair)
        rows, curves[name] = {}, {}
        for m, method in methods.items():
            runs = [train_run(pair, method, s, passes, f"{m} s{s}") for s in range(seeds)]
            rows[m] = summarize(runs, cm)
            curves[name][m] = runs[0]["curve"]
        results[name] = {"rows": rows, "cost_ms": {b: 1e3 * c for b, c in cm.items()}}
        print_pair(name, rows, cm)
    print(f"\n{seeds} seed(s); lr η per pair at batch 16; total {time.perf_counter() - t0:.0f} s.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate_policy.json").write_text(json.dumps(results, indent=1))
    png = out / "validate_policy.png"
    plot(curves, png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
