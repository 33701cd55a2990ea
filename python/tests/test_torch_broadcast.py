"""Modules called on inputs with a batch of 1 whose output the model
broadcasts over the batch (position embeddings looked up with ids of shape
(1, T), a shared learned query): exact per-example norms against the
per-example autograd loop, and clear refusals where the output reaches the
batch by other operations.

Tolerances: float64, rtol 1e-10, atol 1e-12·max (as test_torch_norms).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import gdiv  # noqa: E402

_CHECKOUT = str(Path(__file__).resolve().parents[1] / "gdiv")
if "gdiv.torch" not in __import__("sys").modules and _CHECKOUT not in list(gdiv.__path__):
    gdiv.__path__.insert(0, _CHECKOUT)
gtorch = importlib.import_module("gdiv.torch")
from gdiv.torch import CaptureError, DiversityMonitor, PerExampleNorms  # noqa: E402

torch.set_num_threads(1)

REDUCTIONS = ["mean", "sum"]
V, T, D = 11, 6, 5


def loop_sq_norms(model, x, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss(model(x[i : i + 1]))[0], params, allow_unused=True)
        out.append(sum(g.square().sum() for g in grads if g is not None))
    return torch.stack(out)


def hooked_sq_norms(model, x, loss, reduction):
    with PerExampleNorms(model, loss_reduction=reduction) as pen:
        ell = loss(model(x))
        (ell.mean() if reduction == "mean" else ell.sum()).backward()
        return pen.sq_norms()


def smooth_loss(out):
    c = torch.sin(1.3 * torch.arange(out[0].numel(), dtype=out.dtype) + 0.2).reshape(out.shape[1:])
    return (c * out + 0.5 * out * out).reshape(out.shape[0], -1).mean(1)


def assert_norms(got, want):
    assert torch.all(want > 0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12 * want.abs().max().item())


class PosEmbed(nn.Module):
    """Token embeddings plus position embeddings looked up with ids of shape
    (1, T) and broadcast over the batch (as GPT-2 and BERT do), combined by
    ``combine``; then a Linear on every position."""

    def __init__(self, combine: str = "add") -> None:
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.out = nn.Linear(D, 3)
        self.combine = combine

    def forward(self, ids):
        p = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))  # (1, T, D)
        h = self.tok(ids)  # (B, T, D)
        if self.combine == "add":
            h = h + p.to(h.device)
        elif self.combine == "radd":
            h = p + h
        elif self.combine == "torch.add":
            h = torch.add(p, h, alpha=2.0)
        elif self.combine == "iadd":
            h += p
        elif self.combine == "mul":
            h = h * p
        elif self.combine == "sub-div":
            h = (p - h) / (2.0 + h.square())
        elif self.combine == "twice":  # two broadcasts in one op chain: their gradients add
            h = (h + p) * p
        return self.out(torch.tanh(h))


class SharedQuery(nn.Module):
    """A Linear called on a learned (1, T, D) input, broadcast-multiplied
    with the batch (a shared learned query)."""

    def __init__(self) -> None:
        super().__init__()
        self.q0 = nn.Parameter(torch.randn(1, T, D, dtype=torch.float64))
        self.q = nn.Linear(D, D)
        self.tok = nn.Embedding(V, D)

    def forward(self, ids):
        return self.tok(ids) * self.q(self.q0.tanh())


def ids(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, T), generator=g)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("combine", ["add", "radd", "torch.add", "iadd", "mul", "sub-div", "twice"])
def test_position_embeddings_broadcast_over_the_batch_are_exact(combine, reduction):
    torch.manual_seed(0)
    model = PosEmbed(combine).double()
    x = ids()
    want = loop_sq_norms(model, x, smooth_loss)
    assert_norms(hooked_sq_norms(model, x, smooth_loss, reduction), want)
    assert torch._C._len_torch_function_stack() == 0  # the mode was left


def test_float32_broadcast_is_exact_to_rounding_and_not_refused():
    torch.manual_seed(5)
    model = PosEmbed("twice")  # two copies of the shared output's gradient, summed
    x = ids(64)
    want = loop_sq_norms(model.double(), x, smooth_loss)
    got = hooked_sq_norms(model.float(), x, smooth_loss, "mean")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * want.max().item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_a_shared_input_of_a_linear_is_exact(reduction):
    torch.manual_seed(1)
    model = SharedQuery().double()
    x = ids(5)
    # q0 is owned by the root itself: the root is one fallback unit; freeze it
    # to test the Linear's broadcast alone.
    model.q0.requires_grad_(False)
    want = loop_sq_norms(model, x, smooth_loss)
    assert_norms(hooked_sq_norms(model, x, smooth_loss, reduction), want)


def test_batch_of_one_still_works():
    torch.manual_seed(2)
    model = PosEmbed().double()
    x = ids(1)
    assert_norms(hooked_sq_norms(model, x, smooth_loss, "sum"), loop_sq_norms(model, x, smooth_loss))


def test_monitor_steps_on_broadcast_position_embeddings():
    torch.manual_seed(3)
    model = PosEmbed().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = DiversityMonitor(model, optimizer=opt, estimator_beta=0.0)
    for step in range(3):
        x = ids(6, seed=step)
        want = loop_sq_norms(copy.deepcopy(model), x, smooth_loss)  # a copy's hooks are inert
        opt.zero_grad()
        loss = smooth_loss(model(x)).mean()
        loss.backward()
        rec = mon.step(loss=loss)
        torch.testing.assert_close(rec["sum_sq_norms"], want.sum().item(), rtol=1e-10, atol=0.0)
        opt.step()


class Indexed(PosEmbed):
    """The shared output reaches the batch through an index first."""

    def forward(self, ids):
        p = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))[0]  # (T, D)
        return self.out(torch.tanh(self.tok(ids) + p))


class AlsoRegularized(PosEmbed):
    """Used by another op (a penalty on it), then broadcast."""

    def forward(self, ids):
        p = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        penalty = p.square().mean()
        return self.out(torch.tanh(self.tok(ids) + p)) + penalty


class Stashed(PosEmbed):
    """Broadcast, and kept for a use after the forward (the mode cannot see it)."""

    def forward(self, ids):
        p = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        self.kept = p
        return self.out(torch.tanh(self.tok(ids) + p))


def test_shared_output_reaching_the_batch_otherwise_is_refused():
    model = Indexed().double()
    pen = PerExampleNorms(model)
    with pytest.raises(CaptureError, match=r"saw 1\..*batch of 1 whose output the model broadcasts.*expand\(batch_size, -1\)"):
        smooth_loss(model(ids())).mean().backward()  # refused as soon as the layer's gradient arrives
        pen.sq_norms()


def test_shared_output_also_used_otherwise_is_refused():
    model = AlsoRegularized().double()
    pen = PerExampleNorms(model)
    smooth_loss(model(ids())).mean().backward()
    with pytest.raises(CaptureError, match=r"'pos' \(Embedding\) was called with a batch of 1 .* also used by torch function 'square'"):
        pen.sq_norms()


def test_a_use_the_mode_cannot_see_is_caught_after_backward():
    model = Stashed().double()
    pen = PerExampleNorms(model)
    (smooth_loss(model(ids())).mean() + model.kept.sum()).backward()
    with pytest.raises(CaptureError, match=r"'pos' \(Embedding\), called with a batch of 1 and broadcast.*could not see"):
        pen.sq_norms()


def test_the_mode_is_left_after_the_broadcast_and_after_an_error():
    model = PosEmbed().double()
    seen = []

    def probe(m, args, out):
        seen.append(torch._C._len_torch_function_stack())

    model.out.register_forward_hook(probe)
    with PerExampleNorms(model):
        model(ids())  # the first forward after attach runs the use audit, under its own mode
        seen.clear()
        model(ids())
        assert seen == [0]  # left at the first unit hook after the broadcast (the Linear's own)
        bad = ids()
        bad[0, 0] = V + 5  # the token embedding raises after the mode was entered
        with pytest.raises(IndexError):
            model(bad)
        assert torch._C._len_torch_function_stack() == 0


class Scaled(PosEmbed):
    """An op with a scalar before the broadcast: the result is not followed."""

    def forward(self, ids):
        p = 2.0 * self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        return self.out(torch.tanh(self.tok(ids) + p))


class Returned(PosEmbed):
    """Broadcast, and returned by the model (used in the loss, or not)."""

    def forward(self, ids):
        p = self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        return self.out(torch.tanh(self.tok(ids) + p)), p


def test_an_op_with_a_scalar_before_the_broadcast_is_refused():
    model = Scaled().double()
    pen = PerExampleNorms(model)
    with pytest.raises(CaptureError, match=r"'pos' \(Embedding\) saw 1\..*batch of 1 whose output"):
        smooth_loss(model(ids())).mean().backward()
        pen.sq_norms()


def test_a_returned_shared_output_is_exact_unless_the_loss_uses_it():
    torch.manual_seed(4)
    model = Returned().double()
    x = ids()
    want = loop_sq_norms(model, x, lambda out: smooth_loss(out[0]))
    with PerExampleNorms(model) as pen:
        out, _ = model(x)
        smooth_loss(out).mean().backward()
        assert_norms(pen.sq_norms(), want)
        out, p = model(x)
        (smooth_loss(out).mean() + p.sum()).backward()
        with pytest.raises(CaptureError, match="could not see"):
            pen.sq_norms()


def test_a_batch_of_one_enters_no_mode():
    model = PosEmbed().double()
    seen = []
    model.tok.register_forward_hook(lambda m, a, o: seen.append(torch._C._len_torch_function_stack()))
    with PerExampleNorms(model):
        model(ids(1))  # the use audit's forward
        seen.clear()
        model(ids(1))
        model(ids(3))
    assert seen == [0, 1]  # B = 3: the position embedding's output is watched until the broadcast
