"""The README's worked example of a rule for your own layer
(python/README.md, "Your own layers"): the block is run as written, and its
norms equal the per-example autograd loop on 2-D and sequence inputs, mean
and sum reduction, float64 (rtol 1e-10)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import gdiv  # noqa: E402

_CHECKOUT = str(Path(__file__).resolve().parents[1] / "gdiv")
if "gdiv.torch" not in __import__("sys").modules and _CHECKOUT not in list(gdiv.__path__):
    gdiv.__path__.insert(0, _CHECKOUT)
gtorch = importlib.import_module("gdiv.torch")

torch.set_num_threads(1)

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> dict:
    text = README.read_text(encoding="utf-8")
    section = text.split("#### Your own layers", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "no python block under 'Your own layers'"
    ns: dict = {"__name__": "readme_example"}
    exec(compile(block.group(1), f"{README}:Your own layers", "exec"), ns)
    return ns


def loop_sq_norms(model, x, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss(model(x[i : i + 1]))[0], params)
        out.append(sum(g.square().sum() for g in grads))
    return torch.stack(out)


def loss(out):
    c = torch.cos(torch.arange(out[0].numel(), dtype=out.dtype)).reshape(out.shape[1:])
    return (c * out + out.square()).reshape(out.shape[0], -1).mean(1)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(6, 8), (6, 5, 8)], ids=["B,d", "B,T,d"])
def test_readme_rule_for_your_own_layer(shape, reduction):
    torch.manual_seed(0)
    ns = readme_example()
    model, norms = ns["model"].double(), ns["norms"]
    assert norms.units == {"0": "rule", "2": "rule"}  # the registered rule, not the fallback
    norms.remove()
    torch.nn.init.normal_(model[0].bias)  # zero at init
    x = torch.randn(*shape, dtype=torch.float64)
    want = loop_sq_norms(model, x, loss)
    with gtorch.PerExampleNorms(model, loss_reduction=reduction, fallback=False) as pen:
        ell = loss(model(x))
        (ell.mean() if reduction == "mean" else ell.sum()).backward()
        torch.testing.assert_close(pen.sq_norms(), want, rtol=1e-10, atol=0.0)


def test_frozen_bias_is_skipped_by_the_rule():
    ns = readme_example()
    model = ns["model"].double()
    ns["norms"].remove()
    model[0].bias.requires_grad_(False)
    x = torch.randn(4, 8, dtype=torch.float64)
    want = loop_sq_norms(model, x, loss)
    with gtorch.PerExampleNorms(model, loss_reduction="sum", fallback=False) as pen:
        loss(model(x)).sum().backward()
        torch.testing.assert_close(pen.sq_norms(), want, rtol=1e-10, atol=0.0)
