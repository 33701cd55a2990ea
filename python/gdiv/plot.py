"""Plots of training histories (matplotlib; an optional dependency).

:func:`history` draws what a :class:`gdiv.torch.DiversityMonitor` (its
``history`` list) or :func:`gdiv.reference.train` (its ``history`` dict of
arrays) recorded, against the number of examples processed:

* the loss, when the history has one (the monitor's ``loss`` if you passed
  ``step(loss=...)``; the reference trainer's full loss ``loss``), on a log
  scale when it is positive. A history with an ``evaluated`` column (the
  reference trainer's, which carries the last full loss forward between
  evaluations) has its loss drawn at the evaluated steps only, not as flat
  segments through the others;
* the smoothed batch-size bound estimate B̂_S and the batch size actually
  used, on a log scale. Steps with no signal (Ĝ ≤ 0, B̂_S = +Inf) have no
  point on the B̂_S line.

Several runs go in one figure when ``history`` is a mapping from a label to
a history. matplotlib is imported when a function is called; figures are
drawn with its object-oriented API (no pyplot, no display, the user's backend
is left alone).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["history"]

History = Union[Sequence[Mapping[str, Any]], Mapping[str, Sequence[Any]]]


def _columns(h: History) -> Dict[str, List[Any]]:
    """A history as columns: a list of records or a mapping of sequences."""
    if isinstance(h, Mapping):
        return {k: list(v) for k, v in h.items()}
    cols: Dict[str, List[Any]] = {}
    keys: List[str] = []
    for r in h:
        for k in r:
            if k not in cols:
                cols[k] = []
                keys.append(k)
    for r in h:
        for k in keys:
            cols[k].append(r.get(k))
    return cols


def _is_single(h: Any) -> bool:
    if isinstance(h, Mapping):
        return "examples" in h or "step" in h
    return True


def _finite(xs: Sequence[Any], ys: Sequence[Any]) -> tuple:
    px, py = [], []
    for x, y in zip(xs, ys):
        if y is None or x is None:
            continue
        y = float(y)
        if math.isfinite(y):
            px.append(float(x))
            py.append(y)
    return px, py


def _evaluated_loss(cols: Dict[str, List[Any]]) -> List[Any]:
    """The loss column, None where the history says the step was not
    evaluated (its loss is a carried-forward copy)."""
    loss = cols.get("loss", [])
    ev = cols.get("evaluated")
    if ev is None:
        return loss
    return [v if bool(e) else None for v, e in zip(loss, ev)]


def history(history: Union[History, Mapping[str, History]], path: Union[str, Path], *, title: Optional[str] = None) -> Path:
    """Write a PNG of one or several training histories.

    Args:
        history: a history — ``monitor.history`` (a list of records) or
            ``reference.train(...).history`` (a dict of arrays) — or a
            mapping {label: history} to overlay several runs.
        path: the PNG file to write (its directory is created).
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: a history without ``examples`` or ``step``, or empty.

    Example:
        >>> gdiv.plot.history(monitor.history, "out/run.png", title="MLP on digits")
        >>> gdiv.plot.history({"fixed 16": h1, "adaptive": h2}, "out/compare.png")
    """
    try:  # the object-oriented API: no pyplot, no change of the user's backend
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gdiv.plot needs matplotlib: pip install matplotlib") from e

    runs: Dict[str, Dict[str, List[Any]]] = {}
    if _is_single(history):
        runs[""] = _columns(history)  # type: ignore[arg-type]
    else:
        for label, h in history.items():  # type: ignore[union-attr]
            runs[str(label)] = _columns(h)
    for label, cols in runs.items():
        name = f"history {label!r}" if label else "history"
        if not cols or not any(len(v) for v in cols.values()):
            raise ValueError(f"gdiv.plot.history: {name} is empty")
        if "examples" not in cols and "step" not in cols:
            raise ValueError(f"gdiv.plot.history: {name} has neither 'examples' nor 'step'")

    def xs(cols: Dict[str, List[Any]]) -> List[Any]:
        return cols["examples"] if "examples" in cols else cols["step"]

    xlabel = "examples processed" if all("examples" in c for c in runs.values()) else "step"
    has_loss = any(any(v is not None for v in c.get("loss", [])) for c in runs.values())
    panels = 2 if has_loss else 1
    fig = Figure(figsize=(7.5, 3.2 * panels + 0.6))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if has_loss:
        ax = axes[0]
        positive = True
        for j, (label, cols) in enumerate(runs.items()):
            px, py = _finite(xs(cols), _evaluated_loss(cols))
            if px:
                ax.plot(px, py, color=colors[j % len(colors)], lw=1.2, label=label or "loss")
                positive = positive and min(py) > 0
        if positive:
            ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for j, (label, cols) in enumerate(runs.items()):
        c = colors[j % len(colors)]
        tag = f"{label}: " if label else ""
        px, py = _finite(xs(cols), cols.get("batch_bound", []))
        if px:
            ax.plot(px, py, color=c, lw=1.0, ls="--", label=f"{tag}batch bound B̂_S")
        px, py = _finite(xs(cols), cols.get("batch", []))
        if px:
            ax.step(px, py, where="post", color=c, lw=1.5, label=f"{tag}batch size")
    ax.set_yscale("log")
    ax.set_ylabel("examples per batch")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, format="png")
    return out
