"""Per-example norms of Hugging Face transformers, built from small configs
with random weights (nothing is downloaded), against the per-example
autograd loop: a GPT-2-style LM (Conv1D layers, position embeddings looked
up with ids of shape (1, T) and broadcast over the batch, the LM head tied
to the token embeddings) and a BERT-style sequence classifier (attention
mask with padding, position and token-type embeddings). Every parameter is
trainable, float64, mean and sum reduction.

The loop: for each example i, ℓ_i on the model run on example i alone,
torch.autograd.grad over every trainable parameter, the sum of squares.
Tolerance: rtol 1e-9 on each value (plus atol 1e-12·max).

Skipped only where transformers is not installed (python/requirements-dev.txt
installs it).
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

import gdiv  # noqa: E402

_CHECKOUT = str(Path(__file__).resolve().parents[1] / "gdiv")
if "gdiv.torch" not in __import__("sys").modules and _CHECKOUT not in list(gdiv.__path__):
    gdiv.__path__.insert(0, _CHECKOUT)
gtorch = importlib.import_module("gdiv.torch")
from gdiv.torch import DiversityMonitor, PerExampleNorms, find_norm_rule  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

REDUCTIONS = ["mean", "sum"]
VOCAB, T, B = 50, 8, 4


def assert_norms(got, want):
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert torch.all(want > 0)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * want.abs().max().item())


def gpt2():
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).double().train()


def bert():
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg).double().train()


def lm_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (B, T), generator=g)}


def cls_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0  # padded examples
    mask[3, 3:] = 0
    return {"input_ids": torch.randint(0, VOCAB, (B, T), generator=g), "attention_mask": mask, "labels": torch.randint(0, 3, (B,), generator=g)}


def lm_losses(model, batch):
    """ℓ_i: example i's next-token cross-entropy, mean over its positions
    (computed here in float64; HF's own loss upcasts to float32)."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(1)


def cls_losses(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits, batch["labels"], reduction="none")


def example(batch, i):
    return {k: v[i : i + 1] for k, v in batch.items()}


def loop_sq_norms(model, batch, losses):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(B):
        grads = torch.autograd.grad(losses(model, example(batch, i))[0], params, allow_unused=True)
        out.append(sum(g.square().sum() for g in grads if g is not None))
    return torch.stack(out)


MODELS = {"gpt2": (gpt2, lm_batch, lm_losses), "bert": (bert, cls_batch, cls_losses)}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(MODELS))
def test_norms_equal_the_per_example_loop(name, reduction):
    make, data, losses = MODELS[name]
    torch.manual_seed(0)
    model = make()
    assert all(p.requires_grad for p in model.parameters())
    batch = data()
    want = loop_sq_norms(model, batch, losses)
    with PerExampleNorms(model, loss_reduction=reduction) as pen:
        ell = losses(model, batch)
        (ell.mean() if reduction == "mean" else ell.sum()).backward()
        assert_norms(pen.sq_norms(), want)
        # No module needs the torch.func fallback (Conv1D has its rule); only
        # GPT-2's tied embedding / LM head materialize their shared weight.
        handled = set(pen.units.values())
        assert "fallback" not in handled, pen.units
        if name == "gpt2":
            assert pen.units["transformer.wpe"] == "rule"
            assert pen.units["transformer.h.0.attn.c_attn"] == "rule"
            assert {k for k, v in pen.units.items() if v == "materialized"} == {"transformer.wte", "lm_head"}


@pytest.mark.parametrize("name", list(MODELS))
def test_monitor_steps_on_the_model(name):
    make, data, losses = MODELS[name]
    torch.manual_seed(1)
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = DiversityMonitor(model, optimizer=opt, estimator_beta=0.0)
    for step in range(3):
        batch = data(seed=step)
        ref = copy.deepcopy(model)  # a copy's hooks are inert
        want = loop_sq_norms(ref, batch, losses)
        mean_grad = torch.autograd.grad(losses(ref, batch).mean(), list(ref.parameters()))
        opt.zero_grad()
        loss = losses(model, batch).mean()
        loss.backward()
        rec = mon.step(loss=loss)
        assert rec["batch"] == B and not rec["skipped"]
        torch.testing.assert_close(rec["sum_sq_norms"], want.sum().item(), rtol=1e-9, atol=0.0)
        want_sum = (B**2) * sum(g.square().sum() for g in mean_grad).item()  # ‖Σ g_i‖², g_i = ∇ℓ_i
        torch.testing.assert_close(rec["sq_norm_of_sum"], want_sum, rtol=1e-9, atol=0.0)
        opt.step()


@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 7)], ids=["B,in", "B,T,in"])
def test_conv1d_rule_is_exact(shape):
    torch.manual_seed(2)
    layer = Conv1D(4, 7).double()  # nf=4 outputs, nx=7 inputs: weight (7, 4)
    nn.init.normal_(layer.bias)
    assert find_norm_rule(layer) is find_norm_rule(nn.Linear(7, 4))
    x = torch.randn(*shape, dtype=torch.float64)
    c = torch.randn(*shape[1:-1], 4, dtype=torch.float64)
    loss = lambda out: (c * out + out.square()).reshape(out.shape[0], -1).sum(1)
    want = []
    for i in range(shape[0]):
        grads = torch.autograd.grad(loss(layer(x[i : i + 1]))[0], [layer.weight, layer.bias])
        want.append(sum(g.square().sum() for g in grads))
    with PerExampleNorms(layer, loss_reduction="sum", fallback=False) as pen:
        loss(layer(x)).sum().backward()
        assert_norms(pen.sq_norms(), torch.stack(want))


def test_conv1d_rule_is_registered_lazily_and_yields_to_the_users(tmp_path):
    """gdiv.torch never imports transformers; its Conv1D rule is registered
    at the first lookup after transformers is imported, unless the user
    registered one first."""
    script = """
import sys
import gdiv.torch
assert "transformers" not in sys.modules, "gdiv.torch imported transformers"
from torch import nn
from transformers.pytorch_utils import Conv1D
from gdiv.torch import find_norm_rule, register_norm_rule
@register_norm_rule(Conv1D)
def mine(layer, inputs, grad_output, ctx):
    raise AssertionError("not called")
assert find_norm_rule(Conv1D(3, 2)) is mine
assert find_norm_rule(nn.Linear(2, 3)) is not mine
print("ok")
"""
    # the gdiv this test imported (installed, or the checkout built in place)
    here = str(Path(gdiv.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
