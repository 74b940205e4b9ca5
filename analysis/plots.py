"""Figures of a store: each function draws one figure; ``write_all`` writes them all (PNG + SVG)
with the tables behind them and an index (index.md, index.html) that shows them.

Every figure is 1000×600 px and carries, under its title, the sweep, the number of seeds and the
capacity threshold, and says how its intervals were made. Series are configurations: every
trial parameter that varies except width (``analysis.groups``), so trials that differ in
``heads`` or ``penalty_strength`` are never drawn as one. A figure whose data are missing is
still written with a "not enough data" note, and a figure that fails to draw is replaced by one
that says why: one bad panel never costs the others.
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import groups as grp
from analysis import metrics
from analysis import models as mdl
from analysis import plots_paper
from analysis import retention as ret
from analysis import report_text as txt
from analysis.figure_kit import (CI_NOTE, DPI, MAX_PANELS, PNG_SIZE, SEED_BAND, Analysis,
                                 analyse, config_color, config_label, corner, curve, figure,
                                 grid, note, not_enough, task_marks, width_colors)

__all__ = ["FIGURES", "PNG_SIZE", "Analysis", "analyse", "write_all"]


def _series(frame: pd.DataFrame, keys: list[str]):
    """(keys, rows, label, colour) per configuration in ``frame``."""
    if not keys:
        yield {}, frame, "all trials", "tab:blue"
        return
    for i, (values, rows) in enumerate(grp.groups(frame, keys)):
        yield values, rows, config_label(values), config_color(values, i)


# ---- the figures -----------------------------------------------------------------------------
def fig_task0_by_width(data: Analysis) -> Figure:
    """Task-0 test accuracy vs training step, a panel per width, a line per configuration
    (PSP Figure 2): the seed mean, with the min–max band over seeds."""
    fig = figure("Task-0 accuracy vs training step, by width (cf. PSP Figure 2)", data, SEED_BAND)
    task0 = data.tests[data.tests["eval_task"] == 0] if len(data.tests) else data.tests
    if task0.empty:
        return not_enough(fig, "no task-0 test measurements")
    widths = sorted(task0["units"].unique())[:MAX_PANELS]
    axes = grid(fig, len(widths))
    for ax, units in zip(axes, widths):
        mine = task0[task0["units"] == units]
        for _, rows, label, color in _series(mine, data.config_keys):
            curve(ax, rows, label, color)
        task_marks(ax, mine)
        ax.set_title(f"{units} units", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("task-0 accuracy (%)")
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=7, loc="lower left")
    if len(widths) == 1:
        corner(axes[0], "one width only: not enough data for a comparison across widths")
    return fig


def fig_task0_by_type(data: Analysis, units: int | None = None) -> Figure:
    """Task-0 accuracy vs step, a line per configuration at one width (PSP Figure 3 left):
    256 units as in the paper when present, else the widest; min–max band over seeds."""
    task0 = data.tests[data.tests["eval_task"] == 0] if len(data.tests) else data.tests
    if units is None and len(task0):
        widths = sorted(task0["units"].unique())
        units = 256 if 256 in widths else widths[-1]
    fig = figure(f"Task-0 accuracy by superposition type at {units} units "
                 f"(cf. PSP Figure 3, left)", data, SEED_BAND)
    mine = task0[task0["units"] == units] if len(task0) else task0
    if mine.empty:
        return not_enough(fig, "no task-0 test measurements")
    ax = fig.add_subplot(1, 1, 1)
    for _, rows, label, color in _series(mine, data.config_keys):
        curve(ax, rows, label, color)
    task_marks(ax, mine)
    ax.set_xlabel("step")
    ax.set_ylabel("task-0 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower left")
    if mine["psp"].nunique() == 1:
        corner(ax, "one superposition type only: not enough data for a comparison")
    return fig


def fig_accuracy_matrix(data: Analysis) -> Figure:
    """R[i, j] as a heatmap per group, the mean over seeds; blank where not evaluated. The
    colour scale spans the accuracies shown (not 0–1), and small matrices print their values."""
    fig = figure("Accuracy matrix R[i, j]: accuracy on task j after training task i "
                 "(mean over seeds)", data, layout=None)
    if data.tests.empty:
        return not_enough(fig, "no test measurements")
    groups = []
    for keys, frame in grp.groups(data.tests, data.by):
        per_trial = metrics.accuracy_matrix(frame)
        mean = (per_trial.groupby(level="trained").mean() if per_trial.index.nlevels > 1
                else per_trial)
        groups.append((keys, mean))
    shown = groups[:MAX_PANELS]
    values = np.concatenate([R.to_numpy(dtype=float).ravel() for _, R in shown])
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    if vmax - vmin < 0.01:  # a flat matrix still needs a scale
        vmin, vmax = vmin - 0.005, vmax + 0.005
    axes = grid(fig, len(shown))
    # Fixed margins: constrained layout over a dozen panels and a colorbar costs seconds.
    fig.subplots_adjust(left=0.06, right=0.89, top=0.86, bottom=0.08, wspace=0.35, hspace=0.5)
    image = None
    print_values = max(R.shape[0] for _, R in shown) <= 8 and len(shown) <= 6
    for ax, (keys, R) in zip(axes, shown):
        matrix = R.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=vmax, cmap="viridis",
                          origin="upper", interpolation="nearest", aspect="auto")
        ax.set_title(f"{config_label(keys)}, {keys.get('units')} units", fontsize=8)
        ax.set_xlabel("task j", fontsize=8)
        ax.set_ylabel("after training task i", fontsize=8)
        ax.tick_params(labelsize=7)
        if print_values:
            for (i, j), v in np.ndenumerate(matrix):
                if np.isfinite(v):  # dark text on the bright end of viridis
                    light = (v - vmin) / (vmax - vmin) < 0.6
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="w" if light else "k")
    if image is not None:
        fig.colorbar(image, cax=fig.add_axes((0.91, 0.15, 0.015, 0.65)),
                     label="accuracy (scale: min–max of the data shown)")
    if len(groups) > len(shown):
        axes[-1].text(1.0, -0.25, f"first {len(shown)} of {len(groups)} groups",
                      transform=axes[-1].transAxes, ha="right", fontsize=8)
    if print_values:
        corner(axes[-1], "values: accuracy (%)", y=-0.3)
    return fig


def fig_retention_fit(data: Analysis) -> Figure:
    """Retention points z = (a − c)/(A − c) vs tasks stored after, with each width's fitted
    curve (the family chosen by held-out error): solid over the tasks measured, dashed where it
    extrapolates; dotted: the threshold z*. A panel per configuration."""
    fig = figure("Retention of earlier tasks vs tasks stored after them, with the fitted curve",
                 data, "solid: fitted range · dashed: extrapolation · dotted: threshold z*")
    if data.tests.empty or data.capacity.empty:
        return not_enough(fig, "no test measurements")
    configs = list(_series(data.tests, data.config_keys))[:6]
    axes = grid(fig, len(configs))
    for ax, (keys, frame, label, _) in zip(axes, configs):
        widths = sorted(frame["units"].unique())
        colors = width_colors(widths)
        drawn = False
        for units in widths:
            row = _capacity_row(data, {**keys, "units": units})
            if row is None or row["status"] == "insufficient":
                continue
            points = ret.retention_points(frame[frame["units"] == units], data.chance)
            model = mdl.fit_points(points, data.chance, row["family"])
            later = model.points[model.points["n"] > 0]
            b = model.fit.b[later["unit"].to_numpy()]
            ax.scatter(later["n"], (later["accuracy"] - data.chance) / b, s=5, alpha=0.3,
                       color=colors[units], lw=0)
            n_max = float(later["n"].max())
            reach = row["K_star"] * 1.1 if np.isfinite(row["K_star"]) else 0.0
            far = min(max(n_max * 1.5, reach), n_max * 5)
            inside, beyond = np.linspace(0, n_max, 100), np.linspace(n_max, far, 100)
            shape = lambda n: model.family.shape(n, *model.fit.theta)  # noqa: E731
            ax.plot(inside, shape(inside), color=colors[units], lw=1.5,
                    label=f"{units}: {row['family']}, K* {txt.num(row['K_star'])}, "
                          f"K̂ {txt.k_hat_text(row).split(' [')[0]}")
            ax.plot(beyond, shape(beyond), color=colors[units], lw=1.2, ls="--")
            ax.axhline(row["z_star"], color=colors[units], ls=":", lw=0.8)
            drawn = True
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("tasks stored after the task (n)", fontsize=8)
        ax.set_ylabel("z = (a − chance) / (A − chance)", fontsize=8)
        if drawn:
            ax.legend(fontsize=6, loc="lower left")
        else:
            note(ax, "not enough data: fewer than 3 retention points")
    return fig


def _capacity_row(data: Analysis, keys: dict):
    rows = grp.matching(data.capacity, keys)
    return rows.iloc[0] if len(rows) else None


def fig_capacity_scaling(data: Analysis) -> Figure:
    """K* (model) and K̂ (Kaplan–Meier, data) vs width per configuration on log-log axes:
    filled markers interpolated, hollow extrapolated, crosses K̂ (a censored K̂ is drawn at its
    follow-up with an arrow up); the power-law fit K* = A·units^α with its interval."""
    fig = figure("Capacity vs width: K* (model) and K̂ (data)", data, CI_NOTE)
    table = data.capacity
    if table.empty or not np.isfinite(table["K_star"].astype(float)).any():
        return not_enough(fig, "no group with a finite K*")
    ax = fig.add_subplot(1, 1, 1)
    scaling = data.scaling
    for i, (keys, rows, label, color) in enumerate(_series(table, data.config_keys)):
        rows = rows.sort_values("units")
        finite = rows[np.isfinite(rows["K_star"].astype(float)) & (rows["K_star"] > 0)]
        units = finite["units"].to_numpy(dtype=float)
        k = finite["K_star"].to_numpy(dtype=float)
        lo = np.nan_to_num(np.clip(k - finite["K_lo"].to_numpy(dtype=float), 0, None))
        hi = np.nan_to_num(np.clip(finite["K_hi"].to_numpy(dtype=float) - k, 0, None),
                           posinf=0.0)
        ax.errorbar(units, k, yerr=[lo, hi], fmt="none", ecolor=color, elinewidth=1, capsize=3)
        extrap = finite["extrapolated"].to_numpy(dtype=bool)
        ax.scatter(units[~extrap], k[~extrap], color=color, s=30, zorder=3)
        ax.scatter(units[extrap], k[extrap], facecolors="none", edgecolors=color, s=30, zorder=3)
        hat = rows[rows["K_hat"].notna()]
        censored = np.isinf(hat["K_hat"].astype(float)).to_numpy()
        y = np.where(censored, hat["K_hat_follow_up"], hat["K_hat"]).astype(float)
        ax.scatter(hat["units"] * 1.04, y, marker="x", color=color, s=25, zorder=3)
        for u, v in zip(hat["units"][censored], y[censored]):
            ax.annotate("", (u * 1.04, v * 1.5), (u * 1.04, v),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 0.8})
        legend = f"{label}: " + _alpha_text(scaling, keys)
        s = _scaling_row(scaling, keys)
        if s is not None and np.isfinite(s["alpha"]) and len(units) >= 2:
            line = np.geomspace(units.min(), units.max(), 50)
            ax.plot(line, s["prefactor"] * line ** s["alpha"], color=color, lw=1.2)
            if np.isfinite(s["alpha_lo"]):
                pivot = float(np.exp(np.mean(np.log(units))))
                k_pivot = s["prefactor"] * pivot ** s["alpha"]
                a = k_pivot * (line / pivot) ** s["alpha_lo"]
                b = k_pivot * (line / pivot) ** s["alpha_hi"]
                ax.fill_between(line, np.minimum(a, b), np.maximum(a, b), color=color,
                                alpha=0.15, lw=0)
        ax.plot([], [], color=color, marker="o", label=legend)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("units per hidden layer")
    ax.set_ylabel("tasks stored before an earlier one falls below threshold")
    ax.legend(fontsize=7, loc="upper left")
    corner(ax, "● K* interpolated · ○ K* extrapolated · × K̂ (↑ censored: beyond the follow-up)"
               " · bars: 95% interval")
    return fig


def _scaling_row(scaling: pd.DataFrame, keys: dict):
    rows = grp.matching(scaling, keys) if len(scaling) else scaling
    return rows.iloc[0] if len(rows) else None


def _alpha_text(scaling: pd.DataFrame, keys: dict) -> str:
    s = _scaling_row(scaling, keys)
    if s is None or not np.isfinite(s["alpha"]):
        return "no fit (" + (s["note"] if s is not None else "one width") + ")"
    if np.isfinite(s["alpha_lo"]):
        return (f"α = {s['alpha']:.2f} [{s['alpha_lo']:.2f}, {s['alpha_hi']:.2f}], "
                f"{s['alpha_vs_theory']}")
    return f"α = {s['alpha']:.2f} (no interval: {s['n_widths']} widths)"


FIGURES: tuple[tuple[str, str, Callable[[Analysis], Figure]], ...] = (
    ("task0_by_width", "Task-0 accuracy vs step by width (Figure 2)", fig_task0_by_width),
    ("task0_by_type", "Task-0 accuracy vs step by superposition type (Figure 3, left)",
     fig_task0_by_type),
    ("accuracy_matrix", "Accuracy matrix heatmaps", fig_accuracy_matrix),
    ("retention_fit", "Retention curves with the fitted model", fig_retention_fit),
    ("capacity_scaling", "Capacity K* and K̂ vs width (log-log) with the power-law fit",
     fig_capacity_scaling),
    ("paper_table", "Average accuracy on the last 10 tasks: paper vs ours",
     plots_paper.fig_paper_table),
    ("icifar", "Incremental CIFAR: per-task accuracy, superposed vs multihead (Figure 6b)",
     plots_paper.fig_icifar),
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
    fig = figure(title, data)
    note(fig.add_subplot(1, 1, 1), f"could not draw this figure: {type(exc).__name__}: {exc}")
    return fig


def write_all(store, out_dir, threshold: float = 0.9, *, chance: float = ret.CHANCE,
              n_boot: int = 200, seed: int = 0) -> list[Path]:
    """Every figure (PNG + SVG), the tables behind them (CSV; capacity also Parquet) and
    index.md / index.html under ``out_dir``. Returns the paths written, figures first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = analyse(store, threshold=threshold, chance=chance, n_boot=n_boot, seed=seed)
    written: list[Path] = []
    entries = []
    for name, title, draw in FIGURES:
        problem = ""
        try:
            fig = draw(data)
        except Exception as exc:  # noqa: BLE001 — one figure's failure must not cost the rest
            warnings.warn(f"figure {name}: {type(exc).__name__}: {exc}", RuntimeWarning,
                          stacklevel=2)
            fig, problem = _failed(data, title, exc), f"could not draw: {type(exc).__name__}: {exc}"
        written += save(fig, out, name)
        entries.append((name, title, _caption(draw), problem))
    tables = _write_tables(data, out)
    written += tables
    written += _write_index(data, out, entries, tables)
    return written


def _caption(draw: Callable) -> str:
    """The first paragraph of a figure function's docstring, on one line."""
    return " ".join((draw.__doc__ or "").strip().split("\n\n")[0].split())


def _write_tables(data: Analysis, out: Path) -> list[Path]:
    paths = []
    frames = {"summary": data.summary,
              "aggregate": (metrics.aggregate(data.summary, by=data.by)
                            if len(data.summary) else pd.DataFrame()),
              "capacity": data.capacity, "scaling": data.scaling,
              "paper_table": plots_paper.paper_table(data)}
    for name, frame in frames.items():
        paths.append(out / f"{name}.csv")
        frame.to_csv(paths[-1], index=False)
    if len(data.capacity):
        paths.append(out / "capacity.parquet")
        data.capacity.to_parquet(paths[-1], index=False)
    return paths


def capacity_markdown(data: Analysis) -> str:
    """K* and K̂ per group as a markdown table, with the curve chosen and their agreement."""
    if data.capacity.empty:
        return "_no capacity estimates: no test measurements_\n"
    lines = ["| group | seeds | K* (model) | K̂ (data) | agreement | curve | γ̂ vs 1/2 | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data.capacity.to_dict("records"):
        group = grp.label({k: r[k] for k in data.by})
        lines.append(f"| {group} | {r['n_seeds']} | {txt.k_star_text(r)} | {txt.k_hat_text(r)} "
                     f"| {r.get('agreement') or '—'} | {r.get('family') or '—'} "
                     f"| {r.get('gamma_vs_theory') or '—'} | {r.get('note') or ''} |")
    return "\n".join(lines) + "\n"


def _write_index(data: Analysis, out: Path, entries, tables: list[Path]) -> list[Path]:
    md = [f"# psplab figures — {data.sweep}", "", data.label(), ""]
    body = [f"<h1>psplab figures — {html.escape(data.sweep)}</h1>",
            f"<p>{html.escape(data.label())}</p>"]
    for name, title, caption, problem in entries:
        md += [f"## {title}", "", f"![{title}]({name}.png)", "", caption, ""]
        body += [f"<h2>{html.escape(title)}</h2>",
                 f'<img src="{name}.png" alt="{html.escape(title)}" width="{PNG_SIZE[0]}">',
                 f'<p>{html.escape(caption)} (<a href="{name}.svg">SVG</a>)</p>']
        if problem:
            md += [f"**{problem}**", ""]
            body.append(f"<p><strong>{html.escape(problem)}</strong></p>")
        md += [f"[SVG]({name}.svg)", ""]
    md += ["## Capacity estimates", "", capacity_markdown(data), "## Tables", ""]
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
