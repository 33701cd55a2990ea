#!/usr/bin/env python3
"""Per-example gradient norms on the CPU: gdiv.torch next to its peers (a printed
table and a PNG; measured, never asserted).

Every method trains the same model on the same batch and must produce, at each
step, the per-example squared gradient norms ‖∇_θ ℓ_i‖² (B values) and the
batch gradient for an SGD step. One step is:

  plain           zero_grad, forward, cross-entropy (mean), backward, SGD step;
                  no norms (the baseline).
  gdiv norms      the plain step with gdiv.torch.PerExampleNorms attached, plus
                  .sq_norms() (hooks; no per-example gradients formed).
  gdiv full       gdiv.torch.per_example_grads -> the (B, P) matrix G, row norms
                  of G, the batch gradient = mean of G's rows written to .grad,
                  SGD step (no second forward/backward).
  backpack        extend(model), extend(loss); with backpack(BatchL2Grad()):
                  backward; Σ_params p.batch_l2 · B²; SGD step.
  opacus          GradSampleModule(model) (hooks, per-sample grads in
                  p.grad_sample); Σ_params row norms of p.grad_sample; SGD step.
  torch.func      vmap(grad(functional_call)) over the batch -> per-sample
                  grads, their norms, batch gradient = their mean, SGD step.
  hand-fused      not a library: a reference for gdiv norms, the same
                  computation written by hand for the bench's two models
                  (hand_fused below: each Linear / Conv2d runs a minimal
                  autograd Function whose backward computes the layer's norms
                  and gradients, as gdiv's fused convolutions do; no hooks,
                  no checks, no fallbacks). What gdiv norms costs above it is
                  its bookkeeping; what it costs above plain is the floor of
                  the approach on this machine.

Row norms of materialized per-example gradients (gdiv full, opacus,
torch.func) are taken with torch.linalg.vector_norm, one pass without a
temporary (see row_sq_norms), so that no peer pays for a slow reduction.

Each (model, batch, method) runs in its own fresh subprocess with
torch.set_num_threads(--threads) (default 1: stable numbers on a small shared
machine). The subprocess builds two identical copies of the model (same seed),
one plain and one for the method, and times their steps interleaved (plain,
method, method, plain, ...), up to MAX_PAIRS pairs: the overhead column is
the median, over the pairs, of the method's step time divided by the plain
step timed next to it, which cancels most of the machine's drift; q1..q3 are
the quartiles of those ratios. The "plain" row is itself such a pair (plain
vs. plain), so its overhead shows the noise floor.

Allocator (--malloc). PyTorch's CPU tensors come from malloc. With glibc's
defaults, freed blocks of a few MiB go back to the kernel (munmap, heap
trimming) and the next step's allocations fault their pages in again; on a
virtual machine that costs ~1 µs per 4 KiB page, and how much memory is
faulted varies from step to step with the allocator's state (plain steps of
the CNN at batch 256 took 33 to 43 ms in one process depending on 200 to
6800 faults per step). Any extra temporary then costs its page faults too, in
every method. --malloc reuse (the default) raises glibc's mmap and trim
thresholds (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ in each worker's
environment) so that freed memory is reused by the next step, as jemalloc,
tcmalloc or PyTorch's CUDA caching allocator do: the table then compares
compute and memory traffic. --malloc default measures glibc's behaviour
(noisier; run it to see what an untuned process gets).

Peak memory, two measures, both of one step and both above what was live
before it. Before each measured step the worker drops what the previous step
left (.grad, p.grad_sample, p.batch_l2, the norms: what
zero_grad(set_to_none=True) frees), so the peak counts the step's gradients
too and excludes only the model, optimizer and data.

  peak MiB  tensors: PyTorch keeps no allocator statistics on the CPU, and
            tracemalloc does not see its allocations, so the step runs under
            torch.profiler(profile_memory=True), which records every
            allocation and free of PyTorch's CPU allocator; the peak of their
            running sum is the most tensor memory the step held at once
            (activations, gradients, per-example gradients, temporaries).
            Exact and reproducible; blind to memory that is not a tensor
            (oneDNN scratchpads, Python objects). The verdict uses this one.
  rss MiB   the process (Linux only; "-" elsewhere): glibc malloc gets a fixed
            mmap threshold of 64 KiB (mallopt), so that blocks of 64 KiB or
            more are mapped on allocation and unmapped on free; the kernel's
            resident high-water mark is reset (5 > /proc/self/clear_refs)
            before the step and read after it, minus VmRSS before it. It sees
            everything but varies by a few MiB from one process to the next
            (allocator and oneDNN internals), so it is a cross-check only.
            Median of 3 steps.

Usage:
    python bench/bench_torch.py [--quick] [--threads 1] [--malloc reuse|default]
                                [--models mlp cnn] [--methods ...] [--png PATH]

--quick runs batch 64 only, with shorter timing (about a minute); the full run
(batches 64 and 256) takes a few minutes. Needs torch; opacus,
backpack-for-pytorch and tqdm for the peers (a missing peer is reported and
skipped); matplotlib for the PNG. gdiv.stats (the Go core) is timed on G when
`import gdiv` works.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

METHODS = ["plain", "gdiv norms", "hand-fused", "gdiv full", "backpack", "opacus", "torch.func"]
PEERS = ["gdiv full", "backpack", "opacus", "torch.func"]
MODELS = ["mlp", "cnn"]
MODEL_DESC = {
    "mlp": "MLP 784-512-512-10 (ReLU), 669,706 params",
    "cnn": "CNN conv3x3(1->16)-ReLU-pool-conv3x3(16->32)-ReLU-pool-linear(1568->10), 20,490 params",
}
TARGET = 0.10  # gdiv norms: at most +10% step time and +10% peak memory over plain
RTOL = 1e-4  # norms agreement across methods (first step)
TIE_TIME = 0.03  # time ratios closer than this (or the plain-vs-plain noise) are a tie
MAX_PAIRS = 150  # timed (plain, method) pairs per row, at most
TIE_MEM = 0.01  # peak tensor memory closer than this fraction of plain's peak is a tie
MIB = 1 << 20


# ------------------------------------------------------------------ imports ---


def import_gdiv():
    """(gdiv or None, the module with PerExampleNorms / per_example_grads /
    trainable_parameters, note). The package ``gdiv`` imports the Go extension
    first; gdiv.torch.capture and gdiv.torch.full are pure PyTorch. Without the
    extension (gdiv not pip-installed), load them from python/ under bare package
    stubs (so neither package __init__ runs) and report that gdiv.stats is
    unavailable."""
    try:
        import gdiv
        import gdiv.torch as gt

        return gdiv, gt, f"gdiv {gdiv.__version__} (Go core importable)"
    except ImportError as e:
        import importlib
        import types

        for k in [k for k in sys.modules if k == "gdiv" or k.startswith("gdiv.")]:
            del sys.modules[k]
        src = os.path.join(ROOT, "python", "gdiv")
        for name, path in (("gdiv", src), ("gdiv.torch", os.path.join(src, "torch"))):
            stub = types.ModuleType(name)
            stub.__path__ = [path]
            sys.modules[name] = stub
        capture = importlib.import_module("gdiv.torch.capture")
        full = importlib.import_module("gdiv.torch.full")
        gt = types.SimpleNamespace(
            PerExampleNorms=capture.PerExampleNorms,
            per_example_grads=full.per_example_grads,
            trainable_parameters=full.trainable_parameters,
        )
        why = f"Go extension not importable: {type(e).__name__}"
        return None, gt, f"gdiv.torch capture/full from python/ ({why}; gdiv.stats not timed)"


# ------------------------------------------------------------------- worker ---


def build_model(name: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 10),
        )
    raise ValueError(name)


def make_data(batch: int):
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y


def row_sq_norms(t):
    """(B,) float64 squared norms of the rows of t (B, ...). vector_norm is one
    pass with no temporary: on a (256, 669706) float32 matrix it takes ~20 ms
    where t.square().sum(1, dtype=float64) takes ~900 ms on this machine."""
    import torch

    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).to(torch.float64).square()


def hand_fused(model) -> List:
    """The "hand-fused" reference (see the module doc): replaces the forward
    of every nn.Linear (2-D input) and nn.Conv2d (zero padding, groups 1) of
    ``model`` by a minimal autograd Function whose backward computes the
    layer's per-example squared gradient norms (appended, float64 (B,), to
    the returned list) and its input, weight and bias gradients; the weight
    and bias gradients of a convolution are the sums of the per-example ones.
    Per-example convolution gradients as gdiv computes them: im2col (with a
    row of ones for the bias) and one batched product for layers with at
    most 4 input channels, else one grouped convolution backward with the
    batch folded into the channels."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    parts: List = []
    conv_backward = torch.ops.aten.convolution_backward

    def sq_rows(t):
        return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).to(torch.float64).square()

    class Conv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, layer):
            ctx.save_for_backward(x, w)
            ctx.layer = layer
            return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            layer = ctx.layer
            n, c_out, c_in = g.shape[0], g.shape[1], x.shape[1]
            st, pad, dil = list(layer.stride), list(layer.padding), list(layer.dilation)
            if c_in <= 4:
                kh, kw = layer.kernel_size
                h, wd = g.shape[2:]
                xp = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
                s = xp.stride()
                view = xp.as_strided((n, c_in, kh, kw, h, wd), (s[0], s[1], s[2] * dil[0], s[3] * dil[1], s[2] * st[0], s[3] * st[1]))
                k = c_in * kh * kw
                cols = g.new_empty(n, k + 1, h * wd)
                cols[:, :k].view(n, c_in, kh, kw, h, wd).copy_(view)
                cols[:, k].fill_(1.0)
                per = torch.bmm(cols, g.reshape(n, c_out, h * wd).transpose(1, 2))  # (n, k + 1, c_out)
                parts.append(sq_rows(per))
                tot = per.sum(0)
                gw, gb = tot[:k].t().reshape(w.shape), tot[k].clone()
            else:
                shape = (n * c_out,) + tuple(w.shape[1:])
                _, per, per_b = conv_backward(
                    g.reshape((1, n * c_out) + tuple(g.shape[2:])),
                    x.reshape((1, n * c_in) + tuple(x.shape[2:])),
                    g.new_empty(shape),
                    [n * c_out],
                    st,
                    pad,
                    dil,
                    False,
                    [0, 0],
                    n,
                    [False, True, True],
                )
                per_b = per_b.view(n, c_out)
                parts.append(sq_rows(per.view(n, -1)) + sq_rows(per_b))
                gw, gb = per.view((n,) + tuple(w.shape)).sum(0), per_b.sum(0)
            gx = None
            if ctx.needs_input_grad[0]:
                gx = conv_backward(g, x, w, None, st, pad, dil, False, [0, 0], 1, [True, False, False])[0]
            return gx, gw, gb, None

    class Lin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x, w)
            return F.linear(x, w, b)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            parts.append(sq_rows(g) * (sq_rows(x) + 1.0))  # ‖g_i‖² ‖x_i‖² + ‖g_i‖²
            return (g @ w if ctx.needs_input_grad[0] else None), g.t() @ x, g.sum(0)

    for m in model.modules():
        if type(m) is nn.Conv2d:
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError("hand_fused: Conv2d with zero numeric padding and groups=1 only")
            m.forward = (lambda layer: lambda inp: Conv.apply(inp, layer.weight, layer.bias, layer))(m)
        elif type(m) is nn.Linear:
            m.forward = (lambda layer: lambda inp: Lin.apply(inp, layer.weight, layer.bias))(m)
    return parts


def make_step(method: str, model, x, y, info: Dict) -> Callable[[], Optional["object"]]:
    """A closure running one training step of `method` on (x, y); it returns the
    (B,) float64 squared norms (None for plain)."""
    import torch
    import torch.nn.functional as F

    batch = x.shape[0]
    lr = 0.01

    if method in ("plain", "gdiv norms"):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        norms = None
        if method == "gdiv norms":
            _, gt, _ = import_gdiv()
            norms = gt.PerExampleNorms(model, loss_reduction="mean")
            info["units"] = norms.units

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            sq = norms.sq_norms() if norms is not None else None
            opt.step()
            return sq

        def clear():
            opt.zero_grad(set_to_none=True)
            if norms is not None:
                norms.reset()

        step.clear = clear
        return step

    if method == "hand-fused":
        import torch

        opt = torch.optim.SGD(model.parameters(), lr=lr)
        parts = hand_fused(model)

        def step():
            opt.zero_grad(set_to_none=True)
            parts.clear()
            F.cross_entropy(model(x), y).backward()
            sq = torch.stack(parts).sum(0) * float(batch) ** 2  # the loss is a mean
            opt.step()
            return sq

        def clear():
            opt.zero_grad(set_to_none=True)
            parts.clear()

        step.clear = clear
        return step

    if method == "gdiv full":
        gdiv, gt, _ = import_gdiv()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        named = gt.trainable_parameters(model)

        def step():
            opt.zero_grad(set_to_none=True)
            G = gt.per_example_grads(model, F.cross_entropy, x, y)
            sq = row_sq_norms(G)
            mean = G.mean(0)
            col = 0
            for _, p in named:
                k = p.numel()
                p.grad = mean[col : col + k].view_as(p)
                col += k
            opt.step()
            return sq

        if gdiv is not None:  # timed apart: the Go core's statistics on G
            info["stats"] = (lambda: gt.per_example_grads(model, F.cross_entropy, x, y), gdiv.stats)
        step.clear = lambda: opt.zero_grad(set_to_none=True)
        return step

    if method == "backpack":
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad

        model = extend(model)
        lossf = extend(torch.nn.CrossEntropyLoss())
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x), y)
            with backpack(BatchL2Grad()):
                loss.backward()
            # batch_l2 is ‖(1/B)∇ℓ_i‖² for a mean loss
            sq = torch.stack([p.batch_l2 for p in params]).sum(0).to(torch.float64) * float(batch) ** 2
            opt.step()
            return sq

        def clear():
            opt.zero_grad(set_to_none=True)
            for p in params:
                p.batch_l2 = None

        step.clear = clear
        return step

    if method == "opacus":
        import warnings

        from opacus import GradSampleModule

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm = GradSampleModule(model, loss_reduction="mean")
        opt = torch.optim.SGD(gsm.parameters(), lr=lr)
        params = [p for p in gsm.parameters() if p.requires_grad]

        def step():
            gsm.zero_grad(set_to_none=True)  # clears .grad and .grad_sample
            loss = F.cross_entropy(gsm(x), y)
            loss.backward()
            # loss_reduction="mean": grad_sample is ∇ℓ_i (Opacus rescales by B)
            sq = sum(row_sq_norms(p.grad_sample) for p in params)
            opt.step()
            return sq

        step.clear = lambda: gsm.zero_grad(set_to_none=True)
        return step

    if method == "torch.func":
        from torch.func import functional_call, grad, vmap

        opt = torch.optim.SGD(model.parameters(), lr=lr)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

        def loss_one(ps, xi, yi):
            out = functional_call(model, ps, (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

        def step():
            opt.zero_grad(set_to_none=True)
            g = per_sample({n: p.detach() for n, p in named}, x, y)
            sq = sum(row_sq_norms(g[n]) for n, _ in named)
            for n, p in named:
                p.grad = g[n].mean(0)
            opt.step()
            return sq

        step.clear = lambda: opt.zero_grad(set_to_none=True)
        return step

    raise ValueError(method)


class RSS:
    """Peak resident memory of one call above the resident memory before it
    (Linux: VmHWM reset through /proc/self/clear_refs)."""

    def __init__(self) -> None:
        self.ok = sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")
        self.libc = None
        if self.ok:
            try:
                self.libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self.libc = None

    def fixed_mmap_threshold(self) -> None:
        if self.libc is not None:
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
            self.libc.mallopt(M_MMAP_THRESHOLD, 64 << 10)
            self.libc.mallopt(M_TRIM_THRESHOLD, 128 << 10)

    def trim(self) -> None:
        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def peak(self, fn: Callable[[], object]) -> Optional[int]:
        """Run fn.clear() (drop what the last step left: .grad, per-sample
        gradients), then fn(), and return its peak above the memory before it."""
        fn.clear()
        if not self.ok:
            fn()
            return None
        self.trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.ok = False
            fn()
            return None
        before = self._status("VmRSS")
        fn()
        return self._status("VmHWM") - before


def tensor_peak(fn: Callable[[], object]) -> Optional[int]:
    """fn.clear(), then fn() under the profiler's memory recording; the peak of
    the running sum of PyTorch CPU allocations and frees during fn, in bytes
    (None when this torch's profiler does not expose them)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn.clear()
    gc.collect()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        cur = peak = 0
        for e in events:
            if e.device_type() == torch.autograd.DeviceType.CPU:
                cur += e.nbytes()
                peak = max(peak, cur)
        return peak
    except (AttributeError, RuntimeError):
        return None


def worker(model_name: str, batch: int, method: str, threads: int, budget: float) -> Dict:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    rss = RSS()
    x, y = make_data(batch)
    base = build_model(model_name)
    plain_model = copy.deepcopy(base)
    info: Dict = {}
    plain = make_step("plain", plain_model, x, y, {})
    meth = make_step(method, base, x, y, info)

    first = meth()  # first step: parameters at initialization, for the cross-check
    norms = None if first is None else [float(v) for v in first.detach().cpu()]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # warm-up: at least 2 pairs, up to ~15% of the budget
    t_start = time.perf_counter()
    for k in range(8):
        timed(plain), timed(meth)
        if k >= 1 and time.perf_counter() - t_start > 0.15 * budget:
            break
    tp: List[float] = []
    tm: List[float] = []
    t_start = time.perf_counter()
    k = 0
    while k < 5 or (time.perf_counter() - t_start < budget and k < MAX_PAIRS):
        if k % 2 == 0:
            tp.append(timed(plain))
            tm.append(timed(meth))
        else:
            tm.append(timed(meth))
            tp.append(timed(plain))
        k += 1

    stats_ms = None
    if "stats" in info:
        make_g, gstats = info.pop("stats")
        G = make_g()
        gstats(G)
        stats_ms = 1e3 * statistics.median(timed(lambda: gstats(G)) for _ in range(5))
        del G

    # memory, after timing: tensors (profiler), then the process (fixed mmap
    # threshold; see the module doc)
    peak_p = tensor_peak(plain)
    peak_m = tensor_peak(meth)
    rss.fixed_mmap_threshold()
    rss.trim()
    meth(), plain()  # one step each under the new malloc settings
    mem_m, mem_p = [], []
    for _ in range(3):
        mem_p.append(rss.peak(plain))
        mem_m.append(rss.peak(meth))
    med = lambda v: None if v[0] is None else statistics.median(v)  # noqa: E731
    return {
        "model": model_name,
        "batch": batch,
        "method": method,
        "ms": 1e3 * statistics.median(tm),
        "plain_ms": 1e3 * statistics.median(tp),
        # the overhead: the median of the per-pair ratios (each step over the
        # plain step timed beside it), and their quartiles
        "ratio": statistics.median(a / b for a, b in zip(tm, tp)),
        "ratio_q": [float(q) for q in statistics.quantiles([a / b for a, b in zip(tm, tp)], n=4)[::2]],
        "steps": len(tm),
        "peak": peak_m,
        "plain_peak": peak_p,
        "rss": med(mem_m),
        "plain_rss": med(mem_p),
        "stats_ms": stats_ms,
        "norms": norms,
        "units": info.get("units"),
    }


# ------------------------------------------------------------------- parent ---


# --malloc reuse: glibc keeps freed memory for the next allocations instead of
# returning it to the kernel (as jemalloc, tcmalloc and PyTorch's CUDA caching
# allocator do), so that a step's time does not depend on how many pages the
# kernel must fault in again; see the module doc.
REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def run_worker(model: str, batch: int, method: str, threads: int, budget: float, malloc: str = "reuse") -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, str(batch), method, "--threads", str(threads), "--budget", str(budget)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for k in REUSE_ENV:
        env.pop(k, None)
    if malloc == "reuse":
        env.update(REUSE_ENV)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"model": model, "batch": batch, "method": method, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pct(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return 100.0 * (a / b - 1.0)


def fmt(v: Optional[float], spec: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+{spec}}" if signed else f"{v:{spec}}"


def pct_cell(v: Optional[float], width: int = 10) -> str:
    return ("-" if v is None else f"{v:+.1f}%").rjust(width)


def quartiles(r: Dict) -> str:
    lo, hi = r["ratio_q"]
    return f"{100 * (lo - 1):+.0f}..{100 * (hi - 1):+.0f}%"


def agree(rows: List[Dict]) -> Tuple[bool, str]:
    import numpy as np

    ref_row = next((r for r in rows if r.get("method") == "gdiv norms" and r.get("norms")), None)
    ref_row = ref_row or next((r for r in rows if r.get("norms")), None)
    if ref_row is None:
        return False, "no norms to compare"
    ref = np.asarray(ref_row["norms"])
    worst, bad = 0.0, []
    for r in rows:
        if not r.get("norms") or r is ref_row:
            continue
        v = np.asarray(r["norms"])
        rel = float(np.max(np.abs(v - ref) / np.abs(ref)))
        worst = max(worst, rel)
        if not np.allclose(v, ref, rtol=RTOL, atol=0.0):
            bad.append(f"{r['method']} (max rel diff {rel:.1e})")
    detail = f"max rel diff vs {ref_row['method']} {worst:.1e}" + (f"; differ: {', '.join(bad)}" if bad else "")
    return not bad, detail


def verdict(rows: List[Dict]) -> str:
    """The target line for one (model, batch). Time against peers compares each
    method's ratio to the plain steps timed beside it (robust to the machine's
    drift between subprocesses); a difference within the noise floor (the
    plain-vs-plain row's deviation, at least TIE_TIME) is a tie. Memory
    compares peak MiB; within TIE_MEM of the plain peak is a tie. A tie is
    not "cheaper", and the line says so."""
    by = {r["method"]: r for r in rows if "error" not in r}
    n = by.get("gdiv norms")
    if n is None:
        return "gdiv norms: not measured"
    t, m = 100.0 * (n["ratio"] - 1.0), pct(n["peak"], n["plain_peak"])
    t_ok = t is not None and t <= 100 * TARGET
    m_ok = m is not None and m <= 100 * TARGET
    ratio = lambda r: r["ratio"]  # noqa: E731
    floor = abs(ratio(by["plain"]) - 1.0) if "plain" in by else 0.0
    tie_t = max(TIE_TIME, floor)
    not_cheaper = []
    for p in PEERS:
        if p not in by:
            not_cheaper.append(f"{p} (not run)")
            continue
        why = []
        d = ratio(by[p]) - ratio(n)  # > 0: the peer is slower
        if d <= -tie_t:
            why.append("faster")
        elif d < tie_t:
            why.append(f"time tie within {100 * tie_t:.0f}%")
        if by[p]["peak"] is not None and n["peak"] is not None:
            dm = (by[p]["peak"] - n["peak"]) / n["plain_peak"]
            if dm <= -TIE_MEM:
                why.append("less memory")
            elif dm < TIE_MEM:
                why.append(f"memory tie within {100 * TIE_MEM:.0f}%")
        if why:
            not_cheaper.append(f"{p}: {', '.join(why)}")
    hf = by.get("hand-fused")
    ref = "" if hf is None else f"; hand-fused reference {100.0 * (hf['ratio'] - 1.0):+.2f}%"
    parts = [
        f"time {fmt(t, '.2f', True)}% ({'met' if t_ok else 'MISSED'} <= +10%{ref})",
        f"memory {fmt(m, '.2f', True)}% ({'met' if m_ok else 'MISSED'} <= +10%)",
        "cheaper than every peer: " + ("yes" if not not_cheaper else f"NO ({'; '.join(not_cheaper)})"),
    ]
    return "gdiv norms: " + ", ".join(parts)


def plot(rows: List[Dict], configs: List[Tuple[str, int]], path: str, threads: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    import numpy as np

    colors = {
        "plain": "#888888",
        "gdiv norms": "#1f77b4",
        "hand-fused": "#9edae5",
        "gdiv full": "#aec7e8",
        "backpack": "#ff7f0e",
        "opacus": "#2ca02c",
        "torch.func": "#d62728",
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(METHODS)
    xs = np.arange(len(configs))
    panels = ((axes[0], "ms", "step time, ms (median)"), (axes[1], "peak", "peak tensor memory in the step, MiB"))
    for ax, key, label in panels:
        for j, m in enumerate(METHODS):
            vals = []
            for model, batch in configs:
                r = next((r for r in rows if r["model"] == model and r["batch"] == batch and r["method"] == m), None)
                v = None if r is None or "error" in r else r[key]
                vals.append(np.nan if v is None else (v / MIB if key == "peak" else v))
            ax.bar(xs + (j - (len(METHODS) - 1) / 2) * width, vals, width, label=m, color=colors[m])
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{m.upper()}\nbatch {b}" for m, b in configs])
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(
        f"Per-example squared gradient norms on the CPU ({threads} thread{'s' if threads > 1 else ''}): training step with norms vs. plain step",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 64 only, shorter timing (about a minute)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every worker (default 1)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 64 256; --quick: 64)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed steps per configuration")
    ap.add_argument(
        "--malloc",
        choices=["reuse", "default"],
        default="reuse",
        help="reuse (default): glibc keeps freed memory for reuse (no page faults per step); default: glibc's own thresholds (see the module doc)",
    )
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--png", default=os.path.join(HERE, "out", "torch_bench.png"))
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "BATCH", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        model, batch, method = a.worker
        res = worker(model, int(batch), method, a.threads, a.budget or 2.0)
        print(json.dumps(res))
        return

    batches = a.batches or ([64] if a.quick else [64, 256])
    budget = a.budget or (1.0 if a.quick else 3.0)
    import torch

    _, _, gnote = import_gdiv()
    vers = [f"torch {torch.__version__}"]
    from importlib import metadata

    for mod, dist in (("opacus", "opacus"), ("backpack", "backpack-for-pytorch")):
        try:
            __import__(mod)
            vers.append(f"{dist} {metadata.version(dist)}")
        except Exception as e:  # noqa: BLE001 - reported, the rows say "failed"
            vers.append(f"{dist}: not importable ({type(e).__name__}: {e})")
    print(f"Python {platform.python_version()}, {', '.join(vers)}; {gnote}")
    print(
        f"{os.cpu_count()} CPUs ({platform.machine()}), torch threads per worker: {a.threads}; "
        f"one fresh subprocess per row; ~{budget:g} s of interleaved timed steps per row; "
        f"malloc: {a.malloc}"
        + (" (freed memory reused, no page faults per step)" if a.malloc == "reuse" else " (glibc defaults: page faults vary from step to step)")
    )
    for m in a.models:
        print(f"  {m}: {MODEL_DESC[m]}; input 1x28x28 (random), 10 classes, cross-entropy (mean), SGD lr 0.01")
    print("step ms: median step time; vs plain: median over the timed pairs of (method step / the plain step")
    print("  timed beside it); q1..q3: the quartiles of those ratios (the spread the machine adds).")
    print("peak MiB: most tensor memory one step holds above model + optimizer + data (torch profiler; exact).")
    print("rss MiB: the same for the process's resident memory (cross-check, +-a few MiB; see --help).")

    t0 = time.perf_counter()
    configs = [(m, b) for m in a.models for b in batches]
    rows: List[Dict] = []
    head = f"{'model':<5} {'batch':>5}  {'method':<11} {'step ms':>9} {'vs plain':>10} {'q1..q3':>15} {'peak MiB':>9} {'vs plain':>10} {'rss MiB':>8}"
    print("\n" + head)
    print("-" * len(head))
    verdicts, checks, extras = [], [], []
    for model, batch in configs:
        group = []
        for method in a.methods:
            r = run_worker(model, batch, method, a.threads, budget, a.malloc)
            group.append(r)
            if "error" in r:
                print(f"{model:<5} {batch:>5}  {method:<11} failed: {r['error']}")
                continue
            print(
                f"{model:<5} {batch:>5}  {method:<11} {r['ms']:>9.2f} {pct_cell(100.0 * (r['ratio'] - 1.0))}"
                f" {quartiles(r):>15}"
                f" {fmt(None if r['peak'] is None else r['peak'] / MIB, '9.1f'):>9}"
                f" {pct_cell(pct(r['peak'], r['plain_peak']))}"
                f" {fmt(None if r['rss'] is None else r['rss'] / MIB, '8.1f'):>8}",
                flush=True,
            )
            if r.get("stats_ms") is not None:
                extras.append(
                    f"{model} batch {batch}: gdiv.stats(G) on the ({batch}, P) matrix of gdiv full: "
                    f"{r['stats_ms']:.2f} ms more per step (not in the table)"
                )
        rows += group
        ok, detail = agree(group)
        checks.append(f"{model} batch {batch}: norms agree: {'yes' if ok else 'no'} (rtol {RTOL:g}; {detail})")
        verdicts.append(f"{model} batch {batch}: {verdict(group)}")
        print("-" * len(head))

    print("\nFirst-step per-example squared norms, all methods against each other:")
    for c in checks:
        print("  " + c)
    print("\nTarget: gdiv norms adds <= 10% step time and <= 10% peak memory over plain, and costs less than each peer:")
    for v in verdicts:
        print("  " + v)
    print()
    if extras:
        for e in extras:
            print("  " + e)
    for model in a.models:
        units = next((r["units"] for r in rows if r["model"] == model and r.get("units")), None)
        if units:
            print(f"gdiv norms, {model}: {units} (module: rule | fallback | materialized)")
    plot(rows, configs, a.png, a.threads)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
