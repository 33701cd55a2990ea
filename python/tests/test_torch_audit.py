"""The use audit: a parameter used outside the modules that own it is
refused (its gradient reaches .grad but not the norms), harmless uses are
not, and only the first forward after attach() pays for the audit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch import nn

from gdiv.torch import CaptureError, DiversityMonitor, PerExampleNorms

torch.set_num_threads(1)


class InsideAndOutside(nn.Module):
    """The issue's case: l.weight inside l and again in the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.h = nn.Linear(4, 3)

    def forward(self, x):
        return self.h(torch.tanh(self.l(x)) + F.linear(x, self.l.weight))


def data(b=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (b,), generator=g)


def loop_sum(model, x, y):
    total = 0.0
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        total += sum(float(p.grad.square().sum()) for p in model.parameters())
    return total


def test_weight_used_inside_and_outside_its_module_is_refused():
    torch.manual_seed(0)
    model = InsideAndOutside().double()
    x, y = data()
    truth = loop_sum(model, x, y)  # what the norms would have to be
    mon = DiversityMonitor(model, loss_reduction="sum")
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    with pytest.raises(CaptureError, match=r"outside the modules that own them: l\.weight \(in torch functions: linear\)"):
        mon.step()
    # the rules alone miss the outside use: the number the refusal prevents
    mon.remove()
    with PerExampleNorms(model, loss_reduction="sum") as pen:
        pen._audit_pending = False  # bypass the audit to show what it prevents
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
        wrong = float(pen.sq_norms().sum())
    assert abs(wrong - truth) > 0.05 * truth
    # full mode handles the model exactly
    full = DiversityMonitor(model, mode="full", loss_fn=F.cross_entropy, loss_reduction="sum")
    assert full.step(inputs=x, targets=y)["sum_sq_norms"] == pytest.approx(truth, rel=1e-10)


def test_refusal_persists_until_reattach():
    torch.manual_seed(0)
    model = InsideAndOutside().double()
    x, y = data()
    pen = PerExampleNorms(model)
    for _ in range(2):  # later forwards are not audited, but the finding stays
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        with pytest.raises(CaptureError, match="outside the modules"):
            pen.sq_norms()
        pen.reset()
    pen.remove()


class Harmless(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        self.h = nn.Linear(4, 3)

    def forward(self, x):
        z = x.new_zeros(self.l.weight.shape[0])  # a shape read
        with torch.no_grad():
            scale = self.l.weight.norm()  # no gradient path
        _ = self.h.weight.detach()
        return self.h(torch.tanh(self.l(x)) + z) * (1 + 0 * scale)


class Tied(nn.Module):
    """Weight tying: both modules own the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, t):
        return self.head(torch.tanh(self.emb(t))).mean(1)


@pytest.mark.parametrize("build, inputs", [(Harmless, lambda: data()[0]), (Tied, lambda: torch.randint(0, 10, (8, 5)))], ids=["harmless", "tied"])
def test_uses_inside_owners_or_without_gradient_are_fine(build, inputs):
    torch.manual_seed(0)
    model = build().double()
    x = inputs()
    y = torch.randint(0, model.head.out_features if hasattr(model, "head") else 3, (8,))
    with PerExampleNorms(model) as pen:
        F.cross_entropy(model(x), y).backward()
        assert pen.sq_norms().shape == (8,)


def test_only_the_first_forward_is_audited_and_the_mode_never_leaks():
    torch.manual_seed(0)
    model = Harmless().double()
    x, y = data()
    pen = PerExampleNorms(model)
    assert torch._C._len_torch_function_stack() == 0
    F.cross_entropy(model(x), y).backward()
    assert pen._audit_pending is False and pen._audit is None
    assert torch._C._len_torch_function_stack() == 0

    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            self.l(x)
            raise RuntimeError("boom")

    bad = Boom().double()
    pen2 = PerExampleNorms(bad)
    with pytest.raises(RuntimeError, match="boom"):
        bad(x)
    assert torch._C._len_torch_function_stack() == 0  # popped although the forward raised
    pen.remove()
    pen2.remove()
