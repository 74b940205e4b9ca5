"""Figures of a store: each function draws one figure; ``write_all`` writes them all (PNG + SVG)
with the tables behind them and an index (index.md, index.html) that shows them.

Every figure is 1000×600 px (FIGSIZE at DPI) and carries, under its title, the sweep, the number
of seeds and the capacity threshold. A figure whose data are missing (one width only, no
retention points, …) is still written, with a "not enough data" note, and a figure that fails
to draw is replaced by one that says why: one bad panel never costs the others.

Matplotlib is used through ``matplotlib.figure.Figure`` (the Agg canvas), not pyplot: no global
state, no display needed.
"""
from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import capacity as cap
from analysis import metrics
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
# PSP paper, Figure 3 (right): average accuracy (%) on the last 10 of 50 permuted-MNIST tasks.
PAPER_TABLE = (("EWC", None, 97.0), ("SI", None, 97.2), ("Standard", "none", 61.8),
               ("Binary", "binary", 97.6), ("Complex", "complex", 97.4),
               ("OnePower", "onepower", 97.2))


# ---- the data every figure draws from ----------------------------------------------------------
@dataclass
class Analysis:
    """What the figures need, computed once from a store."""

    tests: pd.DataFrame                 # test rows
    summary: pd.DataFrame               # metrics.summarize
    capacity: pd.DataFrame              # capacity.capacity_table (errors noted, not raised)
    draws: pd.DataFrame
    scaling: pd.DataFrame               # capacity.width_scaling
    threshold: float
    chance: float
    sweep: str
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def seeds(self) -> str:
        """Seeds per (psp, units) group: "3", or "2–5" when groups differ."""
        if self.tests.empty:
            return "0"
        counts = self.tests.groupby(["psp", "units"])["seed"].nunique()
        lo, hi = int(counts.min()), int(counts.max())
        return str(lo) if lo == hi else f"{lo}–{hi}"

    def label(self) -> str:
        return (f"sweep: {self.sweep} · seeds: {self.seeds} · threshold: {self.threshold:.0%} "
                f"of just-trained accuracy")


TEST_COLUMNS = ["sweep", "trial_id", "psp", "units", "depth", "tasks", "steps_per_task", "seed",
                "dataset", "stream", "step", "split", "eval_task", "accuracy"]


def analyse(store, *, threshold: float = cap.THRESHOLD, chance: float = cap.CHANCE,
            n_boot: int = 200, seed: int = 0) -> Analysis:
    """Load the test rows of ``store`` and compute the summary, capacity and width scaling."""
    tests = load(store, split="test", columns=TEST_COLUMNS)
    trials = load_trials(store)
    summary = metrics.summarize(tests) if len(tests) else pd.DataFrame()
    if len(tests):
        table, draws = cap.capacity_table(tests, threshold=threshold, chance=chance,
                                          n_boot=n_boot, seed=seed, errors="note",
                                          return_draws=True)
        scaling = cap.width_scaling(table, draws)
    else:
        table = draws = scaling = pd.DataFrame()
    sweeps = sorted(str(s) for s in tests["sweep"].dropna().unique()) if len(tests) else []
    sweep = ", ".join(sweeps) if sweeps else _store_name(store)
    return Analysis(tests, summary, table, draws, scaling, threshold, chance, sweep, trials)


def _store_name(store) -> str:
    path = Path(str(store))
    return path.parent.name if path.name == "results" else path.stem


# ---- figure plumbing -------------------------------------------------------------------------
def _figure(title: str, data: Analysis, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout=layout)
    fig.suptitle(f"{title}\n{data.label()}", fontsize=11)
    return fig


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _not_enough(fig: Figure, why: str) -> Figure:
    _note(fig.add_subplot(1, 1, 1), f"not enough data: {why}")
    return fig


def _psps(values) -> list[str]:
    present = set(values)
    return [p for p in PSP_ORDER if p in present] + sorted(present - set(PSP_ORDER))


def _grid(fig: Figure, n: int):
    cols = min(n, 3) if n <= 6 else 4
    rows = math.ceil(n / cols)
    return [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _seed_band(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min and max of y over seeds at each x."""
    return frame.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index()


# ---- the figures -----------------------------------------------------------------------------
def fig_task0_by_width(data: Analysis) -> Figure:
    """Task-0 test accuracy vs training step, a panel per width, a line per type (PSP Figure 2)."""
    fig = _figure("Task-0 accuracy vs training step, by width (cf. PSP Figure 2)", data)
    task0 = data.tests[data.tests["eval_task"] == 0] if len(data.tests) else data.tests
    if task0.empty:
        return _not_enough(fig, "no task-0 test measurements")
    widths = sorted(task0["units"].unique())[:MAX_PANELS]
    axes = _grid(fig, len(widths))
    for ax, units in zip(axes, widths):
        mine = task0[task0["units"] == units]
        for psp in _psps(mine["psp"]):
            _curve(ax, mine[mine["psp"] == psp], psp)
        _task_marks(ax, mine)
        ax.set_title(f"{units} units", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("task-0 accuracy (%)")
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=8, loc="lower left")
    if len(widths) == 1:
        axes[0].text(0.99, 0.02, "one width only: not enough data for a comparison across widths",
                     ha="right", va="bottom", transform=axes[0].transAxes, fontsize=8, color="0.35")
    return fig


def _curve(ax, frame: pd.DataFrame, psp: str) -> None:
    band = _seed_band(frame, "step", "accuracy")
    color = PSP_COLOR.get(psp)
    ax.plot(band["step"], 100 * band["mean"], color=color, lw=1.4, label=PSP_LABEL.get(psp, psp))
    if band["count"].max() > 1:
        ax.fill_between(band["step"], 100 * band["min"], 100 * band["max"], color=color, alpha=0.2,
                        lw=0)


def _task_marks(ax, frame: pd.DataFrame) -> None:
    """Light lines at task boundaries; a dotted red one after 10 tasks (as in the paper)."""
    spt, tasks = int(frame["steps_per_task"].iloc[0]), int(frame["tasks"].max())
    if tasks <= 20:
        for t in range(1, tasks):
            ax.axvline(t * spt, color="0.9", lw=0.6, zorder=0)
    if tasks > 10:
        ax.axvline(10 * spt, color="red", ls=":", lw=1.0)


def fig_task0_by_type(data: Analysis, units: int | None = None) -> Figure:
    """Task-0 accuracy vs step, a line per superposition type at one width (PSP Figure 3 left):
    256 units as in the paper when present, else the widest."""
    task0 = data.tests[data.tests["eval_task"] == 0] if len(data.tests) else data.tests
    if units is None and len(task0):
        widths = sorted(task0["units"].unique())
        units = 256 if 256 in widths else widths[-1]
    fig = _figure(f"Task-0 accuracy by superposition type at {units} units "
                  f"(cf. PSP Figure 3, left)", data)
    mine = task0[task0["units"] == units] if len(task0) else task0
    if mine.empty:
        return _not_enough(fig, "no task-0 test measurements")
    ax = fig.add_subplot(1, 1, 1)
    for psp in _psps(mine["psp"]):
        _curve(ax, mine[mine["psp"] == psp], psp)
    _task_marks(ax, mine)
    ax.set_xlabel("step")
    ax.set_ylabel("task-0 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=9, loc="lower left")
    if mine["psp"].nunique() == 1:
        ax.text(0.99, 0.02, "one superposition type only: not enough data for a comparison",
                ha="right", va="bottom", transform=ax.transAxes, fontsize=8, color="0.35")
    return fig


def fig_accuracy_matrix(data: Analysis) -> Figure:
    """R[i, j] as a heatmap per (psp, units), averaged over seeds; blank where not evaluated."""
    # Fixed margins: constrained layout over a dozen panels and a colorbar costs seconds.
    fig = _figure("Accuracy matrix R[i, j]: accuracy on task j after training task i "
                  "(mean over seeds)", data, layout=None)
    if data.tests.empty:
        return _not_enough(fig, "no test measurements")
    groups = []
    for (psp, units), frame in data.tests.groupby(["psp", "units"], sort=True):
        per_trial = metrics.accuracy_matrix(frame)
        mean = (per_trial.groupby(level="trained").mean() if per_trial.index.nlevels > 1
                else per_trial)
        groups.append((psp, units, mean))
    order = _psps([g[0] for g in groups])
    groups.sort(key=lambda g: (order.index(g[0]), g[1]))
    shown = groups[:MAX_PANELS]
    axes = _grid(fig, len(shown))
    fig.subplots_adjust(left=0.06, right=0.89, top=0.86, bottom=0.08, wspace=0.35, hspace=0.5)
    image = None
    for ax, (psp, units, R) in zip(axes, shown):
        values = np.ma.masked_invalid(R.to_numpy(dtype=float))
        image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", origin="upper",
                          interpolation="nearest", aspect="auto")
        ax.set_title(f"{PSP_LABEL.get(psp, psp)}, {units} units", fontsize=9)
        ax.set_xlabel("task j", fontsize=8)
        ax.set_ylabel("after training task i", fontsize=8)
        ax.tick_params(labelsize=7)
        if R.shape[0] <= 6 and len(shown) <= 6:
            for (i, j), v in np.ndenumerate(R.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
    if image is not None:
        fig.colorbar(image, cax=fig.add_axes((0.91, 0.15, 0.015, 0.65)), label="accuracy")
    if len(groups) > len(shown):
        axes[-1].text(1.0, -0.25, f"first {len(shown)} of {len(groups)} groups",
                      transform=axes[-1].transAxes, ha="right", fontsize=8)
    return fig


def fig_retention_fit(data: Analysis) -> Figure:
    """Retention points z = (a − c)/(A − c) vs tasks stored after, with the fitted
    z(n) = (1 + n/κ)^(−1/2) per width and the threshold z*; a panel per type."""
    fig = _figure("Retention of earlier tasks vs tasks stored after them, with the fitted "
                  "model z(n) = (1 + n/κ)^(−1/2)", data)
    if data.tests.empty:
        return _not_enough(fig, "no test measurements")
    psps = _psps(data.tests["psp"].unique())[:6]
    axes = _grid(fig, len(psps))
    table = data.capacity.set_index(["psp", "units"]) if len(data.capacity) else None
    for ax, psp in zip(axes, psps):
        frame = data.tests[data.tests["psp"] == psp]
        widths = sorted(frame["units"].unique())
        colors = _width_colors(widths)
        drawn = False
        for units in widths:
            points = cap.retention_points(frame[frame["units"] == units], data.chance)
            known = table is not None and (psp, units) in table.index
            row = table.loc[(psp, units)] if known else None
            if points.empty or row is None or row["status"] == "insufficient":
                continue
            fitted = cap.fit_retention(points, data.chance)
            later = fitted["points"][fitted["points"]["n"] > 0]
            ax.scatter(later["n"], later["z"], s=6, alpha=0.35, color=colors[units], lw=0)
            n_max = max(float(later["n"].max()), 1.0)
            # Extend the curve to its threshold crossing when that is not far beyond the data.
            reach = row["K_star"] * 1.1 if np.isfinite(row["K_star"]) else 0.0
            grid = np.linspace(0, min(max(n_max * 1.5, reach), n_max * 5), 200)
            ax.plot(grid, cap.retention_model(grid, row["kappa"]), color=colors[units], lw=1.5,
                    label=f"{units} units: κ={row['kappa']:.3g}, K*={_fmt_k(row)}")
            ax.axhline(row["z_star"], color=colors[units], ls=":", lw=0.8)
            drawn = True
        ax.set_title(PSP_LABEL.get(psp, psp), fontsize=10)
        ax.set_xlabel("tasks stored after the task (n)")
        ax.set_ylabel("z = (a − chance) / (A − chance)")
        if drawn:
            low = min(ax.get_ylim()[0], float(table.loc[psp]["z_star"].min()) - 0.01)
            ax.set_ylim(low, ax.get_ylim()[1])  # keep the threshold lines in view
            ax.legend(fontsize=7, loc="lower left")
            ax.text(0.99, 0.98, f"dotted: threshold z* ({data.threshold:.0%} of A)",
                    ha="right", va="top", transform=ax.transAxes, fontsize=7, color="0.35")
        else:
            _note(ax, "not enough data: fewer than 3 retention points")
    return fig


def _width_colors(widths) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    return {w: cmap(0.1 + 0.75 * i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}


def _fmt_k(row) -> str:
    k = row["K_star"]
    if not np.isfinite(k):
        return "∞"
    return f"{k:.3g}" + (" (extrap.)" if row["status"] == "extrapolated" else "")


def fig_capacity_scaling(data: Analysis) -> Figure:
    """K* vs width per type on log-log axes: bootstrap intervals, hollow markers where K* is
    extrapolated, and the power-law fit K* = A·units^α with its interval."""
    fig = _figure("Capacity K* (tasks storable before falling below threshold) vs width", data)
    table = data.capacity
    if table.empty or not np.isfinite(table["K_star"].astype(float)).any():
        return _not_enough(fig, "no (psp, units) group with a finite K*")
    ax = fig.add_subplot(1, 1, 1)
    scaling = data.scaling.set_index("psp") if len(data.scaling) else pd.DataFrame()
    for psp in _psps(table["psp"].unique()):
        rows = table[(table["psp"] == psp) & np.isfinite(table["K_star"].astype(float))
                     & (table["K_star"] > 0)].sort_values("units")
        if rows.empty:
            continue
        color = PSP_COLOR.get(psp)
        units = rows["units"].to_numpy(dtype=float)
        k = rows["K_star"].to_numpy(dtype=float)
        lo = np.clip(k - rows["K_lo"].to_numpy(dtype=float), 0, None)
        hi = np.clip(rows["K_hi"].to_numpy(dtype=float) - k, 0, None)
        hi = np.where(np.isfinite(hi), hi, 0)
        ax.errorbar(units, k, yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], fmt="none",
                    ecolor=color, elinewidth=1, capsize=3)
        extrap = rows["extrapolated"].to_numpy(dtype=bool)
        ax.scatter(units[~extrap], k[~extrap], color=color, s=30, zorder=3)
        ax.scatter(units[extrap], k[extrap], facecolors="none", edgecolors=color, s=30, zorder=3)
        label = PSP_LABEL.get(psp, psp)
        if psp in scaling.index and np.isfinite(scaling.loc[psp, "alpha"]):
            s = scaling.loc[psp]
            grid = np.geomspace(units.min(), units.max(), 50)
            ax.plot(grid, s["prefactor"] * grid ** s["alpha"], color=color, lw=1.2)
            if np.isfinite(s["alpha_lo"]):
                # The band pivots at the geometric mean width, where the fit is best determined.
                pivot = float(np.exp(np.mean(np.log(units))))
                k_pivot = s["prefactor"] * pivot ** s["alpha"]
                a = k_pivot * (grid / pivot) ** s["alpha_lo"]
                b = k_pivot * (grid / pivot) ** s["alpha_hi"]
                ax.fill_between(grid, np.minimum(a, b), np.maximum(a, b), color=color, alpha=0.15,
                                lw=0)
                label += f": α = {s['alpha']:.2f} [{s['alpha_lo']:.2f}, {s['alpha_hi']:.2f}]"
            else:
                label += f": α = {s['alpha']:.2f} (no interval)"
        else:
            label += " (one width: no fit)"
        ax.plot([], [], color=color, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("units per hidden layer")
    ax.set_ylabel("K* (tasks)")
    ax.legend(fontsize=8, loc="upper left")
    ax.text(0.99, 0.02, "hollow: extrapolated beyond the tasks run; bars: bootstrap 95% interval",
            ha="right", va="bottom", transform=ax.transAxes, fontsize=8, color="0.35")
    never = table[~np.isfinite(table["K_star"].astype(float)) & (table["status"] == "never")]
    if len(never):
        names = ", ".join(f"{PSP_LABEL.get(p, p)}@{u}"
                          for p, u in zip(never["psp"], never["units"]))
        ax.text(0.99, 0.08, f"no decay measured (K* = ∞): {names}", ha="right", va="bottom",
                transform=ax.transAxes, fontsize=8, color="0.35")
    return fig


def paper_table(data: Analysis) -> pd.DataFrame:
    """The paper's table (average accuracy on the last 10 of 50 tasks) beside ours: our
    ACC over the last min(10, T) tasks at the widest width of each type, mean over seeds with a
    t interval."""
    ours = pd.DataFrame()
    if len(data.summary):
        widest = data.summary[data.summary["units"] == data.summary.groupby("psp")["units"]
                              .transform("max")]
        ours = metrics.aggregate(widest, by=["psp", "units"], metrics=["acc_last10"])
        ours = ours.set_index("psp")
    tasks = int(data.summary["tasks"].max()) if len(data.summary) else None
    rows = []
    known = {psp for _, psp, _ in PAPER_TABLE if psp}
    entries = list(PAPER_TABLE) + [(PSP_LABEL.get(p, p), p, None) for p in
                                   (ours.index if len(ours) else []) if p not in known]
    for method, psp, paper in entries:
        row = {"method": method, "psp": psp, "paper_pct": paper, "ours_pct": np.nan,
               "ours_lo_pct": np.nan, "ours_hi_pct": np.nan, "units": np.nan, "seeds": 0,
               "tasks": tasks}
        if psp is not None and psp in ours.index:
            r = ours.loc[psp]
            row.update(ours_pct=100 * r["acc_last10_mean"], ours_lo_pct=100 * r["acc_last10_lo"],
                       ours_hi_pct=100 * r["acc_last10_hi"], units=r["units"],
                       seeds=int(r["acc_last10_n"]))
        rows.append(row)
    return pd.DataFrame(rows)


def fig_paper_table(data: Analysis) -> Figure:
    """The paper's table beside ours, drawn as a table."""
    fig = _figure("Average accuracy on the last 10 tasks: PSP paper (50 tasks, permuted MNIST) "
                  "vs this sweep", data)
    table = paper_table(data)
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    tasks = table["tasks"].dropna()
    k = min(10, int(tasks.iloc[0])) if len(tasks) else 10
    n_tasks = int(tasks.iloc[0]) if len(tasks) else "?"
    header = ["method", "paper (%)", "ours (%)", "ours: 95% interval", "ours: units", "ours: seeds"]
    cells = []
    for r in table.itertuples():
        ours = "—" if not np.isfinite(r.ours_pct) else f"{r.ours_pct:.1f}"
        interval = ("—" if not np.isfinite(r.ours_lo_pct)
                    else f"[{r.ours_lo_pct:.1f}, {r.ours_hi_pct:.1f}]")
        paper = "—" if r.paper_pct is None or pd.isna(r.paper_pct) else f"{r.paper_pct:.1f}"
        units = "—" if pd.isna(r.units) else str(int(r.units))
        cells.append([r.method, paper, ours, interval, units, str(r.seeds) if r.seeds else "—"])
    drawn = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(10)
    drawn.scale(1.0, 1.6)
    ax.text(0.5, 0.02, f"paper: last 10 of 50 tasks, EWC and SI from Zenke et al.; ours: last "
            f"{k} of {n_tasks} tasks at the widest width of each type, mean over seeds "
            f"(t interval, needs ≥ 2 seeds); —: not run",
            ha="center", va="bottom", transform=ax.transAxes, fontsize=8, color="0.35")
    return fig


FIGURES: tuple[tuple[str, str, Callable[[Analysis], Figure]], ...] = (
    ("task0_by_width", "Task-0 accuracy vs step by width (Figure 2)", fig_task0_by_width),
    ("task0_by_type", "Task-0 accuracy vs step by superposition type (Figure 3, left)",
     fig_task0_by_type),
    ("accuracy_matrix", "Accuracy matrix heatmaps", fig_accuracy_matrix),
    ("retention_fit", "Retention curves with the fitted model", fig_retention_fit),
    ("capacity_scaling", "Capacity K* vs width (log-log) with the power-law fit",
     fig_capacity_scaling),
    ("paper_table", "Average accuracy on the last 10 tasks: paper vs ours", fig_paper_table),
)


# ---- writing ---------------------------------------------------------------------------------
def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """``name``.png and ``name``.svg, fixed size (no tight bbox: the PNG is exactly PNG_SIZE)."""
    import matplotlib

    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=DPI, metadata={"Software": None})
    # Text as SVG text, not glyph outlines: 5× faster to write, smaller, and searchable.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(paths[1], metadata={"Date": None})
    return paths


def _failed(data: Analysis, title: str, exc: BaseException) -> Figure:
    fig = _figure(title, data)
    _note(fig.add_subplot(1, 1, 1), f"could not draw this figure: {type(exc).__name__}: {exc}")
    return fig


def write_all(store, out_dir, threshold: float = cap.THRESHOLD, *, chance: float = cap.CHANCE,
              n_boot: int = 200, seed: int = 0) -> list[Path]:
    """Every figure (PNG + SVG), the tables behind them (CSV; capacity also Parquet) and
    index.md / index.html under ``out_dir``. Returns the paths written, figures first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = analyse(store, threshold=threshold, chance=chance, n_boot=n_boot, seed=seed)
    written: list[Path] = []
    entries = []
    for name, title, draw in FIGURES:
        note = ""
        try:
            fig = draw(data)
        except Exception as exc:  # noqa: BLE001 — one figure's failure must not cost the rest
            warnings.warn(f"figure {name}: {type(exc).__name__}: {exc}", RuntimeWarning,
                          stacklevel=2)
            fig, note = _failed(data, title, exc), f"could not draw: {type(exc).__name__}: {exc}"
        written += save(fig, out, name)
        entries.append((name, title, _caption(draw), note))
    tables = _write_tables(data, out)
    written += tables
    written += _write_index(data, out, entries, tables)
    return written


def _caption(draw: Callable) -> str:
    """The first paragraph of a figure function's docstring, on one line."""
    return " ".join((draw.__doc__ or "").strip().split("\n\n")[0].split())


def _write_tables(data: Analysis, out: Path) -> list[Path]:
    paths = []
    frames = {"summary": data.summary, "aggregate": (metrics.aggregate(data.summary)
                                                    if len(data.summary) else pd.DataFrame()),
              "capacity": data.capacity, "scaling": data.scaling, "paper_table": paper_table(data)}
    for name, frame in frames.items():
        paths.append(out / f"{name}.csv")
        frame.to_csv(paths[-1], index=False)
    if len(data.capacity):
        paths.append(out / "capacity.parquet")
        data.capacity.to_parquet(paths[-1], index=False)
    return paths


def _capacity_markdown(data: Analysis) -> str:
    if data.capacity.empty:
        return "_no capacity estimates: no test measurements_\n"
    lines = ["| psp | units | K* | 95% interval | status | seeds | note |",
             "|---|---|---|---|---|---|---|"]
    for r in data.capacity.itertuples():
        k = "—" if pd.isna(r.K_star) else ("∞" if np.isinf(r.K_star) else f"{r.K_star:.3g}")
        interval = "—" if pd.isna(r.K_lo) else f"[{r.K_lo:.3g}, {r.K_hi:.3g}]"
        lines.append(f"| {r.psp} | {r.units} | {k} | {interval} | {r.status} | {r.n_seeds} | "
                     f"{r.note or ''} |")
    return "\n".join(lines) + "\n"


def _write_index(data: Analysis, out: Path, entries, tables: list[Path]) -> list[Path]:
    md = [f"# psplab figures — {data.sweep}", "", data.label(), ""]
    body = [f"<h1>psplab figures — {html.escape(data.sweep)}</h1>",
            f"<p>{html.escape(data.label())}</p>"]
    for name, title, caption, note in entries:
        md += [f"## {title}", "", f"![{title}]({name}.png)", "", caption, ""]
        body += [f"<h2>{html.escape(title)}</h2>",
                 f'<img src="{name}.png" alt="{html.escape(title)}" width="{PNG_SIZE[0]}">',
                 f'<p>{html.escape(caption)} (<a href="{name}.svg">SVG</a>)</p>']
        if note:
            md += [f"**{note}**", ""]
            body.append(f"<p><strong>{html.escape(note)}</strong></p>")
        md += [f"[SVG]({name}.svg)", ""]
    md += ["## Capacity estimates", "", _capacity_markdown(data), "## Tables", ""]
    md += [f"- [{p.name}]({p.name})" for p in tables]
    body.append("<h2>Capacity estimates</h2>")
    body.append(data.capacity.to_html(index=False, na_rep="—", float_format=lambda v: f"{v:.3g}")
                if len(data.capacity) else "<p>no capacity estimates: no test measurements</p>")
    body.append("<h2>Tables</h2><ul>" + "".join(f'<li><a href="{p.name}">{p.name}</a></li>'
                                                 for p in tables) + "</ul>")
    index_md, index_html = out / "index.md", out / "index.html"
    index_md.write_text("\n".join(md) + "\n", encoding="utf-8")
    index_html.write_text("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>psplab "
                          f"figures — {html.escape(data.sweep)}</title></head><body>\n"
                          + "\n".join(body) + "\n</body></html>\n", encoding="utf-8")
    return [index_md, index_html]
