"""Fused convolutions (gdiv.torch.rules.fused_conv): the batch gradient taken from the
per-example gradients the norms need.

The oracle for gradients is plain PyTorch autograd on an identical copy of
the model without hooks; for norms, the per-example loop of
test_torch_norms. Tolerances: float64 rtol 1e-10 (atol 1e-12·max), float32
rtol 1e-5 (atol 1e-6·max): the same sums in another order.
"""

from __future__ import annotations

import copy
import gc
import importlib
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402

_CHECKOUT = str(Path(__file__).resolve().parents[1] / "gdiv")
if "gdiv.torch" not in __import__("sys").modules and _CHECKOUT not in list(gdiv.__path__):
    gdiv.__path__.insert(0, _CHECKOUT)
gtorch = importlib.import_module("gdiv.torch")
norms_mod = importlib.import_module("gdiv.torch.capture")
fused = importlib.import_module("gdiv.torch.rules.fused_conv")
rules = importlib.import_module("gdiv.torch.rules.conv")
registry = importlib.import_module("gdiv.torch.rules._registry")

from gdiv.torch import CaptureError, PerExampleNorms, register_norm_rule  # noqa: E402
from test_torch_norms import DTYPES, assert_norms, loop_sq_norms, smooth_loss  # noqa: E402

torch.set_num_threads(1)

GTOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}


def assert_grads(model: nn.Module, ref: nn.Module, dtype: torch.dtype) -> None:
    rtol, atol = GTOL[dtype]
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol * q.grad.abs().max().item(), msg=name)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused computations (norms + batch gradients in one)."""
    calls = []
    real = norms_mod.conv_norms_and_grads

    def counting(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(norms_mod, "conv_norms_and_grads", counting)
    return calls


def rn(*shape, dtype=torch.float64, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# (build, input shape): every path of the fused backward — im2col (<= 4 input
# channels per group) and grouped convolution, padding modes, "same" with odd
# kernels, stride, dilation, groups, no bias, 1-D/2-D/3-D, channels-last.
LAYERS = [
    pytest.param(lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), (5, 3, 11), id="conv1d-unfold"),
    pytest.param(lambda: nn.Conv1d(6, 3, 3, padding="same", padding_mode="circular"), (4, 6, 10), id="conv1d-grouped-same-circular"),
    pytest.param(lambda: nn.Conv2d(1, 16, 3, padding=1), (6, 1, 10, 10), id="conv2d-first-layer"),
    pytest.param(lambda: nn.Conv2d(16, 8, 3, padding=1), (6, 16, 7, 7), id="conv2d-grouped"),
    pytest.param(lambda: nn.Conv2d(6, 6, 3, groups=3, padding=1, padding_mode="reflect"), (4, 6, 6, 6), id="conv2d-groups-reflect"),
    pytest.param(lambda: nn.Conv2d(8, 8, 3, groups=8, bias=False), (4, 8, 6, 6), id="conv2d-depthwise-nobias"),
    pytest.param(lambda: nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (5, 6, 9, 8), id="conv2d-stride-dil"),
    pytest.param(lambda: nn.Conv2d(5, 4, 2, padding="valid"), (3, 5, 6, 6), id="conv2d-valid"),
    pytest.param(lambda: nn.Conv3d(6, 2, 3, padding="same", padding_mode="replicate"), (2, 6, 5, 5, 4), id="conv3d-same-replicate"),
    pytest.param(lambda: nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1)), (3, 2, 5, 6, 4), id="conv3d-unfold"),
]


def with_head(conv: nn.Module, shape) -> nn.Module:
    """conv -> tanh -> flatten -> linear, so the loss is generic."""
    with torch.no_grad():
        out = conv(torch.zeros(*shape))
    return nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(out[0].numel(), 3))


def run_against_plain(model: nn.Module, x: torch.Tensor, fused_calls, fused: int, **kw) -> None:
    """One mean-loss step of ``model`` with PerExampleNorms(**kw) attached and of
    a hook-free copy: ``.grad`` equal, norms equal the per-example loop, and
    the fused backward ran ``fused`` times."""
    ref = copy.deepcopy(model)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model, **kw)
    for m in (model, ref):
        smooth_loss(m(x)).mean().backward()
    assert len(fused_calls) == fused
    assert_grads(model, ref, torch.float64)
    assert_norms(pen.sq_norms(), want, torch.float64)
    pen.remove()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("build, shape", LAYERS)
def test_fused_grads_and_norms(build, shape, reduction, dtype, fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(build(), shape).to(dtype)
    ref = copy.deepcopy(model)
    x = rn(*shape, dtype=dtype)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model, loss_reduction=reduction)
    assert isinstance(model[0], fused._FusedConvMixin)
    for m in (model, ref):
        ell = smooth_loss(m(x))
        (ell.mean() if reduction == "mean" else ell.sum()).backward()
    assert len(fused_calls) == 1, "the fused backward did not run"
    assert_grads(model, ref, dtype)
    assert_norms(pen.sq_norms(), want, dtype)
    pen.remove()


def test_fused_chunked_equals_unchunked(fused_calls) -> None:
    """A workspace of a few bytes forces one example per chunk: the chunks'
    gradient sums add up to the batch gradient."""
    torch.manual_seed(0)
    for build, shape in ((lambda: nn.Conv2d(6, 4, 3, padding=1), (5, 6, 6, 6)), (lambda: nn.Conv2d(2, 4, 3), (5, 2, 6, 6))):
        model = with_head(build(), shape).double()
        ref = copy.deepcopy(model)
        x = rn(*shape)
        want = loop_sq_norms(model, x, None, smooth_loss)
        pen = PerExampleNorms(model, workspace_bytes=8)
        for m in (model, ref):
            smooth_loss(m(x)).mean().backward()
        assert_grads(model, ref, torch.float64)
        assert_norms(pen.sq_norms(), want, torch.float64)
        pen.remove()
    assert len(fused_calls) == 2


@pytest.mark.parametrize("c_in", [6, 3], ids=["grouped", "unfold"])
def test_channels_last_input(c_in, fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(c_in, 4, 3, padding=1), (4, c_in, 5, 5)).double()
    ref = copy.deepcopy(model)
    x = rn(4, c_in, 5, 5).contiguous(memory_format=torch.channels_last)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model, loss_reduction="sum")
    for m in (model, ref):
        smooth_loss(m(x)).sum().backward()
    assert len(fused_calls) == 1
    assert_grads(model, ref, torch.float64)
    assert_norms(pen.sq_norms(), want, torch.float64)


def test_cnn_training_steps_match_plain(fused_calls) -> None:
    """Ten SGD steps of a small CNN with the monitor's hooks stay on the plain
    run's trajectory (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10)
    ).double()
    ref = copy.deepcopy(model)
    pen = PerExampleNorms(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref)]
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        x = torch.randn(8, 1, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (8,), generator=gen)
        for m, opt in zip((model, ref), opts):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
        assert pen.sq_norms().shape == (8,)
    assert len(fused_calls) == 20
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------- the class swap ---


def test_swap_is_invisible_and_undone() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.Flatten())
    before = repr(model)
    pen = PerExampleNorms(model)
    assert type(conv) is fused.FusedConv2d and isinstance(conv, nn.Conv2d)
    assert repr(model) == before
    assert pen.units == {"0": "rule"}
    assert registry.find_norm_rule(conv) is rules._conv_rule
    pen.attach()  # idempotent
    assert type(conv) is fused.FusedConv2d
    pen.remove()
    assert type(conv) is nn.Conv2d
    pen.attach()
    assert type(conv) is fused.FusedConv2d
    del pen
    gc.collect()
    assert type(conv) is nn.Conv2d  # dropping the object restores the class


def test_fuse_conv_false_leaves_modules_alone(fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    x = rn(3, 6, 5, 5)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model, fuse_conv=False)
    assert type(model[0]) is nn.Conv2d
    smooth_loss(model(x)).mean().backward()
    assert_norms(pen.sq_norms(), want, torch.float64)
    assert fused_calls == []
    with pytest.raises(ValueError, match="fuse_conv must be a bool"):
        PerExampleNorms(model, fuse_conv="yes")


def test_deepcopy_and_pickle_of_attached_model_run_plain(fused_calls) -> None:
    """A copy of a hooked model (deepcopy: an EMA model; pickle: torch.save)
    has inert hooks and plain convolutions with its own weights: it neither
    shares the original's weights nor feeds its capture."""
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    x = rn(3, 6, 5, 5)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(twin[0]) is nn.Conv2d  # copies are of the original class
        with torch.no_grad():
            twin[0].weight.mul_(2.0)
        ref = F.conv2d(x, twin[0].weight, twin[0].bias)
        out = twin[0](x)
        torch.testing.assert_close(out, ref)
        assert type(out.grad_fn) is not fused.FUSED_NODE
        smooth_loss(twin(x)).mean().backward()  # train mode, with gradients: not captured
        assert twin[0].weight.grad is not None
    assert fused_calls == [] and pen._records == []
    smooth_loss(model(x)).mean().backward()
    assert len(fused_calls) == 1
    assert_norms(pen.sq_norms(), want, torch.float64)
    pen.remove()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: nn.Conv1d(6, 3, 4, padding="same"), id="same-even-kernel-asymmetric"),
        pytest.param(lambda: type("MyConv", (nn.Conv1d,), {})(6, 3, 3), id="subclass"),
    ],
)
def test_not_swapped(build) -> None:
    conv = build()
    cls = type(conv)
    model = nn.Sequential(conv)
    pen = PerExampleNorms(model)
    assert type(conv) is cls
    x = rn(4, 6, 9).float()
    want = loop_sq_norms(model, x, None, smooth_loss)
    smooth_loss(model(x)).mean().backward()
    assert_norms(pen.sq_norms(), want, torch.float32)


def test_user_rule_disables_fusion(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))

    @register_norm_rule(nn.Conv2d)
    def mine(layer, inputs, g, ctx):
        return {n: torch.zeros(g.shape[0]) for n in ctx.params}

    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    PerExampleNorms(model)
    assert type(model[0]) is nn.Conv2d


def test_two_norms_objects_on_one_model(fused_calls) -> None:
    """The first object fuses; the second uses the ordinary hooks; both are right."""
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    ref = copy.deepcopy(model)
    x = rn(3, 6, 5, 5)
    want = loop_sq_norms(model, x, None, smooth_loss)
    a = PerExampleNorms(model)
    b = PerExampleNorms(model, loss_reduction="sum")
    for m in (model, ref):
        smooth_loss(m(x)).sum().backward()
    assert len(fused_calls) == 1
    assert_grads(model, ref, torch.float64)
    assert_norms(a.sq_norms() / 9.0, want, torch.float64)  # a assumed a mean loss: ×B²
    assert_norms(b.sq_norms(), want, torch.float64)
    b.remove()
    assert type(model[0]) is fused.FusedConv2d  # still a's
    a.remove()
    assert type(model[0]) is nn.Conv2d


# ------------------------------------------------- where fusing stands down ---


def test_double_backward(fused_calls) -> None:
    """create_graph=True: a gradient penalty through the convolution, the
    plain (differentiable) formulas; norms of the first backward."""
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3, padding=1), (3, 6, 5, 5)).double()
    ref = copy.deepcopy(model)
    x = rn(3, 6, 5, 5)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model)
    for m in (model, ref):
        loss = smooth_loss(m(x)).mean()
        grads = torch.autograd.grad(loss, list(m.parameters()), create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        if m is model:
            got = pen.sq_norms()
        penalty.backward()
    assert fused_calls == []
    assert_grads(model, ref, torch.float64)
    assert_norms(got, want, torch.float64)


def test_retain_graph_second_backward(fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    ref = copy.deepcopy(model)
    x = rn(3, 6, 5, 5)
    pen = PerExampleNorms(model)
    for m in (model, ref):
        loss = smooth_loss(m(x)).mean()
        loss.backward(retain_graph=True)
        loss.backward()
    assert len(fused_calls) == 1
    assert_grads(model, ref, torch.float64)  # both backwards accumulated, the second one plain
    with pytest.raises(CaptureError, match="second backward"):
        pen.sq_norms()


def test_module_called_twice(fused_calls) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.Tanh(), conv, nn.Flatten()).double()
    run_against_plain(model, rn(3, 4, 5, 5), fused_calls, 0)


def test_gram_method_uses_plain_gradients(fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3, padding=1), (3, 6, 5, 5)).double()
    run_against_plain(model, rn(3, 6, 5, 5), fused_calls, 0, sequence_method="gram")


def test_frozen_weight_trainable_bias(fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    model[0].weight.requires_grad_(False)
    run_against_plain(model, rn(3, 6, 5, 5), fused_calls, 0)


def test_eval_no_grad_autocast_and_vmap_run_plain(fused_calls) -> None:
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5))
    ref = copy.deepcopy(model)
    pen = PerExampleNorms(model)
    x = rn(3, 6, 5, 5).float()
    conv = model[0]

    def plain_node(out):
        return out.grad_fn is None or type(out.grad_fn) is not fused.FUSED_NODE

    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref[0](x))
    model.eval()
    assert plain_node(conv(x))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16 and plain_node(out)
    # torch.func over the attached model: the plain forward
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_ex = torch.func.vmap(lambda xi: torch.func.functional_call(model, params, (xi.unsqueeze(0),)))(x)
    torch.testing.assert_close(per_ex.squeeze(1), ref(x), rtol=1e-5, atol=1e-6)
    assert fused_calls == []
    assert not plain_node(conv(x))  # and fused again in a plain train-mode call
    pen.reset()


def test_per_example_grads_with_norms_attached(fused_calls) -> None:
    """full mode (torch.func) over a model whose convs are swapped."""
    torch.manual_seed(0)
    model = with_head(nn.Conv2d(3, 4, 3), (4, 3, 5, 5)).double()
    x = rn(4, 3, 5, 5)
    want = gtorch.per_example_grads(model, lambda o, y=None: smooth_loss(o).mean(), x)
    pen = PerExampleNorms(model)
    got = gtorch.per_example_grads(model, lambda o, y=None: smooth_loss(o).mean(), x)
    torch.testing.assert_close(got, want)
    assert fused_calls == []
    pen.remove()


def test_shape_only_weight_values_are_not_read() -> None:
    """The grouped path's weight argument is a view of g's memory: the
    convolution must read only its shape. A NaN weight changes nothing."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1).double()
    x, g = rn(3, 6, 5, 5), rn(3, 4, 5, 5, seed=2)
    want = rules._conv_grads_grouped(conv, x, g, [1, 1])
    nan = torch.full((12, 6, 3, 3), float("nan"), dtype=torch.float64)
    got = torch.ops.aten.convolution_backward(
        g.reshape(1, 12, 5, 5), x.reshape(1, 18, 5, 5), nan, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 3, [False, True, False]
    )[1]
    torch.testing.assert_close(got.reshape(want.shape), want, rtol=0, atol=0)
    small = rules._shape_only((4, 5), torch.zeros(3))  # no donor large enough: a new tensor
    assert small.shape == (4, 5) and small.is_contiguous()
    g_view = rules._shape_only((2, 3), g)
    assert g_view.data_ptr() == g.data_ptr()


def test_parametrization_registered_while_fused() -> None:
    """torch.nn.utils.parametrize swaps the class again (a subclass of the
    fused one): the capture is refused until reattached, remove() leaves the
    parametrized class in place, and the module keeps computing the right
    thing."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2.0 * w

    torch.manual_seed(0)
    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    x = rn(3, 6, 5, 5)
    pen = PerExampleNorms(model)
    parametrize.register_parametrization(model[0], "weight", Double())
    assert isinstance(model[0], fused.FusedConv2d) and type(model[0]) is not fused.FusedConv2d
    smooth_loss(model(x)).mean().backward()
    with pytest.raises(CaptureError, match=r"moved or re-registered since attach\(\) \(0.weight; e.g. by torch.nn.utils.parametrize"):
        pen.sq_norms()
    pen.remove()
    assert parametrize.is_parametrized(model[0])
    want = F.conv2d(x, 2.0 * model[0].parametrizations.weight.original, model[0].bias)
    torch.testing.assert_close(model[0](x), want)
    want_norms = loop_sq_norms(model, x, None, smooth_loss)
    pen.attach()  # now a unit with a subtree: the torch.func fallback, right again
    assert pen.units["0"] == "fallback"
    model.zero_grad(set_to_none=True)
    smooth_loss(model(x)).mean().backward()
    assert_norms(pen.sq_norms(), want_norms, torch.float64)
    pen.remove()


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 25, 3)).double()


def test_full_backward_hooks_see_the_same_gradients() -> None:
    x, y = rn(4, 3, 5, 5), torch.tensor([0, 1, 2, 0])
    seen = {}
    for fuse in (True, False):
        model = _small_cnn()
        pen = PerExampleNorms(model, fuse_conv=fuse)
        got = []
        model[2].register_full_backward_hook(lambda mod, gi, go, got=got: got.append((gi[0].clone(), go[0].clone())))
        F.cross_entropy(model(x), y).backward()
        seen[fuse] = (got, pen.sq_norms(), [p.grad.clone() for p in model.parameters()])
        pen.remove()
    (gi_f, go_f), (gi_u, go_u) = seen[True][0][0], seen[False][0][0]
    torch.testing.assert_close(gi_f, gi_u, rtol=1e-12, atol=0)
    torch.testing.assert_close(go_f, go_u, rtol=1e-12, atol=0)
    torch.testing.assert_close(seen[True][1], seen[False][1], rtol=1e-12, atol=0)
    for a, b in zip(seen[True][2], seen[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_ddp_single_process(tmp_path, fused_calls) -> None:
    """DistributedDataParallel (gloo, world size 1) over a fused model: DDP's
    reducer hooks see the fused gradients, which equal plain training's."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    x, y = rn(4, 3, 5, 5), torch.tensor([0, 1, 2, 0])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model, ref = _small_cnn(), _small_cnn()
        ddp = nn.parallel.DistributedDataParallel(model)
        pen = PerExampleNorms(model)
        F.cross_entropy(ddp(x), y).backward()
        want = loop_sq_norms(ref, x, y, lambda o, t: F.cross_entropy(o, t, reduction="none"))
        F.cross_entropy(ref(x), y).backward()
        assert len(fused_calls) == 2
        assert_grads(model, ref, torch.float64)
        assert_norms(pen.sq_norms(), want, torch.float64)
        pen.remove()
    finally:
        dist.destroy_process_group()


def test_jit_trace_of_an_attached_model_records_the_plain_convolution() -> None:
    model = _small_cnn()
    pen = PerExampleNorms(model)
    x = rn(4, 3, 5, 5)
    traced = torch.jit.trace(model, x)  # runs its sanity check: the trace must reproduce the module
    assert "FusedConv" not in str(traced.graph)
    torch.testing.assert_close(traced(x), model(x))
    pen.remove()


# ------------------------------------------ found by an adversarial review ---


@pytest.mark.parametrize("how", ["prune", "weight_norm"])
@pytest.mark.parametrize("fuse", [True, False])
def test_computed_weights_use_the_fallback(how, fuse, fused_calls) -> None:
    """A conv whose weight is computed from other parameters in a forward
    pre-hook (pruning: weight_orig * mask; the old weight_norm: weight_g,
    weight_v) is neither fused nor given the conv rule (which would norm the
    gradient of the computed weight): the torch.func fallback, exact."""
    import warnings

    from torch.nn.utils import prune

    def build():  # (deepcopy refuses models with a computed weight attribute)
        torch.manual_seed(0)
        m = with_head(nn.Conv2d(3, 4, 3, padding=1), (4, 3, 6, 6)).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # weight_norm is deprecated in favour of parametrizations
            if how == "prune":
                prune.l1_unstructured(m[0], "weight", 0.5)
            else:
                nn.utils.weight_norm(m[0])
                with torch.no_grad():
                    m[0].weight_g.mul_(1.7)
        return m

    model, ref = build(), build()
    x = rn(4, 3, 6, 6)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model, fuse_conv=fuse)
    assert pen.units["0"] == "fallback" and type(model[0]) is nn.Conv2d
    for m in (model, ref):
        smooth_loss(m(x)).mean().backward()
    assert fused_calls == []
    assert_grads(model, ref, torch.float64)
    assert_norms(pen.sq_norms(), want, torch.float64)


def test_forward_mode_ad_runs_the_plain_convolution() -> None:
    import torch.autograd.forward_ad as fwad

    model = _small_cnn()
    ref = copy.deepcopy(model)
    pen = PerExampleNorms(model)
    x, v = rn(4, 3, 5, 5), rn(4, 3, 5, 5, seed=3)
    tangents = []
    for m in (model, ref):
        with fwad.dual_level():
            tangents.append(fwad.unpack_dual(m(fwad.make_dual(x, v))).tangent)
    torch.testing.assert_close(tangents[0], tangents[1])
    pen.reset()


def test_a_forward_saved_while_fused_still_works_after_remove() -> None:
    """Wrappers keep `module.forward` (accelerate's hooks do): a bound method
    of the fused class, called after remove() restored the class."""
    model = _small_cnn()
    x = rn(2, 3, 5, 5)
    pen = PerExampleNorms(model)
    saved = model[0].forward
    pen.remove()
    assert type(model[0]) is nn.Conv2d
    torch.testing.assert_close(saved(x), F.conv2d(x, model[0].weight, model[0].bias, padding=1))


@pytest.mark.parametrize("fuse", [True, False])
def test_user_forward_hook_replacing_the_output(fuse, fused_calls) -> None:
    """A forward hook registered before attaching that replaces the layer's
    output: the norms need the gradient of the layer's own output, so
    PerExampleNorms' hook runs first (prepend)."""
    model = with_head(nn.Conv2d(3, 4, 3, padding=1), (4, 3, 6, 6)).double()
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    run_against_plain(model, rn(4, 3, 6, 6), fused_calls, int(fuse), fuse_conv=fuse)


@pytest.mark.parametrize("c_in", [3, 8], ids=["unfold", "grouped"])
@pytest.mark.parametrize("fuse", [True, False])
def test_empty_batch(c_in, fuse) -> None:
    model = nn.Conv2d(c_in, 4, 3, padding=1).double()
    ref = copy.deepcopy(model)
    pen = PerExampleNorms(model, fuse_conv=fuse)
    x = torch.zeros(0, c_in, 6, 6, dtype=torch.float64)
    for m in (model, ref):
        (m(x) ** 2).sum().backward()
    assert_grads(model, ref, torch.float64)
    got = pen.sq_norms()
    assert got.shape == (0,) and got.dtype == torch.float64


@pytest.mark.parametrize("fuse", [True, False])
def test_int_stride_and_padding_attributes(fuse, fused_calls) -> None:
    """PyTorch's forward accepts `conv.stride = 2` (an int); so do the rules."""
    model = with_head(nn.Conv2d(3, 4, 3), (4, 3, 9, 9)).double()
    model[0].stride, model[0].padding, model[0].dilation = 2, 1, 1
    with torch.no_grad():
        head_in = model[0](torch.zeros(1, 3, 9, 9, dtype=torch.float64)).numel()
    model[3] = nn.Linear(head_in, 3).double()
    run_against_plain(model, rn(4, 3, 9, 9), fused_calls, int(fuse), fuse_conv=fuse)


def test_bias_grad_owns_its_memory() -> None:
    """The fused unfold path's bias gradient is not a view keeping the whole
    per-example sum buffer alive in .grad."""
    model = with_head(nn.Conv2d(3, 8, 3, padding=1), (4, 3, 6, 6))
    PerExampleNorms(model)
    smooth_loss(model(rn(4, 3, 6, 6).float())).mean().backward()
    b = model[0].bias.grad
    assert b.untyped_storage().nbytes() == b.numel() * b.element_size()


def test_refused_by_parametrize_then_fused_again_after_reattach(fused_calls) -> None:
    """After parametrize's own class swap is undone, the module is still of
    the fused class but unbound; attaching again fuses it again and
    remove() then gives back nn.Conv2d."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2.0 * w

    model = with_head(nn.Conv2d(6, 4, 3), (3, 6, 5, 5)).double()
    pen = PerExampleNorms(model)
    parametrize.register_parametrization(model[0], "weight", Double())
    pen.remove()
    parametrize.remove_parametrizations(model[0], "weight", leave_parametrized=True)
    assert isinstance(model[0], fused.FusedConv2d) and fused.bound_owner(model[0]) is None
    x = rn(3, 6, 5, 5)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model)
    smooth_loss(model(x)).mean().backward()
    assert len(fused_calls) == 1
    assert_norms(pen.sq_norms(), want, torch.float64)
    pen.remove()
    assert type(model[0]) is nn.Conv2d
