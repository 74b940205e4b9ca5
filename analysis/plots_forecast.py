"""Figures of a backtest: task 0's forecast against what was measured, and every held-out
forecast against its measurement. Drawn like ``analysis.plots`` (fixed size, Agg canvas)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import groups as grp
from analysis import figure_kit as kit
from analysis import forecasting as fc

MAX_PANELS = 12


def _title(fig: Figure, title: str, result) -> None:
    lo, hi = int(result.summary["n_seeds"].min()), int(result.summary["n_seeds"].max())
    seeds = str(lo) if lo == hi else f"{lo}–{hi}"
    fig.suptitle(f"{title}\nfit on the first {result.fit_tasks} tasks · seeds per group: {seeds}"
                 f"\n{result.level:.0%} prediction intervals: {fc.METHOD} (none under 3 seeds)",
                 fontsize=10)


def fig_task0(result) -> Figure:
    """Task 0's measured accuracy (seed mean, every evaluation) with the forecast seed mean:
    solid over the tasks the model was fitted on, dashed where it extrapolates, the shaded band
    its prediction interval; the dotted line marks the end of the fit window."""
    fig = Figure(figsize=kit.FIGSIZE, dpi=kit.DPI, layout="constrained")
    _title(fig, "Backtest: task-0 accuracy forecast from the first tasks vs measured", result)
    curves = result.curves
    labels = [(keys, frame) for keys, frame in grp.groups(curves, result.by)][:MAX_PANELS]
    axes = kit.grid(fig, len(labels))
    for ax, (keys, frame) in zip(axes, labels):
        color = kit.PSP_COLOR.get(keys.get("psp"), "tab:gray")
        measured = frame.dropna(subset=["measured"])
        ax.plot(measured["tasks_trained"], 100 * measured["measured"], ".", ms=2, color="0.3",
                label="measured (seed mean)")
        forecast = frame.dropna(subset=["pred"])
        inside = forecast[forecast["fitted"]]
        beyond = forecast[forecast["tasks_trained"] >= result.fit_tasks]
        ax.plot(inside["tasks_trained"], 100 * inside["pred"], "-", color=color, lw=1.5,
                label="model, fit window")
        ax.plot(beyond["tasks_trained"], 100 * beyond["pred"], "--", color=color, lw=1.5,
                label="forecast")
        if forecast["lo"].notna().any():
            ax.fill_between(forecast["tasks_trained"], 100 * forecast["lo"],
                            100 * forecast["hi"], color=color, alpha=0.2, lw=0)
        ax.axvline(result.fit_tasks, color="0.5", ls=":", lw=1)
        ax.set_title(grp.label(keys), fontsize=8)
        ax.set_xlabel("tasks trained", fontsize=8)
        ax.set_ylabel("task-0 accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    if len(axes):
        axes[0].legend(fontsize=7, loc="lower left")
    return fig


def fig_scatter(result) -> Figure:
    """Every held-out forecast of a single trial against its measurement, a colour per group;
    the diagonal is a perfect forecast. Open markers: tasks trained after the fit window
    (their just-trained accuracy was forecast too)."""
    fig = Figure(figsize=kit.FIGSIZE, dpi=kit.DPI, layout="constrained")
    _title(fig, "Backtest: forecast vs measured accuracy of every held-out entry R[i, j]",
           result)
    ax = fig.add_subplot(1, 1, 1)
    points = result.points
    groups = list(grp.groups(points, result.by))
    colors = kit.width_colors(range(len(groups)))
    for i, (keys, frame) in enumerate(groups):
        seen = frame["eval_task"] < result.fit_tasks
        ax.scatter(100 * frame.loc[seen, "measured"], 100 * frame.loc[seen, "pred"], s=4,
                   color=colors[i], alpha=0.5, lw=0, label=grp.label(keys))
        ax.scatter(100 * frame.loc[~seen, "measured"], 100 * frame.loc[~seen, "pred"], s=6,
                   facecolors="none", edgecolors=colors[i], alpha=0.4, lw=0.5)
    low = float(min(points["measured"].min(), points["pred"].min())) * 100 - 2
    ax.plot([low, 100], [low, 100], color="0.4", lw=0.8)
    ax.set_xlabel("measured accuracy (%)")
    ax.set_ylabel("forecast accuracy (%)")
    if len(groups) <= 12:
        ax.legend(fontsize=7, loc="upper left", markerscale=3)
    return fig


def write_backtest(result, out_dir) -> list[Path]:
    """backtest_task0.png, backtest_scatter.png and the tables (CSV) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("backtest_task0", fig_task0), ("backtest_scatter", fig_scatter)):
        path = out / f"{name}.png"
        draw(result).savefig(path, dpi=kit.DPI, metadata={"Software": None})
        written.append(path)
    for name, frame in (("backtest", result.summary), ("backtest_points", result.points),
                        ("backtest_means", result.means)):
        path = out / f"{name}.csv"
        pd.DataFrame(frame).to_csv(path, index=False)
        written.append(path)
    return written


def coverage_by_n(points: pd.DataFrame, bins=(0, 5, 10, 20, 30, 40, np.inf)) -> pd.DataFrame:
    """Interval coverage and mean |error| of held-out points by how far ahead they were
    forecast (n = tasks stored after the task), for the report."""
    cut = pd.cut(points["n"], bins, right=False)
    return points.groupby(cut, observed=True).agg(
        coverage=("covered", "mean"), mae=("pred", lambda p: float(
            (100 * (p - points.loc[p.index, "measured"])).abs().mean())),
        points=("pred", "size")).reset_index()
