"""gdiv.torch per-example norms and gradients against a per-example autograd loop.

The reference is the obvious one: for each example i, zero the gradients,
run the model on example i alone, backward ℓ_i alone, and sum ‖p.grad‖² over
the trainable parameters. ℓ_i is the example's own loss (a mean over its own
elements); the batch loss given to PerExampleNorms is mean_i ℓ_i or Σ_i ℓ_i.

Tolerances (relative to each value, plus an absolute floor relative to the
largest value of the batch):
    float64: rtol 1e-10, atol 1e-12·max
    float32: rtol 1e-4,  atol 1e-6·max
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path
from typing import Callable, Optional

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gdiv  # noqa: E402

# The installed gdiv may predate gdiv.torch (non-editable install): test this
# checkout's gdiv.torch, which is pure PyTorch and needs nothing else of gdiv.
_CHECKOUT = str(Path(__file__).resolve().parents[1] / "gdiv")
if "gdiv.torch" not in __import__("sys").modules and _CHECKOUT not in list(gdiv.__path__):
    gdiv.__path__.insert(0, _CHECKOUT)
gtorch = importlib.import_module("gdiv.torch")

from gdiv.torch import (  # noqa: E402
    CaptureError,
    PerExampleNorms,
    UnsupportedModuleError,
    per_example_grads,
    register_norm_rule,
    trainable_parameters,
)

torch.set_num_threads(1)

REDUCTIONS = ["mean", "sum"]
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-6)}


def assert_norms(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, atol = TOL[dtype]
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert torch.all(want > 0), "degenerate test: a zero reference norm"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * want.abs().max().item())


# ------------------------------------------------------------- reference ---


def smooth_loss(out: torch.Tensor, y=None) -> torch.Tensor:
    """ℓ_i = mean over example i's elements of c·out + out²/2, c a fixed
    deterministic pattern (no random op: also runs under vmap)."""
    n = math.prod(out.shape[1:])
    c = torch.sin(1.7 * torch.arange(n, dtype=torch.float64) + 0.3).reshape(out.shape[1:]).to(out.dtype)
    return (c * out + 0.5 * out * out).reshape(out.shape[0], -1).mean(1)


def ce_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def token_ce_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) targets: per-example mean over tokens."""
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)


def loop_sq_norms(model: nn.Module, x, y, loss: Callable, batch_dim: int = 0) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    b = x.shape[batch_dim]
    out = []
    for i in range(b):
        model.zero_grad(set_to_none=True)
        xi = x.narrow(batch_dim, i, 1)
        o = model(xi)
        if batch_dim != 0:
            o = o.movedim(batch_dim, 0)
        li = loss(o, None if y is None else y[i : i + 1])
        assert li.shape == (1,)
        li[0].backward()
        out.append(sum(p.grad.double().square().sum() for p in params if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def hooked_sq_norms(model, x, y, loss, reduction, batch_dim=0, **kw):
    pen = PerExampleNorms(model, loss_reduction=reduction, batch_dim=batch_dim, **kw)
    o = model(x)
    if batch_dim != 0:
        o = o.movedim(batch_dim, 0)
    ell = loss(o, y)
    (ell.mean() if reduction == "mean" else ell.sum()).backward()
    got = pen.sq_norms()
    by_layer = pen.sq_norms_by_layer()
    torch.testing.assert_close(sum(by_layer.values()), got, rtol=1e-12, atol=0.0)
    return got, pen


# ----------------------------------------------------------------- models ---


class Scale(nn.Module):
    """No rule: y = x ⊙ w + b (the torch.func fallback)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.w + self.b


class Gated(nn.Module):
    """Owns a parameter and has a trainable child: one fallback unit."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(d))
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return torch.sigmoid(self.gate) * self.fc(x)


class TwoHeads(nn.Module):
    """Tuple output (fallback with several output gradients)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(d, 3))
        self.w2 = nn.Parameter(torch.randn(d, 3))

    def forward(self, x):
        return x @ self.w1, torch.tanh(x @ self.w2)


class UseHeads(nn.Module):
    def __init__(self, d: int, use_second: bool) -> None:
        super().__init__()
        self.heads = TwoHeads(d)
        self.use_second = use_second

    def forward(self, x):
        a, b = self.heads(x)
        return a + b if self.use_second else a


class SplitHeads(nn.Module):
    """Tuple output whose two tensors come from one autograd node (chunk):
    the norms' hooks on that node each take their own output's gradient."""

    def __init__(self, d: int, use_second: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, 6))
        self.use_second = use_second

    def forward(self, x):
        a, b = (x @ self.w).chunk(2, dim=1)
        return torch.tanh(a) * b if self.use_second else a


class Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        return self.fc(self.mha(x, x, x, need_weights=False)[0])


class Twice(nn.Module):
    """One Linear called twice per forward (per-example gradient = sum of calls)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        return self.out(self.fc(torch.tanh(self.fc(x))))


class TiedLM(nn.Module):
    """Embedding tied with the output projection (weight tying)."""

    def __init__(self, vocab: int, d: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.dec = nn.Linear(d, vocab, bias=False)
        self.dec.weight = self.emb.weight

    def forward(self, idx):
        return self.dec(torch.tanh(self.mix(self.emb(idx))))


class ChannelsLast(nn.Module):
    """No parameters: hands the next layer a channels-last (non-contiguous) input."""

    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last)


def randomize_affine(model: nn.Module) -> nn.Module:
    """Norm layers start at γ = 1, β = 0; make them generic."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or type(m).__name__ == "RMSNorm":
                for p in m.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g).to(m.running_mean.dtype))
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g).to(m.running_var.dtype) + 0.5)
    return model


@dataclasses.dataclass
class Case:
    build: Callable[[], nn.Module]
    x: Callable[[torch.Generator], torch.Tensor]  # float inputs are cast to the test dtype
    loss: Callable = smooth_loss
    y: Optional[Callable[[torch.Generator], torch.Tensor]] = None
    kw: dict = dataclasses.field(default_factory=dict)
    batch_dim: int = 0
    units: Optional[dict] = None  # expected PerExampleNorms.units (subset)


def rn(*shape):
    return lambda g: torch.randn(*shape, generator=g, dtype=torch.float64)


def ri(high, *shape):
    return lambda g: torch.randint(0, high, shape, generator=g)


def bn_eval(*mods):
    m = randomize_affine(nn.Sequential(*mods))
    for sub in m.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.eval()
    return m


CASES = [
    pytest.param(Case(lambda: nn.Linear(5, 3), rn(7, 5)), id="linear"),
    pytest.param(Case(lambda: nn.Linear(5, 3, bias=False), rn(7, 5)), id="linear-nobias"),
    pytest.param(Case(lambda: nn.Linear(6, 4), rn(5, 9, 6), kw={"sequence_method": "gram"}), id="linear-seq-gram"),
    pytest.param(Case(lambda: nn.Linear(6, 4), rn(5, 9, 6), kw={"sequence_method": "materialize"}), id="linear-seq-materialize"),
    pytest.param(Case(lambda: nn.Linear(6, 4), rn(5, 9, 6)), id="linear-seq-auto"),
    pytest.param(
        Case(lambda: nn.Linear(6, 4), rn(5, 2, 3, 6), kw={"sequence_method": "gram", "workspace_bytes": 64}),
        id="linear-4d-gram-chunked",
    ),
    pytest.param(
        Case(lambda: nn.Linear(6, 4), rn(9, 5, 6), batch_dim=1, kw={"sequence_method": "materialize"}),
        id="linear-seq-first-batch_dim1",
    ),
    pytest.param(Case(lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), rn(5, 3, 11)), id="conv1d-stride-pad-dil"),
    pytest.param(
        Case(lambda: nn.Conv1d(2, 3, 4, padding=2, padding_mode="circular", bias=False), rn(5, 2, 9)),
        id="conv1d-nobias-circular",
    ),
    pytest.param(Case(lambda: nn.Conv1d(2, 3, 4, padding="same", dilation=3), rn(4, 2, 10)), id="conv1d-same-even-kernel"),
    pytest.param(Case(lambda: nn.Conv2d(3, 4, 3), rn(5, 3, 6, 6)), id="conv2d"),
    pytest.param(
        Case(lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), rn(5, 3, 7, 6)),
        id="conv2d-stride-pad-dil",
    ),
    pytest.param(
        Case(lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="reflect"), rn(4, 4, 5, 5)),
        id="conv2d-groups2-reflect",
    ),
    pytest.param(Case(lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False), rn(4, 4, 5, 5)), id="conv2d-depthwise-nobias"),
    pytest.param(Case(lambda: nn.Conv2d(3, 4, 3, padding=1), rn(4, 3, 5, 5), kw={"sequence_method": "gram"}), id="conv2d-gram"),
    pytest.param(
        Case(lambda: nn.Conv2d(3, 4, 3, padding=1), rn(4, 3, 5, 5), kw={"sequence_method": "materialize"}),
        id="conv2d-materialize",
    ),
    pytest.param(
        Case(lambda: nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1)), rn(3, 2, 5, 6, 4)),
        id="conv3d-stride-pad-dil",
    ),
    pytest.param(
        Case(lambda: nn.Conv3d(2, 2, 3, padding=1, padding_mode="replicate", bias=False), rn(3, 2, 4, 4, 4)),
        id="conv3d-nobias-replicate",
    ),
    pytest.param(Case(lambda: nn.Embedding(10, 4, padding_idx=0), ri(4, 6, 8)), id="embedding-repeats-padding_idx"),
    pytest.param(Case(lambda: nn.Embedding(10, 4), ri(10, 6, 5)), id="embedding"),
    pytest.param(
        Case(lambda: nn.Sequential(nn.Embedding(12, 5, padding_idx=3), nn.Linear(5, 3)), ri(6, 5, 7)),
        id="embedding-linear-seq",
    ),
    pytest.param(Case(lambda: randomize_affine(nn.LayerNorm(6)), rn(5, 4, 6)), id="layernorm-seq"),
    pytest.param(Case(lambda: randomize_affine(nn.LayerNorm((3, 4))), rn(5, 2, 3, 4)), id="layernorm-2d-shape"),
    pytest.param(Case(lambda: randomize_affine(nn.LayerNorm(6, bias=False)), rn(5, 6)), id="layernorm-nobias"),
    pytest.param(Case(lambda: randomize_affine(nn.GroupNorm(2, 4)), rn(5, 4, 3, 3)), id="groupnorm"),
    pytest.param(Case(lambda: randomize_affine(nn.GroupNorm(3, 6)), rn(5, 6, 7)), id="groupnorm-1d"),
    pytest.param(
        Case(lambda: bn_eval(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), rn(4, 3, 5, 5)),
        id="batchnorm-eval-in-train-model",
    ),
    pytest.param(
        Case(
            lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),
            rn(9, 6),
            loss=ce_loss,
            y=ri(4, 9),
        ),
        id="mlp-ce",
    ),
    pytest.param(
        Case(
            lambda: randomize_affine(
                nn.Sequential(
                    nn.Conv2d(3, 4, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                    nn.Conv2d(4, 4, 3, stride=2, padding=1),
                    nn.GroupNorm(2, 4),
                    nn.ReLU(),
                    nn.Flatten(),
                    nn.Linear(16, 5),
                )
            ),
            rn(6, 3, 8, 8),
            loss=ce_loss,
            y=ri(5, 6),
        ),
        id="cnn-ce",
    ),
    pytest.param(
        Case(
            lambda: randomize_affine(nn.Sequential(nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 20))),
            ri(20, 4, 6),
            loss=token_ce_loss,
            y=ri(20, 4, 6),
        ),
        id="seq-model-token-ce",
    ),
    pytest.param(
        Case(lambda: nn.Sequential(nn.Linear(4, 5), Scale(5), nn.Linear(5, 2)), rn(6, 4), units={"1": "fallback"}),
        id="fallback-custom-module",
    ),
    pytest.param(
        Case(lambda: nn.Sequential(Gated(4), nn.Linear(4, 2)), rn(6, 3, 4), units={"0": "fallback", "1": "rule"}),
        id="fallback-param-and-child",
    ),
    pytest.param(Case(lambda: UseHeads(4, True), rn(5, 4), units={"heads": "fallback"}), id="fallback-tuple-output"),
    pytest.param(Case(lambda: UseHeads(4, False), rn(5, 4)), id="fallback-tuple-output-one-unused"),
    pytest.param(Case(lambda: nn.Sequential(SplitHeads(4, True)), rn(5, 4), units={"0": "fallback"}), id="fallback-split-output"),
    pytest.param(Case(lambda: nn.Sequential(SplitHeads(4, False)), rn(5, 4)), id="fallback-split-output-one-unused"),
    pytest.param(Case(lambda: Attn(4), rn(3, 5, 4), units={"mha": "fallback", "fc": "rule"}), id="fallback-multihead-attention"),
    pytest.param(Case(lambda: nn.Sequential(nn.Linear(4, 5), Scale(5)), rn(6, 3, 4), batch_dim=1), id="fallback-batch_dim1"),
    pytest.param(Case(lambda: Twice(4), rn(5, 4)), id="module-called-twice"),
    pytest.param(
        Case(lambda: TiedLM(9, 4), ri(9, 4, 5), loss=token_ce_loss, y=ri(9, 4, 5), units={"emb": "materialized", "dec": "materialized"}),
        id="tied-embedding-decoder",
    ),
]
# Convolutions with more than 4 input channels per group take the grouped-
# convolution path for per-example weight gradients (those above, with 1-4,
# take im2col + bmm); workspace_bytes=64 forces chunks of one example.
CASES += [
    pytest.param(Case(lambda: nn.Conv2d(6, 4, 3, stride=2, padding=1), rn(5, 6, 7, 7)), id="conv2d-grouped-path-stride-pad"),
    pytest.param(
        Case(lambda: nn.Conv1d(6, 3, 4, padding="same", dilation=3, padding_mode="circular"), rn(4, 6, 11)),
        id="conv1d-grouped-path-same-even-kernel-circular",
    ),
    pytest.param(
        Case(lambda: nn.Conv2d(10, 4, (2, 3), groups=2, padding="same", padding_mode="reflect", bias=False), rn(4, 10, 5, 6)),
        id="conv2d-grouped-path-groups2-same-reflect",
    ),
    pytest.param(
        Case(lambda: nn.Conv3d(5, 2, 2, stride=(1, 2, 1), dilation=(2, 1, 1), padding=(1, 0, 1)), rn(3, 5, 5, 6, 4)),
        id="conv3d-grouped-path-stride-pad-dil",
    ),
    pytest.param(
        Case(lambda: nn.Conv2d(6, 4, 3, stride=2, padding=1), rn(5, 6, 7, 7), kw={"workspace_bytes": 64}),
        id="conv2d-grouped-path-chunked",
    ),
    pytest.param(
        Case(lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="replicate"), rn(5, 2, 6, 6), kw={"workspace_bytes": 64}),
        id="conv2d-unfold-path-chunked",
    ),
    pytest.param(Case(lambda: nn.Conv2d(8, 8, 3, groups=8), rn(4, 8, 5, 5)), id="conv2d-depthwise-8"),
    pytest.param(
        Case(lambda: nn.Sequential(ChannelsLast(), nn.Conv2d(6, 4, 3, padding=1)), rn(4, 6, 5, 5)),
        id="conv2d-grouped-path-channels-last",
    ),
    pytest.param(
        Case(lambda: nn.Sequential(ChannelsLast(), nn.Conv2d(3, 4, 3, stride=2)), rn(4, 3, 7, 7)),
        id="conv2d-unfold-path-channels-last",
    ),
    pytest.param(
        Case(lambda: nn.Sequential(nn.Conv2d(6, 4, 2), nn.Flatten(), nn.Linear(4, 3)), rn(5, 6, 2, 2)),
        id="conv2d-one-position-then-linear",
    ),
]
if hasattr(nn, "RMSNorm"):
    CASES.append(pytest.param(Case(lambda: randomize_affine(nn.RMSNorm(6)), rn(5, 4, 6)), id="rmsnorm-seq"))


def make(case: Case, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    model = case.build().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = case.x(g)
    if x.is_floating_point():
        x = x.to(dtype)
    y = case.y(g) if case.y is not None else None
    return model, x, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES)
def test_matches_per_example_loop(case: Case, reduction: str, dtype: torch.dtype) -> None:
    model, x, y = make(case, dtype)
    want = loop_sq_norms(model, x, y, case.loss, case.batch_dim)
    got, pen = hooked_sq_norms(model, x, y, case.loss, reduction, case.batch_dim, **case.kw)
    assert_norms(got, want, dtype)
    if case.units:
        assert {k: pen.units[k] for k in case.units} == case.units
    pen.remove()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", [c for c in CASES if "conv" in c.id])
def test_conv_cases_without_fusion(case: Case, reduction: str, dtype: torch.dtype) -> None:
    """The convolution cases again through the hook and rule path
    (fuse_conv=False; the default fuses them, see test_torch_fused)."""
    model, x, y = make(case, dtype)
    want = loop_sq_norms(model, x, y, case.loss, case.batch_dim)
    got, pen = hooked_sq_norms(model, x, y, case.loss, reduction, case.batch_dim, fuse_conv=False, **case.kw)
    assert not any(type(m).__qualname__.startswith("Fused") for m in model.modules())
    assert_norms(got, want, dtype)
    pen.remove()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mean_rescaling_is_b_squared(reduction: str) -> None:
    """The raw hook norms of a mean loss are 1/B² of ∇ℓ_i's; mean and sum agree."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    mean, _ = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    summ, _ = hooked_sq_norms(model, x, None, smooth_loss, "sum")
    torch.testing.assert_close(mean, summ, rtol=1e-12, atol=0.0)
    # A mean loss declared as "sum" gives the norms of (1/B)∇ℓ_i.
    wrong, _ = hooked_sq_norms(model, x, None, lambda o, y: smooth_loss(o) / 8, "sum")
    torch.testing.assert_close(wrong * 64, summ, rtol=1e-12, atol=0.0)


def test_batch_of_one() -> None:
    case = CASES[[p.id for p in CASES].index("cnn-ce")].values[0]
    model, x, y = make(case, torch.float64)
    x, y = x[:1], y[:1]
    want = loop_sq_norms(model, x, y, case.loss)
    for reduction in REDUCTIONS:
        got, pen = hooked_sq_norms(model, x, y, case.loss, reduction)
        assert got.shape == (1,)
        assert_norms(got, want, torch.float64)
        pen.remove()


def test_per_layer_breakdown() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    layers = pen.sq_norms_by_layer()
    assert sorted(layers) == ["0", "2"]
    # Layer "2" alone: the loop with layer 0 frozen.
    model[0].requires_grad_(False)
    torch.testing.assert_close(layers["2"], loop_sq_norms(model, x, None, smooth_loss), rtol=1e-10, atol=0.0)


def test_frozen_layers_skipped() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4), nn.Linear(4, 2)).double()
    model[0].requires_grad_(False)
    model[3].bias.requires_grad_(False)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    assert sorted(pen.units) == ["3", "4"]  # conv not hooked
    assert not model[0]._forward_hooks
    assert_norms(got, want, torch.float64)


def test_freezing_after_attach_needs_reattach() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    pen = PerExampleNorms(model)
    model[0].requires_grad_(False)
    smooth_loss(model(x)).mean().backward()
    with pytest.raises(CaptureError, match=r"now frozen: \['0.bias', '0.weight'\].*remove\(\) then attach\(\)"):
        pen.sq_norms()
    pen.remove()
    pen.attach()
    smooth_loss(model(x)).mean().backward()
    assert_norms(pen.sq_norms(), loop_sq_norms(model, x, None, smooth_loss), torch.float64)
    pen.remove()


def test_replacing_or_thawing_a_parameter_after_attach_is_refused() -> None:
    """A parameter replaced by a new one (not hooked) or a frozen one made
    trainable: the capture is refused until reattached; replacing a frozen
    parameter by another frozen one changes nothing."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    model[1].bias.requires_grad_(False)
    pen = PerExampleNorms(model)
    model[0].weight = nn.Parameter(model[0].weight.detach().clone())
    smooth_loss(model(x)).mean().backward()
    with pytest.raises(CaptureError, match=r"now trainable: \['0.weight'\]"):
        pen.sq_norms()
    pen.remove()
    pen.attach()
    model[1].bias.requires_grad_(True)
    smooth_loss(model(x)).mean().backward()
    with pytest.raises(CaptureError, match=r"now trainable: \['1.bias'\]"):
        pen.sq_norms()
    model[1].bias.requires_grad_(False)
    pen.remove()
    pen.attach()
    model[1].bias = nn.Parameter(model[1].bias.detach().clone(), requires_grad=False)
    model.zero_grad(set_to_none=True)
    smooth_loss(model(x)).mean().backward()
    assert_norms(pen.sq_norms(), loop_sq_norms(model, x, None, smooth_loss), torch.float64)
    pen.remove()


CONV_GRAD_LAYERS = [
    pytest.param(lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), (5, 3, 11), id="conv1d"),
    pytest.param(lambda: nn.Conv1d(6, 3, 4, padding="same", dilation=3, padding_mode="circular"), (4, 6, 10), id="conv1d-same"),
    pytest.param(lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (5, 3, 7, 6), id="conv2d"),
    pytest.param(lambda: nn.Conv2d(6, 6, 3, groups=3, padding=1, padding_mode="reflect"), (4, 6, 5, 5), id="conv2d-groups"),
    pytest.param(lambda: nn.Conv2d(5, 4, 2, padding="valid"), (3, 5, 4, 4), id="conv2d-valid"),
    pytest.param(lambda: nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1)), (3, 2, 5, 6, 4), id="conv3d"),
    pytest.param(lambda: nn.Conv3d(6, 2, 3, padding="same", padding_mode="replicate"), (2, 6, 4, 4, 3), id="conv3d-same"),
]


@pytest.mark.parametrize("build, shape", CONV_GRAD_LAYERS)
def test_per_example_conv_grads_both_methods(build, shape) -> None:
    """The grouped-convolution and the im2col + bmm per-example weight
    gradients against autograd, one example at a time."""
    torch.manual_seed(0)
    conv = build().double()
    x = torch.randn(*shape, dtype=torch.float64)
    g = torch.randn_like(conv(x))
    want = []
    for i in range(x.shape[0]):
        (w,) = torch.autograd.grad(conv(x[i : i + 1]), conv.weight, g[i : i + 1])
        want.append(w)
    want = torch.stack(want)
    rules = gtorch.rules.conv
    xd, gd = x.detach(), g.detach()
    padded, padding = rules._pad_input(xd, conv, keep_symmetric_zeros=True)
    grouped = rules._conv_grads_grouped(conv, padded, gd, padding)
    b, groups = x.shape[0], conv.groups
    padded, _ = rules._pad_input(xd, conv, keep_symmetric_zeros=False)
    unf = rules._conv_grads_unfold(conv, padded, gd)  # (B·groups, C_in/groups·K, C_out/groups)
    unf = unf.reshape(b, groups, unf.shape[1], unf.shape[2]).transpose(2, 3).reshape(want.shape)
    for got in (grouped, unf, rules.per_example_conv_grads(conv, xd, gd)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5), (4, 3 * 2048 + 16384 + 5), (2, 3, 20000)])
def test_row_sq_norms_precision(shape) -> None:
    """vector_norm per block on long rows: float32 as accurate as a float32
    sum of squares (well within 1e-6), float64 to rounding."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    want = t.reshape(shape[0], -1).square().sum(1)
    row_sq_norms = gtorch.rules._common.row_sq_norms
    torch.testing.assert_close(row_sq_norms(t), want, rtol=1e-13, atol=0.0)
    got32 = row_sq_norms(t.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-6, atol=0.0)
    got = row_sq_norms(t.float(), torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0)


def test_chunks_are_balanced() -> None:
    chunks = gtorch.rules._common._chunks
    assert chunks(10, 1, 1, 100) == [slice(0, 10)]
    assert chunks(10, 1, 1, 4) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert chunks(65, 1, 1, 64) == [slice(0, 32), slice(32, 65)]
    assert chunks(3, 10, 8, 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_im2col_matches_unfold() -> None:
    conv = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    want = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).transpose(1, 2)
    torch.testing.assert_close(gtorch.rules.conv.im2col(x, conv), want, rtol=0, atol=0)


def test_root_owning_parameters_warns_and_works() -> None:
    class WithCls(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Parameter(torch.randn(4))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x + self.cls)

    torch.manual_seed(0)
    model = WithCls().double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    with pytest.warns(UserWarning, match=r"owns parameters directly \(cls\).*B × P"):
        got, pen = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    assert pen.units == {"<root>": "fallback"}
    assert_norms(got, want, torch.float64)
    pen.remove()


def test_register_rule_is_used(monkeypatch) -> None:
    monkeypatch.setattr(gtorch.rules._registry, "_RULES", dict(gtorch.rules._registry._RULES))
    calls = []

    @register_norm_rule(Scale)
    def scale_rule(layer, inputs, g, ctx):
        calls.append(ctx.name)
        x = inputs[0].reshape(g.shape[0], -1, g.shape[-1])
        g = g.reshape(x.shape)
        return {"w": (g * x).sum(1).square().sum(1), "b": g.sum(1).square().sum(1)}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4)).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "sum")
    assert pen.units["1"] == "rule" and calls == ["1"]
    assert_norms(got, want, torch.float64)


def test_user_rule_for_linear_replaces_the_builtin_fast_path(monkeypatch) -> None:
    """The built-in Linear rule has a fused fast path for 2-D inputs; a rule the
    user registers for nn.Linear must be used instead of it."""
    monkeypatch.setattr(gtorch.rules._registry, "_RULES", dict(gtorch.rules._registry._RULES))
    builtin = gtorch.rules._registry._RULES[nn.Linear]
    calls = []

    @register_norm_rule(nn.Linear)
    def linear_rule(layer, inputs, g, ctx):
        calls.append(ctx.name)
        return builtin(layer, inputs, g, ctx)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    assert sorted(calls) == ["0", "2"]
    assert_norms(got, want, torch.float64)
    pen.remove()


@pytest.mark.parametrize("trainable", ["weight", "bias"])
def test_linear_one_parameter_trainable(trainable: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    for layer in (model[0], model[2]):
        getattr(layer, "bias" if trainable == "weight" else "weight").requires_grad_(False)
    x = torch.randn(6, 3, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "sum")
    assert_norms(got, want, torch.float64)
    pen.remove()


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda g: {"w": g.new_zeros(g.shape[0]), "zz": g.new_zeros(g.shape[0])}, r"unknown parameter 'zz'"),
        (lambda g: {"w": g.new_zeros(g.shape[0] + 1), "b": g.new_zeros(g.shape[0])}, r"shape \(6,\) for 'w', expected \(5,\)"),
        (lambda g: {"w": g.new_zeros(g.shape[0])}, r"returned nothing for \['b'\]"),
    ],
    ids=["unknown", "shape", "missing"],
)
def test_bad_rule_output_refused(monkeypatch, bad, match) -> None:
    monkeypatch.setattr(gtorch.rules._registry, "_RULES", dict(gtorch.rules._registry._RULES))
    register_norm_rule(Scale)(lambda layer, inputs, g, ctx: bad(g))
    model = nn.Sequential(nn.Linear(3, 4), Scale(4))
    with PerExampleNorms(model):
        with pytest.raises(gtorch.NormsError, match=match):
            model(torch.randn(5, 3)).sum().backward()


def test_settings_changed_after_attach_reach_the_rules(monkeypatch) -> None:
    monkeypatch.setattr(gtorch.rules._registry, "_RULES", dict(gtorch.rules._registry._RULES))
    seen = []
    builtin = gtorch.rules._registry._RULES[nn.Conv2d]

    @register_norm_rule(nn.Conv2d)
    def conv_rule(layer, inputs, g, ctx):
        seen.append((ctx.sequence_method, ctx.workspace_bytes, ctx.dtype))
        return builtin(layer, inputs, g, ctx)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 16, 2))
    x = torch.randn(4, 2, 4, 4)
    want = loop_sq_norms(model.double(), x.double(), None, smooth_loss)
    pen = PerExampleNorms(model, sequence_method="gram")
    for method, ws in (("gram", 1 << 20), ("materialize", 64), ("auto", 1 << 20)):
        pen.sequence_method, pen.workspace_bytes = method, ws
        smooth_loss(model(x.double())).mean().backward()
        assert_norms(pen.sq_norms(), want, torch.float64)
    model.float()
    smooth_loss(model(x)).mean().backward()
    assert seen == [
        ("gram", 1 << 20, torch.float64),
        ("materialize", 64, torch.float64),
        ("auto", 1 << 20, torch.float64),
        ("auto", 1 << 20, torch.float32),
    ]
    pen.remove()


def test_subclass_overriding_forward_uses_fallback() -> None:
    class Doubled(nn.Linear):
        def forward(self, x):
            return super().forward(2 * x)

    class Plain(nn.Linear):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(Doubled(3, 4), Plain(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    assert pen.units == {"0": "fallback", "1": "rule"}
    assert_norms(got, want, torch.float64)


# ---------------------------------------------------------------- errors ---


def test_fallback_disabled_names_modules() -> None:
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Sequential(Gated(4)))
    with pytest.raises(UnsupportedModuleError, match=r"'1' \(Scale\).*'2\.0' \(Gated\)"):
        PerExampleNorms(model, fallback=False)
    assert not model[1]._forward_hooks  # nothing attached on failure
    PerExampleNorms(nn.Sequential(nn.Linear(3, 4)), fallback=False).remove()


def test_fallback_failure_names_module() -> None:
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w if x.sum() > 0 else -x * self.w  # data-dependent control flow

    model = nn.Sequential(nn.Linear(3, 3), Branchy())
    pen = PerExampleNorms(model)
    with pytest.raises(UnsupportedModuleError, match=r"'1' \(Branchy\).*register_norm_rule"):
        model(torch.randn(4, 3)).sum().backward()
    pen.remove()


@pytest.mark.parametrize("where", ["trainable", "frozen"])
def test_batchnorm_train_refused(where: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    if where == "frozen":
        model[1].requires_grad_(False)
    x = torch.randn(4, 3, 5, 5)
    with PerExampleNorms(model):
        with pytest.raises(UnsupportedModuleError, match=r"'1' \(BatchNorm2d\).*couple the examples.*GroupNorm or LayerNorm.*eval"):
            model(x)
        with torch.no_grad():  # not a training step: allowed
            model(x)
        model.eval()
        model(x)  # eval: inactive
    with pytest.raises(UnsupportedModuleError, match="BatchNorm2d"):
        per_example_grads(model.train(), lambda o: o.sum(), x)


def test_embedding_scale_grad_by_freq_refused() -> None:
    model = nn.Embedding(5, 3, scale_grad_by_freq=True)
    with PerExampleNorms(model):
        with pytest.raises(UnsupportedModuleError, match="scale_grad_by_freq"):
            model(torch.randint(0, 5, (4, 3))).sum().backward()


def test_eval_mode_inactive_and_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    pen = PerExampleNorms(model)
    model.eval()
    model(x).sum().backward()
    with pytest.raises(CaptureError, match="eval mode"):
        pen.sq_norms()
    # A train step, then an eval-mode backward: the norms would be stale.
    model.train()
    smooth_loss(model(x)).mean().backward()
    train_norms = pen.sq_norms()
    model.eval()
    model(x).sum().backward()
    with pytest.raises(CaptureError, match="model.train()"):
        pen.sq_norms()
    # An eval forward without gradients (validation) changes nothing.
    model.train()
    smooth_loss(model(x)).mean().backward()
    model.eval()
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(pen.sq_norms(), train_norms, rtol=1e-12, atol=0.0)
    pen.remove()


def test_state_errors() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    pen = PerExampleNorms(model)
    with pytest.raises(CaptureError, match="nothing captured"):
        pen.sq_norms()
    out = model(x)
    with pytest.raises(CaptureError, match="no backward pass"):
        pen.sq_norms()
    loss = smooth_loss(out).mean()
    loss.backward(retain_graph=True)
    loss.backward()
    with pytest.raises(CaptureError, match="second backward"):
        pen.sq_norms()
    pen.remove()


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_activation_checkpointing_refused(reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(4, 3, requires_grad=True)
    with PerExampleNorms(model):
        out = checkpoint(model, x, use_reentrant=reentrant)
        with pytest.raises(UnsupportedModuleError, match="inside a backward pass"):
            out.sum().backward()


def test_parameter_used_outside_forward_refused() -> None:
    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(F.linear(x, self.fc.weight, self.fc.bias))  # fc's forward never runs

    model = Sneaky()
    with PerExampleNorms(model) as pen:
        model(torch.randn(4, 3)).sum().backward()
        with pytest.raises(CaptureError, match=r"fc\.bias, fc\.weight"):
            pen.sq_norms()


@pytest.mark.parametrize("fuse_conv", [True, False])
def test_user_tensor_hook_on_an_output_is_seen_by_every_rule(fuse_conv: bool) -> None:
    """A tensor hook the user puts on layer outputs (from a forward hook
    registered after attaching) rescales the gradients the layers' backward
    uses; the norms are those of that gradient, as a per-example loop of the
    same hooked model computes them (Linear, conv and fallback units)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.Tanh(), Scale(5)).double()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    pen = PerExampleNorms(model, loss_reduction="sum", fuse_conv=fuse_conv)

    def rescaling(c: float):
        def forward_hook(mod, args, out) -> None:
            out.register_hook(lambda g: c * g)

        return forward_hook

    for k, m in enumerate((model[0], model[3], model[5])):
        m.register_forward_hook(rescaling(2.0 + k))
    smooth_loss(model(x)).sum().backward()
    got = pen.sq_norms()
    pen.remove()
    want = loop_sq_norms(model, x, None, smooth_loss)
    assert_norms(got, want, torch.float64)
    # the hooks matter: without them the norms differ
    plain = nn.Sequential(*[copy_module(m) for m in model])
    assert not torch.allclose(loop_sq_norms(plain, x, None, smooth_loss), want)


def test_user_pre_hook_changing_the_input_applies_once_in_the_fallback() -> None:
    """A forward pre-hook that changes a fallback unit's input: the unit's
    inputs are captured after it, and the torch.func fallback runs the
    unit's pre-hooks for their side effects only, so it is applied once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), Scale(5)).double()
    model[1].register_forward_pre_hook(lambda mod, args: (args[0] * 3.0 + 1.0,))
    x = torch.randn(6, 4, dtype=torch.float64)
    with PerExampleNorms(model, loss_reduction="sum") as pen:
        assert pen.units == {"0": "rule", "1": "fallback"}
        smooth_loss(model(x)).sum().backward()
        got = pen.sq_norms()
    assert_norms(got, loop_sq_norms(model, x, None, smooth_loss), torch.float64)


def copy_module(m: nn.Module) -> nn.Module:
    import copy

    c = copy.deepcopy(m)
    c._forward_hooks.clear()
    return c


def test_a_parameter_put_in_an_empty_slot_after_attach_is_refused() -> None:
    """bias=None at attach, a trainable bias registered afterwards: refused
    (the hooks' rule would skip it)."""
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    pen = PerExampleNorms(model)
    model[0].bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    smooth_loss(model(x)).mean().backward()
    with pytest.raises(CaptureError, match=r"now trainable: \['0.bias'\]"):
        pen.sq_norms()
    pen.remove()


def test_bad_arguments() -> None:
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="loss_reduction"):
        PerExampleNorms(m, loss_reduction="none")
    with pytest.raises(ValueError, match="sequence_method"):
        PerExampleNorms(m, sequence_method="fast")
    with pytest.raises(ValueError, match="batch_dim"):
        PerExampleNorms(m, batch_dim=-1)
    with pytest.raises(TypeError):
        PerExampleNorms(lambda x: x)


# ----------------------------------------------------------------- hooks ---


def hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {})) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
    for p in model.parameters():
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return n


def test_hooks_idempotent_and_removable() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3).eval(), nn.Flatten(), nn.Linear(9, 2)).double()
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    assert hook_count(model) == 0
    pen = PerExampleNorms(model, loss_reduction="sum")
    n = hook_count(model)
    assert n > 0
    pen.attach()
    pen.attach()
    assert hook_count(model) == n
    smooth_loss(model(x)).sum().backward()
    assert_norms(pen.sq_norms(), want, torch.float64)  # not double counted
    pen.remove()
    assert hook_count(model) == 0
    pen.remove()  # twice is fine
    smooth_loss(model(x)).sum().backward()
    with pytest.raises(CaptureError, match="attach"):
        pen.sq_norms()
    pen.attach()  # re-attach
    assert hook_count(model) == n
    smooth_loss(model(x)).sum().backward()
    assert_norms(pen.sq_norms(), want, torch.float64)
    pen.remove()
    with PerExampleNorms(model, loss_reduction="sum") as pen2:
        assert hook_count(model) == n
        smooth_loss(model(x)).sum().backward()
        assert_norms(pen2.sq_norms(), want, torch.float64)
    assert hook_count(model) == 0


def test_dropping_the_object_removes_hooks() -> None:
    import gc

    model = nn.Linear(3, 2)
    PerExampleNorms(model)
    gc.collect()
    assert hook_count(model) == 0


def test_each_forward_after_backward_starts_a_new_capture() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    want2 = loop_sq_norms(model, x2, None, smooth_loss)
    pen = PerExampleNorms(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for x in (x1, x2):
        opt.zero_grad()
        smooth_loss(model(x)).mean().backward()
        got = pen.sq_norms()
        opt.step()
    assert_norms(got, want2, torch.float64)
    pen.remove()


def test_autocast_bfloat16_computes_in_float32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(6, 8)
    want = loop_sq_norms(model, x, None, smooth_loss)
    pen = PerExampleNorms(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    smooth_loss(out.float()).mean().backward()
    got = pen.sq_norms()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=5e-2, atol=0.0)  # bf16 forward: ~3 digits
    pen.remove()


# ------------------------------------------------------- per_example_grads ---


def loop_grads(model, x, y, loss) -> torch.Tensor:
    named = trainable_parameters(model)
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        loss(model(x[i : i + 1]), None if y is None else y[i : i + 1])[0].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for _, p in named]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def scalar(loss):
    return lambda o, y=None: loss(o, y).mean()


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_example_grads_match_loop_and_torch_func(dtype: torch.dtype) -> None:
    case = CASES[[p.id for p in CASES].index("cnn-ce")].values[0]
    model, x, y = make(case, dtype)
    model[3].bias.requires_grad_(False)  # frozen: not a column
    want = loop_grads(model, x, y, case.loss)
    got = per_example_grads(model, scalar(case.loss), x, y)
    assert got.dtype == dtype and got.is_contiguous()
    assert got.shape == (x.shape[0], sum(p.numel() for p in model.parameters() if p.requires_grad))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * want.abs().max().item())

    # torch.func written out directly.
    params = {n: p.detach() for n, p in trainable_parameters(model)}

    def one(ps, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, ps, (xi[None],)), yi[None])

    g = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, x, y)
    direct = torch.cat([g[n].reshape(x.shape[0], -1) for n in params], 1)
    torch.testing.assert_close(got, direct, rtol=rtol, atol=atol * direct.abs().max().item())

    # The norms mode agrees with the rows' norms.
    norms, pen = hooked_sq_norms(model, x, y, case.loss, "mean")
    assert_norms(norms, got.double().square().sum(1), dtype)
    pen.remove()


def test_per_example_grads_tied_and_no_targets() -> None:
    torch.manual_seed(0)
    model = TiedLM(7, 3).double()
    idx = torch.randint(0, 7, (4, 5))
    loss = lambda o, y=None: smooth_loss(o)  # noqa: E731
    want = loop_grads(model, idx, None, loss)
    got = per_example_grads(model, lambda o: smooth_loss(o).mean(), idx)
    assert got.shape == (4, sum(p.numel() for _, p in trainable_parameters(model)))  # tied weight once
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_per_example_grads_chunking_invariant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    full = per_example_grads(model, F.cross_entropy, x, y)
    n_params = full.shape[1]
    for kw in ({"chunk_size": 1}, {"chunk_size": 3}, {"chunk_size": 100}, {"max_bytes": (7 + 2) * n_params * 8}):
        # equal up to summation order inside vmap's batched kernels
        torch.testing.assert_close(per_example_grads(model, F.cross_entropy, x, y, **kw), full, rtol=1e-12, atol=1e-15)


def test_per_example_grads_default_chunks(monkeypatch) -> None:
    """Without chunk_size, chunks of at most _FULL_CHUNK_EXAMPLES examples and
    _FULL_CHUNK_BYTES of per-example gradients, written into the result."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(70, 4, dtype=torch.float64), torch.randint(0, 3, (70,))
    whole = per_example_grads(model, F.cross_entropy, x, y, chunk_size=70)
    torch.testing.assert_close(per_example_grads(model, F.cross_entropy, x, y), whole, rtol=1e-12, atol=1e-15)
    sizes = []
    real_vmap = torch.func.vmap

    def counting_vmap(fn, *a, **k):
        batched = real_vmap(fn, *a, **k)

        def run(params, xs, ys):
            sizes.append(xs[0].shape[0])
            return batched(params, xs, ys)

        return run

    monkeypatch.setattr(torch.func, "vmap", counting_vmap)
    per_example_grads(model, F.cross_entropy, x, y)
    assert sizes == [64, 6]
    sizes.clear()
    n_params = whole.shape[1]
    monkeypatch.setattr(gtorch.full, "_FULL_CHUNK_BYTES", 20 * n_params * 8)
    got = per_example_grads(model, F.cross_entropy, x, y)
    assert sizes == [20, 20, 20, 10]
    torch.testing.assert_close(got, whole, rtol=1e-12, atol=1e-15)


def test_per_example_grads_over_budget() -> None:
    model = nn.Linear(10, 10)  # P = 110 float32: 440 bytes per example
    x, y = torch.randn(4, 10), torch.randn(4, 10)
    need = 4 * 110 * 4 + 110 * 4
    with pytest.raises(MemoryError, match=rf"max_bytes={need - 1}.*B=4, P=110.*{4 * 110 * 4} bytes.*at least {need} bytes"):
        per_example_grads(model, F.mse_loss, x, y, max_bytes=need - 1)
    assert per_example_grads(model, F.mse_loss, x, y, max_bytes=need).shape == (4, 110)
    with pytest.raises(ValueError, match="batch size"):
        per_example_grads(model, F.mse_loss, x, y[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        per_example_grads(model, F.mse_loss, x, y, chunk_size=0)


def test_per_example_grads_does_not_trigger_norm_hooks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with PerExampleNorms(model) as pen:
        per_example_grads(model, lambda o: o.sum(), x)
        with pytest.raises(CaptureError, match="nothing captured"):
            pen.sq_norms()


def test_pruned_linear_uses_the_fallback() -> None:
    """torch.nn.utils.prune replaces `weight` by `weight_orig` (a parameter)
    times a mask in a pre-hook: the Linear rule does not apply (it would norm
    the masked weight's gradient); the torch.func fallback is exact."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    prune.random_unstructured(model[0], "weight", 0.4)
    x = torch.randn(7, 6, dtype=torch.float64)
    want = loop_sq_norms(model, x, None, smooth_loss)
    got, pen = hooked_sq_norms(model, x, None, smooth_loss, "mean")
    assert pen.units == {"0": "fallback", "2": "rule"}
    assert_norms(got, want, torch.float64)
    pen.remove()
