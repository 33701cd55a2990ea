"""Fused convolutions: one computation for a convolution's per-example norms
and its batch gradient, by swapping a plain ``Conv1d/2d/3d``'s class for a
subclass whose backward takes ``.grad`` from the norms' by-product. When it
applies and what is unchanged: python/README.md, "Fused convolutions"."""

from __future__ import annotations

import copyreg
import dataclasses
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvGeometry, ConvLike, conv_geometry, conv_padding

__all__ = ["bind", "unbind", "bound_owner", "fusable_module", "FUSED_NODE"]


class _FusedConv(torch.autograd.Function):
    """conv(x, weight, bias) whose backward can take the batch weight and bias
    gradients from a sink (python/README.md, "Fused convolutions"). ``ctx.sink`` is set by the
    forward hook after the call: ``sink(x, g, geom, need_bias) -> (gw, gb) |
    None`` (None: compute them here)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], geom: ConvGeometry) -> Tensor:
        ctx.geom = geom
        ctx.sink = None
        ctx.save_for_backward(x, weight)
        return torch.ops.aten.convolution(x, weight, bias, geom.stride, geom.padding, geom.dilation, False, (0,) * len(geom.stride), geom.groups)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight = ctx.saved_tensors
        geom = ctx.geom
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        args = (list(geom.stride), list(geom.padding), list(geom.dilation), False, [0] * len(geom.stride), geom.groups)
        sink = ctx.sink  # kept: a second backward must reach it too (and be refused there)
        got = sink(x, g, geom, need_b) if (sink is not None and need_w) else None
        if got is None:
            gx, gw, gb = torch.ops.aten.convolution_backward(g, x, weight, [geom.out_channels] if need_b else None, *args, [need_x, need_w, need_b])
            return gx, gw, gb, None
        gw, gb = got
        gx = torch.ops.aten.convolution_backward(g, x, weight, None, *args, [True, False, False])[0] if need_x else None
        return gx, gw, gb, None


FUSED_NODE = _FusedConv._backward_cls  # type(output.grad_fn) of a fused call


# ----------------------------------------------------------- the classes ---

# module -> [weakref to its PerExampleNorms, the class to restore, the layer's
# arguments at the last call, their ConvGeometry]. Weak keys: a copy of a
# swapped module (copy.deepcopy) is not a key, so it runs the plain forward.
_BOUND: "weakref.WeakKeyDictionary[nn.Module, List[Any]]" = weakref.WeakKeyDictionary()

_functorch_active: Callable[[], bool] = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _forward_ad_level() -> int:
    """The innermost forward-mode AD level (``torch.autograd.forward_ad``), -1 outside one."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1)


_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _geometry(layer: ConvLike) -> Optional[ConvGeometry]:
    """The aten.convolution arguments of the layer's forward, after the
    padding it applies with F.pad (non-zero padding modes); None where the
    forward pads asymmetrically (``padding="same"`` with an even kernel
    extent): those calls run the plain forward."""
    geom = conv_geometry(layer)
    pads = conv_padding(geom)
    if geom.padding_mode == "zeros":
        if any(left != right for left, right in pads):
            return None
        padding = tuple(left for left, _ in pads)
    else:
        padding = (0,) * len(pads)
    return dataclasses.replace(geom, padding=padding, padding_mode="zeros")


if TYPE_CHECKING:
    # For the type checker only: the mixin is always combined with a conv
    # class (_fused_class), whose attributes (weight, padding, ...) it reads.
    _MixinBase = nn.modules.conv._ConvNd
else:
    _MixinBase = object


class _FusedConvMixin(_MixinBase):
    """The forward of the swapped-in classes (python/README.md, "Fused convolutions")."""

    _gdiv_unfused: type  # the original class (its rule, its repr name)

    def _get_name(self) -> str:
        return self._gdiv_unfused.__name__

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Copies (copy.deepcopy) and pickles of a swapped module are of the
        # original class: plain modules, which a later PerExampleNorms may fuse.
        rv = super().__reduce_ex__(protocol)
        # copyreg.__newobj__ exists at runtime; typeshed does not declare it.
        if isinstance(rv, tuple) and len(rv) >= 2 and rv[0] is copyreg.__newobj__ and tuple(rv[1]) == (type(self),):  # type: ignore[attr-defined]
            rv = (_new_unfused, (self._gdiv_unfused,)) + tuple(rv[2:])
        return rv

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Module's name
        base = getattr(self, "_gdiv_unfused", None)
        if base is None:  # the class was restored, but this bound method was kept (module.forward saved)
            return type(self).forward(self, input)
        if _compiling() or torch.jit.is_tracing():  # first: compile and jit.trace record the plain forward
            return base.forward(self, input)
        entry = _BOUND.get(self)
        owner = entry[0]() if entry is not None else None
        weight, bias = self.weight, self.bias
        if (
            owner is None
            or not owner._fusing()
            or weight is not self._parameters.get("weight")  # a computed weight (pruning, weight_norm)
            or _forward_ad_level() >= 0  # forward-mode AD: the Function has no jvp
            or type(input) is not Tensor
            or input.dim() != weight.dim()
            or not weight.requires_grad
            or input.dtype is not weight.dtype
            or weight.dtype not in (torch.float32, torch.float64)
            or _functorch_active()
            or _autocast_on(input.device.type)
        ):
            return base.forward(self, input)
        assert entry is not None  # owner, not None, came from it
        key = (self.padding, self.padding_mode, self.stride, self.dilation, self.groups, self.kernel_size)
        if entry[2] != key:  # the layer's arguments changed since the last call
            entry[2], entry[3] = key, _geometry(self)
        geom = entry[3]
        if geom is None:
            return base.forward(self, input)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return _FusedConv.apply(input, weight, bias, geom)


def _new_unfused(cls: Type[nn.Module]) -> Any:
    """Pickle/copy reconstructor of a swapped module: a bare instance of the
    original class (its state is set afterwards, as for any module)."""
    return cls.__new__(cls)


def _fused_class(base: type) -> type:
    cls = type(base.__name__, (_FusedConvMixin, base), {"_gdiv_unfused": base, "__module__": __name__})
    cls.__qualname__ = "Fused" + base.__name__
    return cls


FusedConv1d = _fused_class(nn.Conv1d)
FusedConv2d = _fused_class(nn.Conv2d)
FusedConv3d = _fused_class(nn.Conv3d)
_FUSED: Dict[type, type] = {nn.Conv1d: FusedConv1d, nn.Conv2d: FusedConv2d, nn.Conv3d: FusedConv3d}


def _plain_class(module: nn.Module) -> type:
    """The module's class, or for a swapped one the class it replaced."""
    return getattr(type(module), "_gdiv_unfused", type(module))


def fusable_module(module: nn.Module) -> bool:
    """A plain Conv1d/2d/3d (exactly; subclasses may compute something else;
    or one already swapped and not bound) whose forward pads symmetrically or
    with a non-zero padding mode, with its own ``weight`` (and ``bias``) as
    its only parameters (not a pruned or weight-normed module, whose weight is
    computed from other parameters)."""
    cls = type(module)
    if not (cls in _FUSED or cls in _FUSED.values()):
        return False
    if set(module._parameters) - {"weight", "bias"} or not isinstance(module._parameters.get("weight"), nn.Parameter):
        return False
    return _geometry(cast(nn.modules.conv._ConvNd, module)) is not None  # a conv class, checked above


def bound_owner(module: nn.Module) -> Any:
    """The live PerExampleNorms the module is fused for, or None."""
    entry = _BOUND.get(module)
    return entry[0]() if entry is not None else None


def bind(module: nn.Module, owner: Any) -> bool:
    """Swap the module's class for its fused one, for ``owner``. False (and
    nothing done) for a module that is not fusable or is already fused for
    another live owner."""
    if not fusable_module(module):
        return False
    entry = _BOUND.get(module)
    if entry is not None:
        live = entry[0]()
        if live is not None and live is not owner:
            return False
    base = _plain_class(module)
    module.__class__ = _FUSED[base]
    _BOUND[module] = [weakref.ref(owner), base, None, None]
    return True


def unbind(module: nn.Module, owner: Any = None) -> None:
    """Restore the module's class (if fused for ``owner``; any owner if None,
    or if its owner is gone)."""
    entry = _BOUND.get(module)
    if entry is None:
        return
    live = entry[0]()
    if owner is not None and live is not None and live is not owner:
        return
    del _BOUND[module]
    if type(module) is _FUSED.get(entry[1]):
        module.__class__ = entry[1]
    # else someone swapped the class again since (torch.nn.utils.parametrize
    # does): leave it; unbound, the fused forward runs the plain one.
