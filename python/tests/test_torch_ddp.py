"""DDP (gloo, CPU, float64): P ranks × local batch b give the numbers, the
decisions and the weights of one process with batch P·b on the same
examples; every rank decides the same, bit for bit; a failing rank or a NaN
never leaves the others hanging. The ranks are processes (spawn), with a
bounded wait; _ddp_worker.py is one rank."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import _ddp_worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXACT = ("step", "examples", "batch", "next_batch", "skipped", "no_signal")
CLOSE = ("sum_sq_norms", "sq_norm_of_sum", "m2", "g", "batch_bound", "lr", "loss")


def spawn(world: int, cfg: dict, tmp_path, timeout: float = 120.0):
    """Run the ranks; return (results, errors) per rank. Fails on a hang."""
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path}/rendezvous"
    procs = [ctx.Process(target=_ddp_worker.run, args=(r, world, init, str(tmp_path), cfg)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {timeout:.0f} s"
    res, errs = [], []
    for r in range(world):
        pt, err = tmp_path / f"rank{r}.pt", tmp_path / f"rank{r}.err"
        res.append(torch.load(pt, weights_only=False) if pt.exists() else None)
        errs.append(err.read_text() if err.exists() else None)
    return res, errs


def identical(a, b, unmeasured_loss=False):
    """Records equal value for value (NaN equals NaN: the same bits on every
    rank). The loss of an unmeasured step is each rank's own (no collective
    on those steps), compared only when unmeasured_loss."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            vb = rb[k]
            if k == "loss" and ra["skipped"] == "unmeasured" and not unmeasured_loss:
                continue
            if isinstance(va, float) and math.isnan(va):
                assert isinstance(vb, float) and math.isnan(vb), (k, ra["step"])
            else:
                assert va == vb, (k, ra["step"], va, vb)
    return True


def ok(res, errs):
    assert all(e is None for e in errs), "\n".join(e for e in errs if e)
    return res


def assert_same_run(got, want, rel=1e-10, lr_scale=1.0):
    assert len(got["records"]) == len(want["records"])
    for a, b in zip(got["records"], want["records"]):
        for k in EXACT:
            assert a[k] == b[k], (k, a["step"], a[k], b[k])
        for k in CLOSE:
            if k == "loss" and b["skipped"] == "unmeasured":
                continue  # each rank's own loss on an unmeasured step
            if b[k] is None:
                assert a[k] is None, k
            elif k == "lr":
                assert a[k] == pytest.approx(b[k] * lr_scale, rel=rel), (k, a["step"])
            else:
                assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-300, nan_ok=True), (k, a["step"])
    for name, w in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], w, rtol=rel, atol=1e-12)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_ddp_equals_one_process_with_the_global_batch(world, adaptive, tmp_path):
    b = 4
    cfg = {"batch": world * b, "adaptive": adaptive, "steps": 10, "multiple_of": world}
    res = ok(*spawn(world, cfg, tmp_path))
    one = _ddp_worker.train(cfg, 0, 0)
    # every rank made the same decisions, bit for bit
    for r in res[1:]:
        assert identical(r["records"], res[0]["records"])
        assert all(torch.equal(r["weights"][k], v) for k, v in res[0]["weights"].items())
    assert_same_run(res[0], one)
    assert [x * world for x in res[0]["local"]] == [rec["batch"] for rec in one["records"]]
    if adaptive:
        assert len({rec["batch"] for rec in one["records"]}) > 1, "the adaptive run should change its batch"
        assert res[0]["policy"]["multiple_of"] == world


@pytest.mark.parametrize("model", ["cnn", "gpt2"])
def test_ddp_on_a_cnn_and_a_third_party_transformer(model, tmp_path):
    """A fused-convolution CNN and a Hugging Face GPT-2 (position embeddings
    broadcast over the batch, Conv1D layers) under DDP equal one process."""
    if model == "gpt2":
        pytest.importorskip("transformers")
    cfg = {"batch": 8, "adaptive": True, "steps": 6, "multiple_of": 2, "model": model, "lr": 0.1}
    res = ok(*spawn(2, cfg, tmp_path))
    assert identical(res[0]["records"], res[1]["records"])
    assert_same_run(res[0], _ddp_worker.train(cfg, 0, 0), rel=1e-9)


@pytest.mark.parametrize("mode", ["norms", "two_scale"])
def test_ddp_gradient_accumulation_with_no_sync(mode, tmp_path):
    """2 ranks × 2 micro-batches (no_sync on the first), each mean loss / 2:
    one batch of the global size — the one-process run with the whole batch
    (norms), or with the 4 shares as micro-batches (two_scale)."""
    cfg = {"batch": 16, "adaptive": True, "steps": 8, "multiple_of": 4, "micro": 2, "mode": mode}
    res = ok(*spawn(2, cfg, tmp_path))
    assert identical(res[0]["records"], res[1]["records"])
    one = _ddp_worker.train(dict(cfg, micro=1 if mode == "norms" else 4), 0, 0)
    got = dict(res[0], records=[dict(r, loss=None) for r in res[0]["records"]])
    assert_same_run(got, dict(one, records=[dict(r, loss=None) for r in one["records"]]))


def test_ddp_with_a_per_device_cap_accumulates_weighted_micro_batches(tmp_path):
    """Global batch 20 on 2 ranks under max 4 examples per device: each rank
    runs 4+3+3 (micro_batches, no_sync) — the one-process run with batch 20."""
    cfg = {"batch": 20, "steps": 4, "cap": 4}
    res = ok(*spawn(2, cfg, tmp_path))
    assert identical(res[0]["records"], res[1]["records"])
    one = _ddp_worker.train(dict(cfg, cap=None), 0, 0)
    strip = lambda run: dict(run, records=[dict(r, loss=None) for r in run["records"]])  # noqa: E731
    assert_same_run(strip(res[0]), strip(one))


def test_ddp_rounds_the_policy_to_the_world_size(tmp_path):
    """A policy with multiple_of=1 under 2 ranks decides multiples of 2."""
    cfg = {"batch": 8, "adaptive": True, "steps": 8, "multiple_of": 1}
    res = ok(*spawn(2, cfg, tmp_path))
    assert res[0]["policy"]["multiple_of"] == 2
    assert all(rec["batch"] % 2 == 0 and rec["next_batch"] % 2 == 0 for rec in res[0]["records"])
    assert identical(res[0]["records"], res[1]["records"])


def test_ddp_sum_loss_and_the_cadence(tmp_path):
    cfg = {"batch": 8, "adaptive": True, "steps": 10, "multiple_of": 2, "reduction": "sum", "lr": 0.02, "measure_every": 3}
    res = ok(*spawn(2, cfg, tmp_path))
    # DDP averages the ranks' summed gradients: one process steps with lr/P
    one = _ddp_worker.train(dict(cfg, lr=cfg["lr"] / 2), 0, 0)
    assert identical(res[0]["records"], res[1]["records"])
    assert_same_run(res[0], one, lr_scale=2.0)
    assert sum(rec["skipped"] == "unmeasured" for rec in one["records"]) >= 5


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    cfg = {"batch": 8, "adaptive": True, "steps": 4, "multiple_of": 2, "nan_at": 2, "nan_rank": 1}
    res = ok(*spawn(2, cfg, tmp_path))
    for r in res:
        assert [rec["skipped"] for rec in r["records"]] == [None, None, "non-finite", None]
    assert identical(res[0]["records"], res[1]["records"])


def test_a_failing_rank_does_not_leave_the_others_hanging(tmp_path):
    cfg = {"batch": 8, "steps": 6, "fail_at": 3, "fail_rank": 1, "timeout": 20}
    t0 = time.monotonic()
    res, errs = spawn(2, cfg, tmp_path, timeout=90)
    assert time.monotonic() - t0 < 90
    assert res == [None, None]
    assert "a bad batch at step 3" in errs[1]
    assert errs[0] is not None  # rank 0 fails too (the peer is gone), it does not wait forever


def test_uneven_local_batches_with_a_mean_loss_are_refused_on_every_rank(tmp_path):
    cfg = {"batch": 8, "steps": 2, "uneven": True}
    res, errs = spawn(2, cfg, tmp_path)
    for e in errs:
        assert e is not None and "local batches differ" in e


def test_uneven_local_batches_with_a_sum_loss_are_exact(tmp_path):
    cfg = {"batch": 8, "steps": 1, "uneven": True, "reduction": "sum", "lr": 0.02}
    res = ok(*spawn(2, cfg, tmp_path))
    assert identical(res[0]["records"], res[1]["records"])
    assert [rec["batch"] for rec in res[0]["records"]] == [7]
    # the same 7 examples in one process: rank 0's 4 and rank 1's first 3
    from gdiv.torch import DiversityMonitor

    x, y = _ddp_worker.dataset()
    model = _ddp_worker.mlp(cfg)
    mon = DiversityMonitor(model, loss_reduction="sum", batch_size=8, dataset_size=_ddp_worker.N, estimator_beta=0.5, seed=5)
    from gdiv.torch import AdaptiveBatchSampler

    batch = next(iter(AdaptiveBatchSampler(_ddp_worker.N, mon, replacement=False, seed=3)))
    idx = batch[:4] + batch[4:7]
    torch.nn.functional.cross_entropy(model(x[idx]), y[idx], reduction="sum").backward()
    rec = mon.step()
    first = res[0]["records"][0]
    assert first["sum_sq_norms"] == pytest.approx(rec["sum_sq_norms"], rel=1e-10)
    assert first["sq_norm_of_sum"] == pytest.approx(rec["sq_norm_of_sum"], rel=1e-10)


def test_torchrun_launches_the_ddp_job(tmp_path):
    """The launcher users run: torchrun (torch.distributed.run), env:// rendezvous."""
    cfg = {"batch": 8, "adaptive": True, "steps": 6, "multiple_of": 2}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "_ddp_worker.py"), "--out", str(tmp_path), "--cfg", json.dumps(cfg)]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert identical(r0["records"], r1["records"])
    assert_same_run(r0, _ddp_worker.train(cfg, 0, 0))


@pytest.mark.parametrize("world_after", [2, 4])
def test_resume_makes_the_same_decisions_on_the_same_or_another_world_size(world_after, tmp_path):
    """A 2-rank run checkpointed at step 5 and resumed (2 ranks again, or 4):
    the global batches, decisions and estimates of the uninterrupted run."""
    cfg = {"batch": 8, "adaptive": True, "steps": 12, "multiple_of": 4, "state_at": 5}
    first = tmp_path / "first"
    first.mkdir()
    full = ok(*spawn(2, cfg, first))[0]
    ck = tmp_path / "ck.pt"
    torch.save(full["saved"], ck)
    again = tmp_path / "again"
    again.mkdir()
    res = ok(*spawn(world_after, dict(cfg, steps=7, load=str(ck), state_at=None), again))
    for r in res[1:]:
        assert identical(r["records"], res[0]["records"])
    tail = dict(full, records=full["records"][5:])
    assert_same_run(res[0], tail)
    assert res[0]["records"][0]["step"] == 6


def test_200_adaptive_steps_identical_on_every_rank(tmp_path):
    """Long enough for the batch to move many times and to cross several
    epochs (a batch that crosses a permutation's end continues into the
    next, so every share stays equal); compared exactly."""
    cfg = {"batch": 8, "adaptive": True, "steps": 200, "multiple_of": 2, "warmup": 1, "lr": 0.3}
    res = ok(*spawn(2, cfg, tmp_path, timeout=240))
    assert identical(res[0]["records"], res[1]["records"])
    assert all(torch.equal(res[1]["weights"][k], v) for k, v in res[0]["weights"].items())
    sizes = [r["batch"] for r in res[0]["records"]]
    assert len(set(sizes)) > 3, sizes


def test_ground_truth_go_trainer_reproduces_the_ddp_run(tmp_path):
    """Go's reference trainer, fed the same global sample indices, has the DDP
    run's weights and batch-size history (1e-9): logistic, softmax, MLP, mean
    step, adaptive, 2 ranks each given its share of Go's batches."""
    import numpy as np

    from gdiv import reference as ref

    digits = os.path.join(os.path.dirname(os.path.dirname(HERE)), "testdata", "digits.csv")
    problems = ["logistic", "softmax", "mlp"]
    res = ok(*spawn(2, {"job": "ground_truth", "digits": digits, "problems": problems, "steps": 40}, tmp_path))
    assert identical(res[0]["mlp"]["records"], res[1]["mlp"]["records"])
    raw = np.loadtxt(digits, delimiter=",", skiprows=1)
    X, y0 = raw[:300, :64], raw[:300, 64].astype(np.int64)
    sd = X.std(0)
    sd[sd == 0] = 1.0
    X = np.ascontiguousarray((X - X.mean(0)) / sd)
    import gdiv

    for problem in problems:
        y = y0 % 2 if problem == "logistic" else y0
        go = ref.train(
            X, y, problem=problem, l2=0.0, hidden=12, lr=0.3, step="mean", batch=8, steps=40,
            policy=gdiv.BatchSizePolicy(max_batch=96, max_growth=2.0, multiple_of=2), seed=3, estimator_beta=0.9,
            record_indices=True, classes=None if problem == "logistic" else 10,
        )  # fmt: skip
        got = res[0][problem]
        hist = go.history
        assert got["decided"] == [len(b) for b in go.batches], problem
        assert len(set(hist["batch"].tolist())) > 3, "the run must exercise the policy"
        assert [r["batch"] for r in got["records"]] == hist["batch"].tolist()
        for key in ("m2", "g", "batch_bound", "lr"):
            want = np.asarray(hist[key], dtype=float)
            have = np.asarray([r[key] for r in got["records"]], dtype=float)
            fin = np.isfinite(want)
            assert np.array_equal(np.isfinite(have), fin), (problem, key)
            assert np.all(np.abs(have[fin] - want[fin]) <= 1e-9 * np.abs(want[fin])), (problem, key)
        w, wg = np.asarray(got["weights"]), go.weights
        assert np.linalg.norm(w - wg) <= 1e-9 * np.linalg.norm(wg), problem


def test_two_node_torchrun_on_localhost(tmp_path):
    """Two torchrun launchers (two "nodes", one rank each) meeting at a c10d
    rendezvous on localhost: the multi-node command the README gives."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {"batch": 8, "adaptive": True, "steps": 5, "multiple_of": 2}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run"]
    script = [os.path.join(HERE, "_ddp_worker.py"), "--out", str(tmp_path), "--cfg", json.dumps(cfg)]
    procs = [
        subprocess.Popen(
            launch
            + ["--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
            + ["--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "gdiv-test"]
            + script,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert identical(r0["records"], r1["records"])
    assert_same_run(r0, _ddp_worker.train(cfg, 0, 0))


def test_monitoring_the_inner_module_warns_and_process_group_makes_it_global(tmp_path):
    """A monitor on the module inside DDP cannot see the process group: it
    warns (its decisions would be the rank's own); process_group=WORLD makes
    them global again, as the DDP wrapper's."""
    cfg = {"batch": 8, "steps": 3}
    inner = tmp_path / "inner"
    inner.mkdir()
    res = ok(*spawn(2, dict(cfg, monitor_inner=True), inner))
    assert any("not a DistributedDataParallel" in w for w in res[0]["warned"])
    world = tmp_path / "world"
    world.mkdir()
    got = ok(*spawn(2, dict(cfg, monitor_inner=True, process_group="world", adaptive=True, multiple_of=2, steps=6), world))
    assert got[0]["warned"] == []
    assert identical(got[0]["records"], got[1]["records"])
    assert_same_run(got[0], _ddp_worker.train(dict(cfg, adaptive=True, multiple_of=2, steps=6), 0, 0))
