"""Curves of a training run, drawn from its `metrics.jsonl` into a PNG.

    vqgan-lc plot runs/tok                      # every logged value -> runs/tok/metrics.png
    vqgan-lc plot runs/gen --keys loss,lr --out curves.png

Works for every family, on a finished run or one still training (the file is appended to
line by line). Drawn with matplotlib's Agg canvas directly, so no display and no global
pyplot state are involved (safe inside notebooks and servers).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..files import atomic_path
from .loop import METRICS_NAME, read_metric_lines

# Bookkeeping columns: the x axis and the clock, not curves worth a panel by default.
NOT_CURVES = ("step", "wall_time")


def metrics_path(run: str | os.PathLike) -> Path:
    """A run folder's metrics.jsonl, or the file itself when given one. A folder that holds one
    run in a sub-folder (`vqgan-lc classify --out`: OUT/run) is read through it."""
    path = Path(run)
    if path.is_dir() and not (path / METRICS_NAME).is_file():
        inside = sorted(sub for sub in path.iterdir() if (sub / METRICS_NAME).is_file())
        if len(inside) > 1:
            raise ValueError(f"{path} holds several runs ({', '.join(sub.name for sub in inside)}); plot one of them, "
                             f"e.g. `vqgan-lc plot {inside[0]}`")
        path = inside[0] if inside else path
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a run folder written by `vqgan-lc train` or `train-gen` "
                                f"(runs write {METRICS_NAME} as they log)")
    return path


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The logged records of a run, one dict per logged step, in step order."""
    path = metrics_path(run)
    records = read_metric_lines(path)
    if not records:
        raise ValueError(f"{path} holds no logged step yet; plot again after the run's first log_every steps")
    return sorted(records, key=lambda r: r["step"])


def curve_keys(records: list[dict], keys: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The values to draw. Default: every numeric column but step and wall_time. A requested key
    also selects its group: `grad_norm` draws grad_norm/generator, grad_norm/discriminator, ..."""
    numeric = []
    for record in records:
        for k, v in record.items():
            if k not in numeric and k not in NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool):
                numeric.append(k)
    if not keys:
        return numeric
    chosen = []
    for key in keys:
        matches = [k for k in numeric if k == key or k.startswith(key + "/")]
        if not matches:
            raise ValueError(f"no logged value {key!r} in this run; logged: {', '.join(numeric)}")
        chosen += [k for k in matches if k not in chosen]
    return chosen


def plot_metrics(run: str | os.PathLike, out: str | os.PathLike | None = None,
                 keys: list[str] | tuple[str, ...] | None = None, *, columns: int = 3) -> Path:
    """Draw one panel per value against the step; returns the PNG path (default RUN/metrics.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(run)
    names = curve_keys(records, keys)
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    out = Path(out) if out is not None else metrics_path(run).parent / "metrics.png"
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write --out {out}: {blocking} is a file, not a folder; choose another --out")
    cols = min(columns, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        # A value logged only at some steps (usage windows) or null (non-finite) leaves a gap.
        points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return out
