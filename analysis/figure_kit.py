"""What every psplab figure shares: the analysed store (``Analysis``), the fixed size, colours,
labels, and the small drawing helpers. ``analysis.plots`` draws the store's figures,
``analysis.plots_paper`` the paper-comparison ones, ``analysis.plots_forecast`` the backtest's.

Matplotlib is used through ``matplotlib.figure.Figure`` (the Agg canvas), not pyplot: no global
state, no display needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import capacity as cap
from analysis import groups as grp
from analysis import metrics
from analysis import scaling as scl
from analysis.query import load, load_trials

FIGSIZE = (10, 6)   # inches
DPI = 100           # → 1000 × 600 px PNGs
PNG_SIZE = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # (width, height)
MAX_PANELS = 12

PSP_ORDER = ("none", "binary", "complex", "onepower", "rotation")
PSP_LABEL = {"none": "standard", "binary": "pspBinary", "complex": "pspComplex",
             "onepower": "pspOnePower", "rotation": "pspRotation"}
PSP_COLOR = {"none": "tab:orange", "binary": "tab:blue", "complex": "tab:green",
             "onepower": "tab:red", "rotation": "tab:purple"}
SEED_BAND = "bands: min–max over seeds"
CI_NOTE = "intervals: 95% bootstrap over seeds (none with fewer than 3 seeds)"


@dataclass
class Analysis:
    """What the figures need, computed once from a store."""

    tests: pd.DataFrame                 # test rows, with config-only parameters joined on
    summary: pd.DataFrame               # metrics.summarize
    capacity: pd.DataFrame              # capacity.capacity_table (errors noted, not raised)
    draws: pd.DataFrame
    scaling: pd.DataFrame               # scaling.width_scaling
    threshold: float
    chance: float
    sweep: str
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    by: list = field(default_factory=lambda: ["psp", "units"])   # the group columns

    @property
    def config_keys(self) -> list[str]:
        """The group columns except units: what makes a line (or a series) of its own."""
        return [k for k in self.by if k != "units"]

    @property
    def seeds(self) -> str:
        """Seeds per group: "3", or "2–5" when groups differ."""
        if self.tests.empty:
            return "0"
        counts = self.tests.groupby(self.by, dropna=False)["seed"].nunique()
        lo, hi = int(counts.min()), int(counts.max())
        return str(lo) if lo == hi else f"{lo}–{hi}"

    def label(self) -> str:
        return (f"sweep: {self.sweep} · seeds: {self.seeds} · threshold: {self.threshold:.0%} "
                f"of just-trained accuracy")


def analyse(store, *, threshold: float = cap.THRESHOLD, chance: float = cap.CHANCE,
            n_boot: int = 200, seed: int = 0) -> Analysis:
    """Load the test rows of ``store`` and compute the summary, capacity and width scaling,
    grouped by every trial parameter that varies."""
    trials = load_trials(store)
    tests, by = grp.grouped(load(store, split="test"), trials)
    summary = metrics.summarize(tests, trials=trials) if len(tests) else pd.DataFrame()
    if len(tests):
        table, draws = cap.capacity_table(tests, by=by, trials=trials, threshold=threshold,
                                          chance=chance, n_boot=n_boot, seed=seed,
                                          errors="note", return_draws=True)
        scaling = scl.width_scaling(table, draws, by=by)
    else:
        table = draws = scaling = pd.DataFrame()
    sweeps = sorted(str(s) for s in tests["sweep"].dropna().unique()) if len(tests) else []
    sweep = ", ".join(sweeps) if sweeps else _store_name(store)
    return Analysis(tests, summary, table, draws, scaling, threshold, chance, sweep, trials, by)


def _store_name(store) -> str:
    path = Path(str(store))
    return path.parent.name if path.name == "results" else path.stem


def config_label(keys: dict) -> str:
    """"pspBinary", or "pspBinary, heads=multi" when more than psp defines the series."""
    psp = keys.get("psp")
    name = PSP_LABEL.get(psp, str(psp)) if psp is not None else ""
    rest = grp.label({k: v for k, v in keys.items() if k not in ("psp", "units")})
    return ", ".join(part for part in (name, rest) if part)


def config_color(keys: dict, index: int = 0):
    """The type's colour when psp alone defines the series; a colour per series otherwise."""
    if set(keys) <= {"psp", "units"}:
        return PSP_COLOR.get(keys.get("psp"))
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def figure(title: str, data: Analysis | None = None, subtitle: str = "",
           layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout=layout)
    lines = [title] + ([data.label()] if data is not None else []) + ([subtitle] if subtitle else [])
    fig.suptitle("\n".join(lines), fontsize=10)
    return fig


def note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def not_enough(fig: Figure, why: str) -> Figure:
    note(fig.add_subplot(1, 1, 1), f"not enough data: {why}")
    return fig


def corner(ax, text: str, y: float = 0.02) -> None:
    """Small grey text at the lower right of a panel: what the marks mean."""
    ax.text(0.99, y, text, ha="right", va="bottom", transform=ax.transAxes, fontsize=7,
            color="0.35")


def psps(values) -> list[str]:
    present = set(values)
    return [p for p in PSP_ORDER if p in present] + sorted(present - set(PSP_ORDER))


def grid(fig: Figure, n: int):
    cols = min(n, 3) if n <= 6 else 4
    rows = math.ceil(n / cols)
    return [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def width_colors(widths) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    widths = list(widths)
    return {w: cmap(0.1 + 0.75 * i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}


def seed_band(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min and max of y over seeds at each x."""
    return frame.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index()


def curve(ax, frame: pd.DataFrame, label: str, color) -> None:
    """Seed mean of accuracy vs step, with the min–max band over seeds."""
    band = seed_band(frame, "step", "accuracy")
    ax.plot(band["step"], 100 * band["mean"], color=color, lw=1.4, label=label)
    if band["count"].max() > 1:
        ax.fill_between(band["step"], 100 * band["min"], 100 * band["max"], color=color,
                        alpha=0.2, lw=0)


def task_marks(ax, frame: pd.DataFrame) -> None:
    """Light lines at task boundaries; a dotted red one after 10 tasks (as in the paper)."""
    spt, tasks = int(frame["steps_per_task"].iloc[0]), int(frame["tasks"].max())
    if tasks <= 20:
        for t in range(1, tasks):
            ax.axvline(t * spt, color="0.9", lw=0.6, zorder=0)
    if tasks > 10:
        ax.axvline(10 * spt, color="red", ls=":", lw=1.0)
