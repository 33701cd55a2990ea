"""The Go reference trainer, callable from Python: ground truth for the
framework integrations.

Mini-batch SGD exactly as the paper states it (eqs. 2–3), run by Go's
``train.SGD`` — deterministic (the same inputs give bit-identical weights and
history), with the diversity estimate and, optionally, the batch-size policy
and a diversity-inducing mechanism in the loop:

    sum step   w ← Π(w − γ Σ_{i∈batch} ∇f_i(w))          (the paper's; step="sum")
    mean step  w ← Π(w − (γ/B) Σ_{i∈batch} ∇f_i(w))      (a mean-reduced loss; step="mean")

Π the projection onto {‖w‖ ≤ radius} (eq. 3; none for radius 0). Batches
are drawn with replacement (the paper; Lemma 1 is exact) or from shuffled
epochs.

Functions:

- :func:`train` — a whole run: final weights, the per-step history, the
  batches' example indices (``record_indices=True``), losses, the final
  estimate.
- :func:`step` — one SGD step on given indices (Go's ``SGDStep``): replaying
  ``train``'s batches through it reproduces the weights bit for bit.
- :func:`loss_grad` — per-example losses and gradients (Go's ``LossGrad``).
- :func:`initial_weights` — the seeded initial weights ``train`` starts from.
- :func:`param_layout` — how the flat parameter vector maps to weight
  matrices and biases, with :meth:`ParamLayout.to_torch_state` /
  :meth:`ParamLayout.from_torch_state` for a PyTorch model that must hold the
  same weights.

Problems (per-example loss f_i; an L2 term (λ/2)‖W‖² is part of EVERY f_i, so
λW is in every per-example gradient; biases are not penalized):

================  ====================================================  ==========================
problem           f_i(w)                                                labels y
================  ====================================================  ==========================
"leastsquares"    ½(x_iᵀw + b − y_i)²                                   real targets
"logistic"        log(1 + e^z) − y_i z,  z = x_iᵀw + b                  0 or 1
"softmax"         log Σ_k e^{z_k} − z_{y_i},  z = W x_i + b             classes 0..K−1
"mlp"             softmax cross-entropy of W2·act(W1 x_i + b1) + b2     classes 0..K−1
================  ====================================================  ==========================

Data: ``X`` is an (n, d) float64 or float32 array, C-contiguous (numpy or a
torch CPU tensor; other array-likes are copied once). float64 ``X`` crosses
zero-copy: Go builds its ``data.Dataset`` over the array's own memory for the
duration of the call. float32 ``X`` is widened by Go to a float64 copy
(``data.Dataset`` holds float64). ``y`` (length n) crosses zero-copy when it
is a contiguous float64 array; integer labels (the usual case) are converted
to a float64 copy of n values. Go keeps no address after a call returns. Do
not modify ``X`` or ``y`` from another thread during a call.

Every call blocks until Go is done and releases the GIL meanwhile (other
Python threads run); there is no progress callback (calls from Go back into
Python are not supported by the bridge): size runs with ``steps`` or
``examples``.

Seeds: the batches come from PCG(seed, "SGD_SAMP"), step k's mechanism
draws from PCG(gdiv.step_seed(seed, k), 0) — the controller's step seeds,
as in a full-mode ``DiversityMonitor(seed=seed)`` — and the default initial
weights from ``InitialWeights(PCG(seed, "INIT"))`` — the stream of the CLI, so
``train(..., seed=s)`` and ``gdiv train --seed s`` start from the same
weights.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._arrays import KIND_ARROW, operand, refuse_masked
from ._bridge import lib
from ._results import Estimate
from ._validate import check_float, check_int, check_seed
from .controller import Controller
from .errors import ParamError, ParamTypeError, ShapeError, translate
from .mechanisms import Mechanism
from .policy import BatchSizePolicy

__all__ = [
    "train",
    "step",
    "loss_grad",
    "initial_weights",
    "param_layout",
    "TrainResult",
    "ParamLayout",
    "Layer",
    "PROBLEMS",
    "HISTORY_FIELDS",
]

# Names in code order (pybridge's problem codes; train.Activation, StepRule
# and Sampling values — pybridge's TestCodesAreCoreEnums checks them).
PROBLEMS: Tuple[str, ...] = ("leastsquares", "logistic", "softmax", "mlp")
_ACTIVATIONS = ("tanh", "relu")
_STEPS = ("sum", "mean")
_SAMPLINGS = ("replacement", "shuffle")

HISTORY_FIELDS: Tuple[str, ...] = (
    "step",
    "examples",
    "batch",
    "lr",
    "batch_loss",
    "loss",
    "evaluated",
    "m2",
    "g",
    "batch_bound",
    "diversity",
    "no_signal",
    "has_estimate",
)
"""The keys of :attr:`TrainResult.history`: Go's Record fields in snake_case,
in the order of the CLI's history CSV."""

_HISTORY_DTYPES = {"step": np.int64, "examples": np.int64, "batch": np.int64, "evaluated": bool, "no_signal": bool, "has_estimate": bool}

_addressof = ctypes.addressof
_make_estimate = Estimate._make  # type: ignore[attr-defined]


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RuntimeError as e:
        raise translate(e) from None


def _choice(name: str, value: Any, names: Sequence[str]) -> int:
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"{name} = {value!r}: want one of {', '.join(map(repr, names))}")
    return names.index(value)


def _int(name: str, v: Any) -> int:
    return check_int(name, v, f64=True)  # settings cross in float64 buffers


_float = check_float


def _seed(seed: Any) -> int:
    # The reference trainer is deterministic: None (a random seed) is refused.
    if seed is None:
        raise ParamTypeError("seed = None: want an integer in [0, 2**64) (the reference trainer is always seeded)")
    return check_seed(seed)


# ------------------------------------------------------------------ problems --


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A problem as pybridge's spec buffer: problem, l2, hidden, activation,
    intercept, classes."""

    problem: int
    l2: float
    hidden: int
    activation: int
    intercept: bool
    classes: int

    def buffer(self) -> Any:
        return (ctypes.c_double * 6)(self.problem, self.l2, self.hidden, self.activation, float(self.intercept), self.classes)


def _spec(problem: Any, l2: Any, hidden: Any, activation: Any, intercept: Any, classes: int) -> _Spec:
    return _Spec(
        _choice("problem", problem, PROBLEMS),
        _float("l2", l2),
        0 if hidden is None and problem != "mlp" else _int("hidden", hidden),
        _choice("activation", activation, _ACTIVATIONS),
        bool(intercept),
        classes,
    )


def _classes_for(problem: Any, classes: Any, y: Optional[np.ndarray]) -> int:
    """Dataset.Classes for the problem: 0 (least squares), 2 (logistic), or
    K for softmax and mlp — given, or inferred from y as max(y) + 1 (Go then
    checks every label and names a bad row)."""
    if problem == "leastsquares":
        if classes not in (None, 0):
            raise ValueError(f"classes = {classes!r}: least squares has real-valued targets; leave classes=None")
        return 0
    if problem == "logistic":
        if classes not in (None, 2):
            raise ValueError(f"classes = {classes!r}: logistic regression is binary (labels 0 and 1); use problem='softmax'")
        return 2
    if classes is not None:
        k = _int("classes", classes)
        if k < 2:
            raise ValueError(f"classes = {k}: {problem} needs at least 2 classes")
        return k
    if y is None:
        raise ValueError(f"n_classes is required for problem={problem!r}")
    finite = y[np.isfinite(y)]
    if finite.size == 0:
        return 2  # Go reports the first non-finite label
    return max(2, int(math.floor(min(float(finite.max()), 2.0**31))) + 1)


def _progress_fd(progress: Any) -> int:
    """The descriptor Go prints progress on (sys.stderr's), or −1 for none."""
    if progress is not None and not isinstance(progress, bool):
        raise ParamTypeError(f"progress = {progress!r}: want True, False or None (on a terminal)")
    err = sys.stderr
    try:
        fd = err.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO, a notebook's stream
        fd = -1
    if progress is None:
        progress = fd >= 0 and err.isatty()
    if not progress:
        return -1
    if fd < 0:
        fd = 2  # no descriptor behind sys.stderr: the process's standard error
    err.flush()  # earlier Python output first
    return fd


def _labels(y: Any, n: int) -> np.ndarray:
    refuse_masked(y, "y")
    if isinstance(y, np.ndarray) and y.dtype == np.float64 and y.ndim == 1 and y.flags.c_contiguous and y.flags.aligned:
        a = y  # zero copy
    else:
        try:
            a = np.asarray(y)
        except Exception as e:  # torch GPU tensors, ragged lists, ...
            raise TypeError(f"y: cannot convert {type(y).__qualname__} to an array: {e}") from e
        if a.dtype.kind not in "biuf":
            raise TypeError(f"y has dtype {a.dtype}; want numbers (class indices or real targets)")
        a = np.ascontiguousarray(a, dtype=np.float64)
    if a.ndim != 1:
        raise ShapeError(f"gdiv: shape mismatch: y must be 1-D (one label per row of X); got shape {a.shape}")
    if a.shape[0] != n:
        raise ShapeError(f"gdiv: shape mismatch: X has {n} rows but y has {a.shape[0]} labels")
    return a


class _Data:
    """X and y validated for a call: pybridge's (spec, xKind, xAddr, yAddr,
    n, d) and the objects to keep alive."""

    __slots__ = ("spec", "buf", "args", "keep", "n", "d")

    def __init__(self, X: Any, y: Any, problem: Any, l2: Any, hidden: Any, activation: Any, intercept: Any, classes: Any) -> None:
        _choice("problem", problem, PROBLEMS)
        op = operand(X, "X")
        if op[0] == KIND_ARROW:
            raise TypeError("X: Arrow arrays are not supported by gdiv.reference; pass a numpy array (numpy.asarray(X))")
        kind, addr, _, n, d, keep = op
        yy = _labels(y, n)
        self.spec = _spec(problem, l2, hidden, activation, intercept, _classes_for(problem, classes, yy))
        self.buf = self.spec.buffer()
        self.args = (_addressof(self.buf), kind, addr, yy.__array_interface__["data"][0] if n else 0, n, d)
        self.keep = (keep, yy)
        self.n, self.d = n, d

    def n_params(self) -> int:
        return _call(lib.NumParams, self.args[0], self.d)


def _weights(w: Any, what: str, n_params: int) -> np.ndarray:
    refuse_masked(w, what)
    try:
        a = np.asarray(w)
    except Exception as e:
        raise TypeError(f"{what}: cannot convert {type(w).__qualname__} to an array: {e}") from e
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} has dtype {a.dtype}; want float64 weights")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] != n_params:
        raise ShapeError(f"gdiv: shape mismatch: {what} has shape {a.shape}; the problem has {n_params} parameters (a 1-D vector)")
    return a


def _indices(indices: Any, n: int) -> np.ndarray:
    refuse_masked(indices, "indices")
    try:
        a = np.asarray(indices)
    except Exception as e:
        raise TypeError(f"indices: cannot convert {type(indices).__qualname__} to an array: {e}") from e
    if a.size == 0:
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"indices has dtype {a.dtype}; want integer example indices")
    if a.ndim != 1:
        raise ShapeError(f"gdiv: shape mismatch: indices must be 1-D; got shape {a.shape}")
    if a.dtype.kind == "u" and a.size and int(a.max()) >= 2**63:
        raise ParamError(f"gdiv: invalid parameter: indices: {int(a.max())} is outside [0, {n})")
    return np.ascontiguousarray(a, dtype=np.int64)


# ------------------------------------------------------------------- layout --


@dataclasses.dataclass(frozen=True)
class Layer:
    """One affine layer z = W·x + b inside the flat parameter vector.

    Its parameters are the ``out_features × (in_features + bias)`` block
    ``w[offset : offset + size]``, ROW-MAJOR, each row ``[W_k1 … W_kD, b_k]``:
    the bias is the LAST COLUMN of its row, interleaved with the weights —
    not a separate vector after the matrix (PyTorch's ``nn.Linear`` keeps
    ``weight`` (out × in) and ``bias`` (out) apart; use :meth:`weight` and
    :meth:`bias_of`, or :meth:`ParamLayout.to_torch_state`).

    Attributes:
        name: "linear" (the linear problems), "hidden" or "output" (mlp).
        offset: index of the block's first parameter.
        out_features, in_features: the shape of W.
        bias: whether each row ends with a bias.
    """

    name: str
    offset: int
    out_features: int
    in_features: int
    bias: bool

    @property
    def stride(self) -> int:
        """Parameters per row: in_features + 1 with a bias, else in_features."""
        return self.in_features + int(self.bias)

    @property
    def size(self) -> int:
        """Number of parameters of the layer."""
        return self.out_features * self.stride

    def block(self, w: np.ndarray) -> np.ndarray:
        """The layer's (out_features, stride) block of w (a view)."""
        return np.asarray(w)[self.offset : self.offset + self.size].reshape(self.out_features, self.stride)

    def weight(self, w: np.ndarray) -> np.ndarray:
        """W, (out_features, in_features) — a strided view into w."""
        return self.block(w)[:, : self.in_features]

    def bias_of(self, w: np.ndarray) -> Optional[np.ndarray]:
        """b, (out_features,) — a strided view into w; None without bias."""
        return self.block(w)[:, self.in_features] if self.bias else None


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """How Go's flat parameter vector maps to the model's matrices.

    Go's layouts (gdiv/train/problem.go, gdiv/train/mlp.go), S = D + 1 with
    intercepts, D without:

    ===============================  ===========================================
    leastsquares, logistic           ``[w_1 … w_D, b]`` — one row (1 × S)
    softmax                          K × S, row k = ``[W_k1 … W_kD, b_k]``
    mlp                              W1 (H × S, row j = ``[W1_j1 … W1_jD, b1_j]``)
                                     then W2 (K × (H+1), row k = ``[W2_k1 … W2_kH, b2_k]``)
    ===============================  ===========================================

    all row-major, biases as the last column of their row. The model:
    z = W x + b for the linear problems (one output for leastsquares and
    logistic: the logit of class 1), z = W2 act(W1 x + b1) + b2 for mlp.

    Attributes:
        problem, n_features, n_classes, hidden, activation, intercept: the
            problem (``n_classes`` is 0 for leastsquares, 2 for logistic;
            ``hidden`` and ``activation`` are None except for mlp).
        n_params: the length of the flat vector (Go's NumParams).
        layers: the :class:`Layer` blocks in order; they tile the vector.
    """

    problem: str
    n_features: int
    n_classes: int
    hidden: Optional[int]
    activation: Optional[str]
    intercept: bool
    n_params: int
    layers: Tuple[Layer, ...]

    def torch_keys(self) -> List[Tuple[str, str]]:
        """(weight key, bias key) of each layer in the matching torch model:
        ``nn.Linear(D, out)`` ("weight", "bias") for the linear problems,
        ``nn.Sequential(nn.Linear(D, H), nn.Tanh() or nn.ReLU(),
        nn.Linear(H, K))`` ("0.weight", "0.bias", "2.weight", "2.bias") for
        mlp."""
        if len(self.layers) == 1:
            return [("weight", "bias")]
        return [("0.weight", "0.bias"), ("2.weight", "2.bias")]

    def unpack(self, w: Any) -> Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]:
        """{layer name: (W, b)} as copies (b None without intercept)."""
        a = self._check(w)
        return {
            L.name: (L.weight(a).copy(), None if not L.bias else L.bias_of(a).copy())  # type: ignore[union-attr]
            for L in self.layers
        }

    def to_torch_state(self, w: Any, *, dtype: Any = None) -> Dict[str, Any]:
        """A state dict for the torch model of :meth:`torch_keys`:
        ``model.load_state_dict(layout.to_torch_state(w))`` loads it.

        Args:
            w: the flat parameter vector (n_params,).
            dtype: the tensors' torch dtype (default torch.float64, Go's
                precision; ``load_state_dict`` converts to the model's own
                dtype either way).

        Returns:
            {key: torch.Tensor}, CPU tensors with memory of their own (not
            views of w). Without intercepts there are no bias keys: build
            the layers with ``bias=False``. :meth:`unpack` gives numpy
            arrays instead.

        Raises:
            ImportError: torch is not installed.
            gdiv.ShapeError: w is not (n_params,).
        """
        import torch

        a = self._check(w)
        out: Dict[str, Any] = {}
        for L, (wk, bk) in zip(self.layers, self.torch_keys()):
            out[wk] = torch.from_numpy(np.array(L.weight(a), order="C", copy=True))
            if L.bias:
                out[bk] = torch.from_numpy(np.array(L.bias_of(a), order="C", copy=True))
        if dtype is not None:
            out = {k: v.to(dtype) for k, v in out.items()}
        return out

    def from_torch_state(self, state: Dict[str, Any]) -> np.ndarray:
        """The flat float64 vector of a state dict of the model of
        :meth:`torch_keys` (torch tensors, CPU or not, or numpy arrays)."""
        w = np.empty(self.n_params)
        for L, (wk, bk) in zip(self.layers, self.torch_keys()):
            blk = w[L.offset : L.offset + L.size].reshape(L.out_features, L.stride)
            blk[:, : L.in_features] = self._array(state, wk, (L.out_features, L.in_features))
            if L.bias:
                blk[:, L.in_features] = self._array(state, bk, (L.out_features,))
        return w

    def pack(self, params: Dict[str, Tuple[Any, Any]]) -> np.ndarray:
        """The inverse of :meth:`unpack`: the flat vector from {name: (W, b)}."""
        w = np.empty(self.n_params)
        for L in self.layers:
            W, b = params[L.name]
            blk = w[L.offset : L.offset + L.size].reshape(L.out_features, L.stride)
            blk[:, : L.in_features] = np.asarray(W, dtype=np.float64).reshape(L.out_features, L.in_features)
            if L.bias:
                blk[:, L.in_features] = np.asarray(b, dtype=np.float64).reshape(L.out_features)
        return w

    @staticmethod
    def _array(state: Dict[str, Any], key: str, shape: Tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise KeyError(f"state dict has no {key!r} (keys: {sorted(state)})")
        v = state[key]
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu().double().numpy()
        a = np.asarray(v, dtype=np.float64)
        if a.shape != shape:
            raise ShapeError(f"gdiv: shape mismatch: {key} has shape {a.shape}, want {shape}")
        return a

    def _check(self, w: Any) -> np.ndarray:
        a = np.asarray(w, dtype=np.float64)
        if a.shape != (self.n_params,):
            raise ShapeError(f"gdiv: shape mismatch: w has shape {a.shape}, want ({self.n_params},)")
        return a

    def __str__(self) -> str:
        rows = [
            f"{self.problem}: {self.n_params} parameters, row-major, each row [weights…, bias]"
            if self.intercept
            else f"{self.problem}: {self.n_params} parameters, row-major, no biases"
        ]
        for L in self.layers:
            cols = f"{L.in_features}+1" if L.bias else f"{L.in_features}"
            rows.append(f"  {L.name}: w[{L.offset}:{L.offset + L.size}] = {L.out_features}×({cols})")
        return "\n".join(rows)


def _layout(spec: _Spec, problem: str, d: int, k: int, n_params: int) -> ParamLayout:
    b = spec.intercept
    if problem == "mlp":
        h = spec.hidden
        hid = Layer("hidden", 0, h, d, b)
        layers: Tuple[Layer, ...] = (hid, Layer("output", hid.size, k, h, b))
    else:
        layers = (Layer("linear", 0, k if problem == "softmax" else 1, d, b),)
    lay = ParamLayout(
        problem=problem,
        n_features=d,
        n_classes=k,
        hidden=spec.hidden if problem == "mlp" else None,
        activation=_ACTIVATIONS[spec.activation] if problem == "mlp" else None,
        intercept=b,
        n_params=n_params,
        layers=layers,
    )
    if sum(L.size for L in layers) != n_params:  # pragma: no cover - a layout out of sync with Go
        raise RuntimeError(f"gdiv: internal error: layout {lay} does not match Go's NumParams = {n_params}")
    return lay


def _shape_spec(problem: Any, n_features: Any, n_classes: Any, hidden: Any, activation: Any, intercept: Any) -> Tuple[_Spec, int]:
    _choice("problem", problem, PROBLEMS)
    d = _int("n_features", n_features)
    if d < 1:
        raise ValueError(f"n_features = {d}: want ≥ 1")
    spec = _spec(problem, 0.0, hidden, activation, intercept, _classes_for(problem, n_classes, None))
    return spec, d


def param_layout(
    problem: str,
    n_features: int,
    n_classes: Optional[int] = None,
    *,
    hidden: int = 32,
    activation: str = "tanh",
    intercept: bool = True,
) -> ParamLayout:
    """How the flat parameter vector of ``problem`` maps to matrices and biases.

    Args:
        problem: "leastsquares", "logistic", "softmax" or "mlp".
        n_features: D, the number of features.
        n_classes: K for softmax and mlp (required); ignored (None) for
            leastsquares and logistic.
        hidden, activation: the MLP's hidden units and activation.
        intercept: whether the layers have biases.

    Returns:
        ParamLayout — its ``n_params`` is Go's NumParams; ``str()`` describes
        it; ``to_torch_state(w)`` / ``from_torch_state(state)`` convert.

    Example:
        >>> import gdiv
        >>> print(gdiv.reference.param_layout("softmax", 3, 2))
        softmax: 8 parameters, row-major, each row [weights…, bias]
          linear: w[0:8] = 2×(3+1)
    """
    spec, d = _shape_spec(problem, n_features, n_classes, hidden, activation, intercept)
    buf = spec.buffer()
    n_params = _call(lib.NumParams, _addressof(buf), d)
    k = spec.classes
    return _layout(spec, problem, d, k, n_params)


def initial_weights(
    problem: str,
    n_features: int,
    n_classes: Optional[int] = None,
    *,
    hidden: int = 32,
    activation: str = "tanh",
    seed: int = 0,
    intercept: bool = True,
) -> np.ndarray:
    """The initial weights :func:`train` starts from when ``w0=None``.

    Go's ``Initializer.InitialWeights`` with the source PCG(seed, "INIT")
    (the CLI's): zeros for leastsquares, logistic and softmax; for mlp, zero
    biases and Glorot-normal weights (hidden layer N(0, 2/(D+H)) for tanh, He
    N(0, 2/D) for relu; output layer N(0, 2/(H+K))), drawn in parameter
    order. Deterministic per seed. Arguments as for :func:`param_layout`.

    Returns:
        A new float64 vector of NumParams values (layout: :func:`param_layout`).
    """
    spec, d = _shape_spec(problem, n_features, n_classes, hidden, activation, intercept)
    buf = spec.buffer()
    n_params = _call(lib.NumParams, _addressof(buf), d)
    out = np.empty(n_params)
    _call(lib.InitialWeights, _addressof(buf), d, _seed(seed), out.ctypes.data, n_params)
    return out


# ------------------------------------------------------ gradients and steps --


def loss_grad(
    X: Any,
    y: Any,
    w: Any,
    *,
    problem: str = "softmax",
    l2: float = 1e-4,
    hidden: int = 32,
    activation: str = "tanh",
    intercept: bool = True,
    classes: Optional[int] = None,
    indices: Any = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-example losses and gradients at w, computed by Go (``LossGrad``,
    the rows of ``gdiv.PerExampleGrads``).

    Args:
        X, y: the data (see the module doc).
        w: the parameters, NumParams float64 values (:func:`param_layout`).
        problem, l2, hidden, activation, intercept, classes: the problem (as
            for :func:`train`).
        indices: the examples, 1-D integers in [0, n) (repeats allowed);
            None for all n in order.

    Returns:
        (losses, grads): f_i(w), shape (b,), and ∇f_i(w), shape (b, P), for
        i = indices[0], …; both include the L2 term.

    Raises:
        gdiv.ShapeError: y or w of the wrong length.
        gdiv.ParamError: an index out of range (named), a bad setting.
        gdiv.LabelError: a label out of range (the row is named).
        gdiv.NonFiniteError: NaN/Inf in X, y or w (named).
        gdiv.EmptyInputError: no examples or empty indices.
    """
    data = _Data(X, y, problem, l2, hidden, activation, intercept, classes)
    n_params = data.n_params()
    wv = _weights(w, "w", n_params)
    if indices is None:
        idx = None
        b = data.n
    else:
        idx = _indices(indices, data.n)
        b = idx.shape[0]
    losses = np.empty(b)
    grads = np.empty((b, n_params))
    _call(
        lib.LossGrads,
        *data.args,
        wv.ctypes.data,
        n_params,
        0 if idx is None or b == 0 else idx.ctypes.data,
        b,
        losses.ctypes.data,
        grads.ctypes.data,
    )
    return losses, grads


def step(
    X: Any,
    y: Any,
    w: Any,
    indices: Any,
    *,
    problem: str = "softmax",
    l2: float = 1e-4,
    hidden: int = 32,
    activation: str = "tanh",
    intercept: bool = True,
    classes: Optional[int] = None,
    lr: float,
    step: str = "sum",
    radius: float = 0.0,
) -> np.ndarray:
    """One SGD step on the examples ``indices`` (Go's ``SGDStep``):

        w_new = Π(w − γ Σ_{i∈indices} ∇f_i(w)),  γ = lr ("sum") or lr/len(indices) ("mean"),

    gradients summed in the order of ``indices`` exactly as :func:`train`
    sums them, so replaying ``train(..., record_indices=True).batches``
    (with each step's ``history["lr"]``) reproduces its weights bit for bit
    (without a mechanism).

    Args:
        X, y, problem, l2, hidden, activation, intercept, classes: as for
            :func:`train`.
        w: the current parameters (not modified).
        indices: the batch, 1-D integers in [0, n), repeats allowed.
        lr: the step size, finite and > 0.
        step: "sum" (the paper's) or "mean".
        radius: project onto {‖w‖ ≤ radius}; 0 means no projection.

    Returns:
        The new parameters (a new float64 array).

    Raises:
        gdiv.ParamError: lr ≤ 0, a negative radius, an index out of range.
        gdiv.NonFiniteError: a non-finite loss, gradient or new weight.
        And the errors of :func:`loss_grad`.
    """
    rule = _choice("step", step, _STEPS)
    data = _Data(X, y, problem, l2, hidden, activation, intercept, classes)
    n_params = data.n_params()
    wv = _weights(w, "w", n_params)
    idx = _indices(indices, data.n)
    out = np.empty(n_params)
    b = idx.shape[0]
    _call(
        lib.Step,
        *data.args,
        wv.ctypes.data,
        n_params,
        idx.ctypes.data if b else 0,
        b,
        _float("lr", lr),
        rule,
        _float("radius", radius),
        out.ctypes.data,
    )
    return out


# -------------------------------------------------------------------- train --


@dataclasses.dataclass(frozen=True, eq=False)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        weights: the final parameters, float64 (NumParams,).
        history: one entry per step, a dict of equal-length numpy arrays
            keyed by :data:`HISTORY_FIELDS` (``pandas.DataFrame(res.history)``
            gives a table): step (1-based), examples (per-example gradients
            so far), batch, lr (the step size used), batch_loss (mean f_i
            over the batch before the step), loss (F(w) of the latest
            evaluation, carried forward; evaluated marks the steps where it
            was computed), m2, g, batch_bound, diversity (= batch_bound/n),
            no_signal (the smoothed estimate after the step) and
            has_estimate (False while no batch had two examples).
        batches: with ``record_indices=True``, the example indices of each
            step (int64 arrays, views of one buffer); else None.
        initial_loss: F(w₀). final_loss: F(w) after the last step.
        estimate: the final smoothed :class:`gdiv.Estimate` (batch = 0).
        steps, examples: the number of steps and of per-example gradients.
        policy: the :class:`gdiv.BatchSizePolicy` the trainer applied, after
            its adjustments (min_batch at least 2, max_batch = n when None);
            None for a fixed batch.
    """

    weights: np.ndarray
    history: Dict[str, np.ndarray]
    batches: Optional[List[np.ndarray]]
    initial_loss: float
    final_loss: float
    estimate: Estimate
    steps: int
    examples: int
    policy: Optional[BatchSizePolicy]

    def __repr__(self) -> str:
        return (
            f"TrainResult(steps={self.steps}, examples={self.examples}, initial_loss={self.initial_loss:.6g}, "
            f"final_loss={self.final_loss:.6g}, batch_bound={self.estimate.batch_bound:.6g})"
        )


def _capacity(n: int, batch: int, policy: Optional[BatchSizePolicy], steps: int, examples: int, record: bool) -> Tuple[int, int]:
    """Upper bounds on the number of steps and of recorded indices of a run.

    Every batch is at least b_lo (the fixed batch; with a policy the
    adjusted min_batch) and at most b_hi (the fixed batch; the adjusted
    max_batch), the adjustments being Go's (a Controller's policy); the run
    stops after ``steps`` steps or once ``examples`` gradients are reached
    (the last batch whole). Invalid settings give 0 and Go reports them.
    """
    if policy is None:
        b_lo = b_hi = max(batch, 1)
    else:
        try:
            adjusted = Controller(policy=policy, dataset_size=n).policy
        except ParamError:
            return 0, 0
        assert adjusted is not None and adjusted.max_batch is not None
        b_lo, b_hi = adjusted.min_batch, max(adjusted.max_batch, batch)
    cap_steps = 0
    if steps > 0:
        cap_steps = steps
    if examples > 0:
        by_examples = -(-examples // b_lo)
        cap_steps = min(cap_steps, by_examples) if cap_steps else by_examples
    cap_idx = 0
    if record and cap_steps:
        cap_idx = cap_steps * b_hi
        if examples > 0:
            cap_idx = min(cap_idx, examples + b_hi - 1)
    return cap_steps, cap_idx


def train(
    X: Any,
    y: Any,
    *,
    problem: str = "softmax",
    l2: float = 1e-4,
    hidden: int = 32,
    activation: str = "tanh",
    intercept: bool = True,
    w0: Any = None,
    lr: float,
    step: str = "sum",
    batch: Optional[int] = None,
    policy: Optional[BatchSizePolicy] = None,
    steps: Optional[int] = None,
    examples: Optional[int] = None,
    sampling: str = "replacement",
    radius: float = 0.0,
    mechanism: Optional[Mechanism] = None,
    seed: int = 0,
    estimator_beta: float = 0.0,
    eval_every: int = 0,
    record_indices: bool = False,
    lr_warmup_steps: int = 0,
    classes: Optional[int] = None,
    progress: Optional[bool] = None,
) -> TrainResult:
    """Train with Go's reference mini-batch SGD (``train.SGD``).

    Args:
        X: (n, d) features, float64 (zero copy) or float32 (widened by Go to
            a float64 copy); see the module doc.
        y: (n,) labels: real targets for leastsquares, 0/1 for logistic,
            class indices 0..K−1 for softmax and mlp.
        problem: "leastsquares", "logistic", "softmax" or "mlp".
        l2: λ ≥ 0 of the (λ/2)‖W‖² term in every f_i (biases not penalized).
        hidden, activation: the MLP's hidden units and "tanh" or "relu".
        intercept: biases in the model (False: Go's NoIntercept).
        w0: initial parameters (NumParams values, layout
            :func:`param_layout`; copied); None: :func:`initial_weights`
            with this ``seed``.
        lr: the step size γ > 0 (per example for step="sum", of the mean
            gradient for step="mean").
        step: "sum" (the paper's w ← w − γ Σ g_i) or "mean" (w ← w − (γ/B) Σ g_i).
        batch: the batch size without a policy (required then); with a
            policy the initial batch (None: the smallest the policy allows).
        policy: a :class:`gdiv.BatchSizePolicy`: the batch of each step
            after the first is ``policy.next(B, smoothed estimate, k − 1)``.
            The trainer raises its min_batch to 2 (the estimate needs two
            examples) and caps a max_batch of None at n. With step="mean" the
            step size follows ``policy.lr_rule`` from the initial batch; with
            "sum" the rule is ignored (the sum step keeps γ per example).
        steps, examples: stop after ``steps`` steps or once ``examples``
            per-example gradients are computed (the last batch whole),
            whichever comes first; at least one is required.
        sampling: "replacement" (the paper's; Lemma 1 exact) or "shuffle"
            (epochs without replacement; batch and max_batch ≤ n).
        radius: project onto {‖w‖ ≤ radius} after each step (eq. 3); 0: none.
        mechanism: a :class:`gdiv.Dropout`, :class:`gdiv.Langevin` or
            :class:`gdiv.Quantize` applied to each per-example gradient
            before the sum (the estimate is that of the modified gradients).
        seed: seeds all randomness, an integer in [0, 2**64).
        estimator_beta: EMA decay in [0, 1) of the ratio-of-EMAs estimate
            (0: the latest batch's estimate drives the policy).
        eval_every: k > 0 evaluates the full loss F(w) every k steps (and
            after the last); 0: once per epoch at the initial batch; < 0:
            only after the last step.
        record_indices: keep every batch's example indices in
            :attr:`TrainResult.batches` (to replay the run elsewhere).
        lr_warmup_steps: W ≥ 0 (step="mean" with a policy): after each
            batch change, ramp the step size linearly over W steps from the
            previous step's to the LR rule's (Go's
            ``SGDSettings.LRWarmupSteps``, as ``gdiv.Controller``'s); 0 or
            1: none.
        classes: K for softmax and mlp (None: max(y) + 1).
        progress: print about twenty progress lines during the run, the
            same lines as ``gdiv train`` ("train:  45.0%  step ..."), on
            standard error (written by Go to ``sys.stderr``'s file
            descriptor). None (default): only when standard error is a
            terminal; False: never.

    Returns:
        TrainResult.

    Raises:
        gdiv.ParamError: an invalid setting, named in Go's words (e.g.
            "SGD learning rate = -1, want a finite lr > 0"), an unknown
            problem (ValueError naming ``problem``).
        gdiv.ShapeError: y not of length n; w0 of the wrong length.
        gdiv.LabelError: a label out of range for the problem (row named).
        gdiv.NonFiniteError: NaN/Inf in X or y (row and column named), or
            a loss, gradient or weight that became non-finite ("at step k":
            lower the learning rate); the partial run is discarded.
        TypeError: arguments of the wrong type.

    The call blocks until the run is done and releases the GIL meanwhile.

    Example:
        >>> import numpy as np, gdiv
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5)); y = (X[:, 0] > 0).astype(int)
        >>> res = gdiv.reference.train(X, y, problem="logistic", lr=0.05, batch=8, steps=100, seed=1)
        >>> bool(res.final_loss < res.initial_loss), len(res.history["batch"])
        (True, 100)
    """
    rule = _choice("step", step, _STEPS)
    samp = _choice("sampling", sampling, _SAMPLINGS)
    if policy is not None and not isinstance(policy, BatchSizePolicy):
        raise TypeError(f"policy is a {type(policy).__qualname__}; want a gdiv.BatchSizePolicy or None")
    if mechanism is not None and not isinstance(mechanism, Mechanism):
        raise TypeError(f"mechanism is a {type(mechanism).__qualname__}; want gdiv.Dropout, gdiv.Langevin, gdiv.Quantize or None")
    b = 0 if batch is None else _int("batch", batch)
    n_steps = 0 if steps is None else _int("steps", steps)
    n_examples = 0 if examples is None else _int("examples", examples)
    record = bool(record_indices)
    fd = _progress_fd(progress)
    s = _seed(seed)
    settings = (ctypes.c_double * 10)(
        _float("lr", lr),
        rule,
        b,
        n_steps,
        n_examples,
        samp,
        _float("radius", radius),
        _float("estimator_beta", estimator_beta),
        _int("eval_every", eval_every),
        _int("lr_warmup_steps", lr_warmup_steps),
    )
    data = _Data(X, y, problem, l2, hidden, activation, intercept, classes)
    n_params = data.n_params()
    w0v = None if w0 is None else _weights(w0, "w0", n_params)
    if mechanism is None:
        mech: Tuple[Any, ...] = (-1, 0.0, 0, False)
    else:
        mech = (mechanism._code, *mechanism._params())
    cap_steps, cap_idx = _capacity(data.n, b, policy, n_steps, n_examples, record)
    pbuf = None if policy is None else policy._buf  # kept alive for the call

    weights = np.empty(n_params)
    hist = np.empty((max(cap_steps, 1), len(HISTORY_FIELDS)))
    idx = np.empty(max(cap_idx, 1), dtype=np.int64) if record else None
    summary = np.zeros(19)
    n_done = _call(
        lib.Train,
        *data.args,
        0 if w0v is None else w0v.ctypes.data,
        0 if w0v is None else n_params,
        _addressof(settings),
        0 if pbuf is None else _addressof(pbuf),
        *mech,
        s,
        weights.ctypes.data,
        n_params,
        hist.ctypes.data,
        cap_steps,
        0 if idx is None else idx.ctypes.data,
        cap_idx,
        summary.ctypes.data,
        fd,
    )
    rows = hist[:n_done]
    history = {name: np.array(rows[:, j], dtype=_HISTORY_DTYPES.get(name, np.float64)) for j, name in enumerate(HISTORY_FIELDS)}
    batches = None
    if idx is not None:
        total = int(summary[18])
        flat = idx[:total].copy()
        batches = np.split(flat, np.cumsum(history["batch"])[:-1]) if n_done else []
    applied = BatchSizePolicy._from_go(summary[10:18]) if policy is not None else None
    return TrainResult(
        weights=weights,
        history=history,
        batches=batches,
        initial_loss=float(summary[2]),
        final_loss=float(summary[3]),
        estimate=_make_estimate(summary[4:10].tolist()),
        steps=int(summary[0]),
        examples=int(summary[1]),
        policy=applied,
    )
