"""Learning curves: PNGs from metrics.jsonl, validation series with markers in their metric's panel,
overlays of several runs, and clear errors for missing keys, NaN-only metrics and empty files."""

from __future__ import annotations

import json
import math

import pytest

from reasonlab.errors import UsageError
from reasonlab.runtime.plots import (
    metrics_figure,
    plot_metrics,
    plot_runs,
    read_series,
    runs_figure,
    validation_base,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path, steps=12, val_every=4, nan_at=None, reward_slope=0.05):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            rec = {"step": s, "time": 0.1 * s, "reward_mean": reward_slope * s, "kl": 0.01 * s,
                   "entropy": 1.0 - 0.02 * s, "accuracy": 0.3 + 0.02 * s, "note": "text is ignored"}
            if s == nan_at:
                rec["kl"] = float("nan")
            f.write(json.dumps(rec) + "\n")
            if s % val_every == 0:  # validation logged as its own record on the same step
                f.write(json.dumps({"step": s, "val_accuracy": 0.25 + 0.03 * s}) + "\n")
    return path


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_plot_metrics_writes_png_with_one_panel_per_metric(tmp_path):
    run = write_run(tmp_path / "grpo", nan_at=5)
    out = plot_metrics(run)
    assert out == run / "curves.png"
    assert_png(out)

    series = read_series(run)
    assert list(series) == ["reward_mean", "kl", "entropy", "accuracy", "val_accuracy"]  # no step/time/note
    assert series["val_accuracy"] == ([4, 8, 12], [pytest.approx(0.37), pytest.approx(0.49), pytest.approx(0.61)])
    assert math.isnan(series["kl"][1][4])

    fig = metrics_figure(series)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["reward_mean", "kl", "entropy", "accuracy"]
    acc = panels[3]
    lines = {ln.get_label(): ln for ln in acc.get_lines()}
    # Validation shares the accuracy panel, drawn with markers at its 3 steps; training is a plain line.
    assert lines["val_accuracy"].get_marker() == "o" and list(lines["val_accuracy"].get_xdata()) == [4, 8, 12]
    assert lines["accuracy"].get_marker() in ("None", None, "") and len(lines["accuracy"].get_xdata()) == 12
    # The NaN step is left out of the kl line and marked on the axis.
    kl_lines = panels[1].get_lines()
    assert 5 not in list(kl_lines[-1].get_xdata()) and len(kl_lines[-1].get_xdata()) == 11
    assert any(list(ln.get_xdata()) == [5] for ln in kl_lines)


def test_plot_metrics_keys_and_out(tmp_path):
    run = write_run(tmp_path / "r")
    out = plot_metrics(run, keys=["kl"], out="kl.png")
    assert out == run / "kl.png"
    assert_png(out)
    assert [ax.get_title() for ax in metrics_figure(read_series(run), ["kl"]).axes if ax.get_visible()] == ["kl"]
    # A validation series whose metric is not shown gets its own panel.
    fig = metrics_figure(read_series(run), ["val_accuracy"])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["val_accuracy"]


def test_plot_runs_overlays_one_line_per_run(tmp_path):
    runs = {name: write_run(tmp_path / name, reward_slope=slope)
            for name, slope in (("grpo", 0.05), ("rloo", 0.04), ("ppo", 0.03))}
    out = plot_runs(runs, "reward_mean", tmp_path / "cmp" / "reward.png")
    assert_png(out)
    fig = runs_figure({k: read_series(p)["reward_mean"] for k, p in runs.items()}, "reward_mean")
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["grpo", "rloo", "ppo"]
    assert list(lines[2].get_ydata()) == pytest.approx([0.03 * s for s in range(1, 13)])
    val = runs_figure({k: read_series(p)["val_accuracy"] for k, p in runs.items()}, "val_accuracy")
    assert all(ln.get_marker() == "o" for ln in val.axes[0].get_lines())


def test_clear_errors(tmp_path):
    run = write_run(tmp_path / "r")
    with pytest.raises(UsageError, match="not logged: accuracy_typo"):
        plot_metrics(run, keys=["accuracy_typo"])
    with pytest.raises(UsageError, match="never logged 'loss'"):
        plot_runs({"a": run}, "loss", tmp_path / "x.png")
    with pytest.raises(UsageError, match="no run directory"):
        plot_metrics(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()  # reading does not create the directory

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no metrics.jsonl"):
        plot_metrics(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError, match="no numeric metrics"):
        plot_metrics(tmp_path / "empty")

    nan_run = tmp_path / "nan"
    nan_run.mkdir()
    (nan_run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": float("nan"), "kl": 0.1 * s}) + "\n"
                                                   for s in range(3)))
    with pytest.raises(UsageError, match="no finite value.*loss"):
        plot_metrics(nan_run, keys=["loss"])
    with pytest.raises(UsageError, match="no finite value of 'loss'"):
        plot_runs({"n": nan_run}, "loss", tmp_path / "y.png")
    # Without explicit keys, the all-NaN metric is skipped and the rest is drawn.
    assert [ax.get_title() for ax in metrics_figure(read_series(nan_run)).axes if ax.get_visible()] == ["kl"]
    assert_png(plot_metrics(nan_run))


def test_validation_base():
    assert validation_base("val_accuracy") == "accuracy"
    assert validation_base("eval/reward_mean") == "reward_mean"
    assert validation_base("value_loss") is None and validation_base("val_") is None
