"""gdiv.keras — Keras 3 (TensorFlow backend) integration: per-example
gradient norms from the layers' inputs and output gradients inside one
``GradientTape`` step, and the same Go controller as ``gdiv.torch``.

* :class:`DiversityMonitor` — under ``model.fit`` (it installs a monitored
  ``train_step``) or in a custom ``GradientTape`` loop
  (:meth:`DiversityMonitor.gradient`): the unbiased, smoothed batch-size
  bound, the policy's next batch size and the LR rule, one host call per
  step with four numbers.
* :class:`DiversityCallback` — ``fit``'s companion: errors from the step,
  TensorBoard scalars, the history PNG, the monitor's state per epoch.
* :class:`AdaptiveBatches` — ``.dataset()``: a ``tf.data.Dataset`` whose batches follow the
  monitor's batch size (with or without replacement, seeded).
* rules: :func:`register_norm_rule` (Dense, Conv1D/2D, Embedding,
  LayerNormalization built in; a ``tf.vectorized_map`` fallback for other
  layers; train-mode BatchNormalization refused).

Needs TensorFlow (``pip install 'gdiv[tensorflow]'``) and Keras 3 on the
TensorFlow backend (``KERAS_BACKEND=tensorflow``, Keras's default).
"""

from __future__ import annotations

try:
    import tensorflow as _tf  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gdiv.keras needs TensorFlow: pip install 'gdiv[tensorflow]' (or pip install tensorflow-cpu); gdiv and gdiv.torch work without it"
    ) from e
import keras as _keras

if _keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    raise ImportError(
        f"gdiv.keras supports Keras on the TensorFlow backend; this process runs Keras on {_keras.backend.backend()!r}: "
        "set KERAS_BACKEND=tensorflow before importing keras"
    )

from .callback import DiversityCallback  # noqa: E402
from .data import AdaptiveBatches  # noqa: E402
from .errors import UnsupportedLayerError  # noqa: E402
from .monitor import DiversityMonitor  # noqa: E402
from .rules import find_norm_rule, register_norm_rule, registered_norm_rules  # noqa: E402

__all__ = [
    "DiversityMonitor",
    "DiversityCallback",
    "AdaptiveBatches",
    "register_norm_rule",
    "find_norm_rule",
    "registered_norm_rules",
    "UnsupportedLayerError",
]
