"""The loaded Go extension (gdiv._gdivgo) and the fork guard.

Every call into Go goes through the attributes of :data:`lib`, e.g.
``lib.Stats(...)``; they are the gopy-generated C functions themselves (no
Python wrapper in between: gopy's generated ``pybridge.py`` is not used).
Each releases the GIL while Go runs, so threads call Go in parallel.

Fork: the Go runtime does not survive ``fork()`` — in a forked child, Go
calls that allocate enough to collect garbage, start goroutines or sleep
hang forever. ``os.register_at_fork`` replaces every function of :data:`lib`
in the child by one that raises :class:`gdiv.ForkError` at once, so a forked
child fails with a clear message instead of hanging. The check costs nothing
on the normal path.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

from .errors import ForkError

try:
    from . import _gdivgo  # type: ignore[attr-defined]  # the compiled extension (built by setup.py)
except ImportError as e:  # pragma: no cover - only in a broken install
    raise ImportError(
        "gdiv: the Go extension gdiv._gdivgo is missing or cannot be loaded "
        f"({e}). Install the package with `pip install .` from the repository "
        "root (it needs Go >= 1.25); importing gdiv from the source tree without "
        "building does not work."
    ) from e

# The bridge's exports (see package pybridge); gopy names them pybridge_<Name>.
_NAMES = (
    "Stats",
    "StatsDifferential",
    "StatsFromSums",
    "MechanismValidate",
    "MechanismApply",
    "MechanismExpected",
    "MechanismMonteCarlo",
    "EstimateSums",
    "EstimateGrads",
    "EstimateNorms",
    "EstimateTwoScale",
    "EstimatorSmoothed",
    "BoundGLM",
    "BoundSparse",
    "StabilityStep",
    "ArrowView",
    "ArrowCopy",
    "PolicyValidate",
    "PolicyNext",
    "PolicyScaleLR",
    "ControllerInit",
    "ControllerSetState",
    "ControllerObserve",
    "ControllerStepSeed",
    "NumParams",
    "InitialWeights",
    "LossGrads",
    "Step",
    "Train",
    "BatchSumsFromScalars",
    "LangevinSumNoiseStd",
    "LangevinExpectedSumSqNorms",
)

FORK_MESSAGE = (
    "gdiv: this process was created by fork() from a process that had already "
    "loaded gdiv, and the Go runtime inside gdiv does not survive fork() (calls "
    "would hang). Call gdiv only in the parent, or start worker processes with "
    "the 'spawn' or 'forkserver' method: multiprocessing.get_context('spawn'), "
    "or torch DataLoader(..., multiprocessing_context='spawn'). DataLoader "
    "workers that never call gdiv are fine with fork."
)


class _Lib:
    """Namespace of the bridge functions (replaced by raisers after fork)."""

    forked = False

    def __init__(self) -> None:
        for name in _NAMES:
            setattr(self, name, getattr(_gdivgo, "pybridge_" + name))

    def __getattr__(self, name: str) -> Any:  # only for names not set above
        raise AttributeError(f"gdiv bridge has no function {name!r}")


lib: Any = _Lib()


def _forked(*args: object, **kwargs: object) -> NoReturn:
    raise ForkError(FORK_MESSAGE)


def _after_fork_in_child() -> None:
    lib.forked = True
    for name in _NAMES:
        setattr(lib, name, _forked)


def in_forked_child() -> bool:
    """Return True in a process forked after gdiv was imported (gdiv unusable)."""
    return bool(lib.forked)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
