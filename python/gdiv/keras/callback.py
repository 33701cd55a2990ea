"""DiversityCallback: ``model.fit``'s companion to a
:class:`gdiv.keras.DiversityMonitor`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import keras
import tensorflow as tf

from .._session import WRITER_KEYS

__all__ = ["DiversityCallback"]

_LOG_KEYS = ("batch_bound", "batch", "next_batch")


class DiversityCallback(keras.callbacks.Callback):
    """Surface the monitor's step in ``fit``.

    Each batch: raises the error the monitored step caught (a
    :class:`gdiv.NonFiniteError` with ``on_nonfinite="raise"``, ...) with
    its own type; adds ``gdiv_batch_bound``, ``gdiv_batch`` and
    ``gdiv_next_batch`` to the batch's and the epoch's ``logs`` (the
    progress bar, ``History``); writes the record's scalars to TensorBoard
    under ``gdiv/`` when ``log_dir`` is given. Each epoch: saves
    ``monitor.state_dict()`` (and ``batches.state_dict()``) as JSON to
    ``state_path``. At the end: ``gdiv.plot.history`` to ``plot_path``.

    Args:
        monitor: the :class:`gdiv.keras.DiversityMonitor`.
        log_dir: a TensorBoard log directory, or None.
        plot_path: a PNG path for the history plot (matplotlib), or None.
        state_path: a JSON path for the checkpointable state, or None.
        batches: the :class:`gdiv.keras.AdaptiveBatches` feeding fit (its
            state is saved with the monitor's).
    """

    def __init__(
        self,
        monitor: Any,
        *,
        log_dir: Optional[Union[str, Path]] = None,
        plot_path: Optional[Union[str, Path]] = None,
        state_path: Optional[Union[str, Path]] = None,
        batches: Any = None,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.log_dir = None if log_dir is None else str(log_dir)
        self.plot_path = plot_path
        self.state_path = state_path
        self.batches = batches
        self._writer: Any = None
        self._seen = 0
        self._filters: Any = None

    def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
        if getattr(self.model, "train_step", None) != self.monitor._train_step:
            raise ValueError(
                "gdiv.keras.DiversityCallback: the model's train_step is not the monitor's: build the DiversityMonitor on "
                "this model (after compile) and leave it attached"
            )
        if self.log_dir is not None and self._writer is None:
            try:
                import tensorboard  # noqa: F401  (tf.summary.scalar needs it; tensorflow does not require it)
            except ImportError:
                raise ImportError("gdiv.keras.DiversityCallback(log_dir=...) writes TensorBoard scalars: pip install tensorboard") from None
            self._writer = tf.summary.create_file_writer(self.log_dir)
        self._seen = len(self.monitor.history)
        # Adaptive batches change the number of batches per pass: Keras then says "Your input ran out of data;
        # interrupting training" at each pass's end, though it only ends the epoch there. Silenced during fit.
        # One filter entry, removed again at the end (or before an error of the step is raised): no global
        # warnings state is swapped, so an exception elsewhere in fit leaves at most this entry behind.
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        self._filters = warnings.filters[0]

    def _add_logs(self, logs: Optional[Dict[str, Any]]) -> None:
        hist = self.monitor.history
        if logs is None or not hist:
            return
        rec = hist[-1]
        for k in _LOG_KEYS:
            v = rec[k]
            logs[f"gdiv_{k}"] = math.nan if v is None else float(v)

    def _unfilter(self) -> None:
        if self._filters is not None:
            try:
                warnings.filters.remove(self._filters)  # type: ignore[attr-defined]
            except ValueError:  # already gone (the user reset the filters)
                pass
            self._filters = None

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if self.monitor._error is not None:
            self._unfilter()
        self.monitor.raise_pending()
        self._add_logs(logs)
        hist = self.monitor.history
        if self._writer is not None:
            with self._writer.as_default():
                for rec in hist[self._seen :]:
                    for key in WRITER_KEYS:
                        v = rec[key]
                        if v is not None and math.isfinite(v):
                            tf.summary.scalar(f"gdiv/{key}", v, step=rec["step"])
        self._seen = len(hist)

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._add_logs(logs)
        if self.state_path is not None:
            state = {"monitor": self.monitor.state_dict(), "epoch": epoch + 1}
            if self.batches is not None:
                state["batches"] = self.batches.state_dict()
            Path(self.state_path).write_text(json.dumps(state, allow_nan=True))
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
        self._unfilter()
        self.monitor.raise_pending()
        if self.plot_path is not None and self.monitor.history:
            from .. import plot

            plot.history(self.monitor.history, self.plot_path)
