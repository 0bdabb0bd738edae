"""Learning curves drawn from a run's ``metrics.jsonl`` into PNG files.

- :func:`plot_metrics` — one small panel per metric of one run (``<run>/curves.png``). A validation
  series (``val_accuracy``, ``eval/accuracy``, ...) is drawn with markers in the panel of the
  training metric it shadows (``accuracy``), and any metric logged on only some of the steps gets
  markers too, so a few points are not mistaken for a smooth curve.
- :func:`plot_runs` — one metric of several runs overlaid (GRPO beside RLOO and PPO).

NaN and infinite values are left out of the lines and marked as red ticks on the panel's x axis,
so a run that diverged shows where it did. Figures are built with matplotlib's object-oriented API
(``matplotlib.figure.Figure``, rendered by Agg) rather than ``pyplot``: no global figure registry,
no GUI backend, nothing changed for a caller who uses pyplot itself.

Run::

    python -m reasonlab.runtime.plots runs/grpo                 # -> runs/grpo/curves.png
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reasonlab.errors import UsageError, print_error
from reasonlab.runtime.metrics import METRICS_FILE
from reasonlab.runtime.rundir import RunDir

#: Keys of metrics.jsonl that are not metrics.
NOT_METRICS = frozenset({"step", "time"})
#: Prefixes naming a held-out evaluation of the metric that follows (``val_accuracy`` -> ``accuracy``).
VALIDATION_PREFIXES = ("validation/", "validation_", "val/", "val_", "eval/", "eval_", "heldout/", "heldout_",
                       "held_out_", "test/", "test_")

Series = tuple[list[int], list[float]]  # (steps, values), sorted by step; values may be NaN/inf


def read_series(run_dir: str | Path) -> dict[str, Series]:
    """Every numeric metric of ``<run>/metrics.jsonl`` as ``{key: (steps, values)}``, in first-logged order.

    A step logged twice (a resumed run rewrote it) keeps its last value. Raises :class:`UsageError`
    when the run directory or its metrics file is missing or empty.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"no run directory at {path}")
    if not (path / METRICS_FILE).is_file():
        raise UsageError(f"{path} has no {METRICS_FILE}: nothing has been logged in this run")
    by_key: dict[str, dict[int, float]] = {}
    for rec in RunDir(path).read_jsonl(METRICS_FILE):
        if "step" not in rec:
            continue
        step = int(rec["step"])
        for k, v in rec.items():
            if k in NOT_METRICS or isinstance(v, bool) or not isinstance(v, numbers.Real):
                continue
            by_key.setdefault(k, {})[step] = float(v)
    if not by_key:
        raise UsageError(f"{path / METRICS_FILE} holds no numeric metrics")
    return {k: (sorted(d), [d[s] for s in sorted(d)]) for k, d in by_key.items()}


def validation_base(key: str) -> str | None:
    """The training metric a validation key shadows (``val_accuracy`` -> ``accuracy``), else None."""
    for p in VALIDATION_PREFIXES:
        if key.startswith(p) and len(key) > len(p):
            return key[len(p):]
    return None


def _finite(series: Series) -> Series:
    steps, values = series
    kept = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    return [s for s, _ in kept], [v for _, v in kept]


def _draw(ax: Any, series: Series, name: str, label: str | None, sparse: bool) -> None:
    """Draw one series on ``ax`` (``label``: its legend entry, None for none)."""
    steps, values = _finite(series)
    bad = [s for s, v in zip(*series) if not math.isfinite(v)]
    if bad:  # a diverged run: show where, as red ticks on the x axis
        ax.plot(bad, [0.0] * len(bad), "|", color="red", markersize=12, clip_on=False,
                transform=ax.get_xaxis_transform(), label=f"{name}: NaN/inf at {len(bad)} step(s)")
    if steps:
        style = {"marker": "o", "markersize": 4, "linewidth": 1} if sparse else {"linewidth": 1.2}
        ax.plot(steps, values, label=label, **style)


def _panels(series: Mapping[str, Series], keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Group keys into panels: a validation key joins its training metric's panel when that is shown."""
    shown = set(keys)
    panels: dict[str, list[str]] = {}
    for k in keys:
        base = validation_base(k)
        title = base if base in shown else k
        panels.setdefault(title, []).append(k)
    return list(panels.items())


def metrics_figure(series: Mapping[str, Series], keys: Sequence[str] | None = None, title: str | None = None) -> Any:
    """A matplotlib ``Figure`` with one panel per metric (validation series sharing their metric's panel).

    ``keys`` defaults to every metric with at least one finite value. Raises :class:`UsageError`
    for a requested key that is missing or has no finite value.
    """
    from matplotlib.figure import Figure

    if keys is None:
        keys = [k for k, s in series.items() if _finite(s)[0]]
        if not keys:
            raise UsageError("no metric has a finite value to plot (all NaN or inf)")
    else:
        missing = [k for k in keys if k not in series]
        if missing:
            raise UsageError(f"metric(s) not logged: {', '.join(missing)}; logged: {', '.join(series)}")
        empty = [k for k in keys if not _finite(series[k])[0]]
        if empty:
            raise UsageError(f"metric(s) with no finite value (all NaN or inf): {', '.join(empty)}")
    all_steps = {s for k in keys for s in series[k][0]}
    panels = _panels(series, keys)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, members) in zip(axes.flat, panels):
        for k in members:
            # Markers where a series is logged on a minority of the steps (validation every N steps).
            sparse = validation_base(k) is not None or len(series[k][0]) < 0.5 * len(all_steps)
            _draw(ax, series[k], k, label=k if len(members) > 1 else None, sparse=sparse)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def runs_figure(runs: Mapping[str, Series], key: str) -> Any:
    """A matplotlib ``Figure`` overlaying one metric's series from several runs, one line per run label."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    most = max((len(s[0]) for s in runs.values()), default=0)
    for label, s in runs.items():
        _draw(ax, s, label, label=label, sparse=validation_base(key) is not None or len(s[0]) < 0.5 * most)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_metrics(run_dir: str | Path, keys: Iterable[str] | None = None, out: str | Path = "curves.png") -> Path:
    """Draw the run's learning curves (one panel per metric) to ``out`` (relative to the run dir); return its path."""
    series = read_series(run_dir)
    fig = metrics_figure(series, list(keys) if keys is not None else None, title=Path(run_dir).name)
    out = Path(out)
    return _save(fig, out if out.is_absolute() else Path(run_dir) / out)


def plot_runs(runs: Mapping[str, str | Path], key: str, out: str | Path) -> Path:
    """Overlay metric ``key`` of several runs (``{label: run_dir}``) in one plot written to ``out``; return its path."""
    if not runs:
        raise UsageError("plot_runs needs at least one run")
    data: dict[str, Series] = {}
    for label, run_dir in runs.items():
        series = read_series(run_dir)
        if key not in series:
            raise UsageError(f"run {label!r} ({run_dir}) never logged {key!r}; it logged: {', '.join(series)}")
        if not _finite(series[key])[0]:
            raise UsageError(f"run {label!r} ({run_dir}) has no finite value of {key!r} (all NaN or inf)")
        data[label] = series[key]
    return _save(runs_figure(data, key), Path(out))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m reasonlab.runtime.plots", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--keys", default=None, help="comma-separated metrics to draw (default: all)")
    p.add_argument("--out", default="curves.png", help="output PNG, relative to the run directory")
    a = p.parse_args(argv)
    try:
        path = plot_metrics(a.run_dir, a.keys.split(",") if a.keys else None, a.out)
    except UsageError as e:
        print_error(e)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
