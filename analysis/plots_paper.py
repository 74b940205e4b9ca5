"""Figures that set this store beside the paper: its table (average accuracy on the last 10
tasks) and Figure 6b (incremental CIFAR, superposed vs multihead). Each says when the runs
differ from the paper's protocol, so that no one reads a number against the wrong reference."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import groups as grp
from analysis import metrics
from analysis.figure_kit import (PSP_LABEL, SEED_BAND, Analysis, config_color, curve, figure,
                                 not_enough)

# PSP paper, Figure 3 (right): average accuracy (%) on the last 10 of 50 permuted-MNIST tasks.
PAPER_TABLE = (("EWC", None, 97.0), ("SI", None, 97.2), ("Standard", "none", 61.8),
               ("Binary", "binary", 97.6), ("Complex", "complex", 97.4),
               ("OnePower", "onepower", 97.2))
PAPER_PROTOCOL = {"tasks": 50, "dataset": "mnist"}   # 50 permuted tasks of full MNIST


def comparability(summary: pd.DataFrame) -> str:
    """"" when the trials ran the paper's protocol (tasks and dataset), else what differs."""
    if summary.empty:
        return "no trials"
    differs = []
    for key, paper in PAPER_PROTOCOL.items():
        ours = sorted(str(v) for v in summary[key].dropna().unique()) if key in summary else []
        if ours != [str(paper)]:
            differs.append(f"{key}: {', '.join(ours) or '?'} here, {paper} in the paper")
    return "; ".join(differs)


def paper_table(data: Analysis) -> pd.DataFrame:
    """The paper's table (average accuracy on the last 10 of 50 tasks) beside ours: our ACC over
    the last min(10, T) tasks at the widest width of each type, mean over seeds with a t
    interval; ``comparable`` False when tasks or dataset differ from the paper's."""
    ours = pd.DataFrame()
    summary = data.summary
    if len(summary):
        keys = [k for k in data.config_keys if k in summary]
        widest = summary[summary["units"] == summary.groupby(keys or ["psp"], dropna=False)
                         ["units"].transform("max")]
        ours = metrics.aggregate(widest, by=["psp", "units"], metrics=["acc_last10"])
        ours = ours.set_index("psp")
    tasks = int(summary["tasks"].max()) if len(summary) else None
    differs = comparability(summary)
    rows = []
    known = {psp for _, psp, _ in PAPER_TABLE if psp}
    entries = list(PAPER_TABLE) + [(PSP_LABEL.get(p, p), p, None) for p in
                                   (ours.index if len(ours) else []) if p not in known]
    for method, psp, paper in entries:
        row = {"method": method, "psp": psp, "paper_pct": paper, "ours_pct": np.nan,
               "ours_lo_pct": np.nan, "ours_hi_pct": np.nan, "units": np.nan, "seeds": 0,
               "tasks": tasks, "comparable": not differs, "differs": differs}
        if psp is not None and psp in ours.index:
            r = ours.loc[psp]
            row.update(ours_pct=100 * r["acc_last10_mean"], ours_lo_pct=100 * r["acc_last10_lo"],
                       ours_hi_pct=100 * r["acc_last10_hi"], units=r["units"],
                       seeds=int(r["acc_last10_n"]))
        rows.append(row)
    return pd.DataFrame(rows)


def fig_paper_table(data: Analysis) -> Figure:
    """The paper's table beside ours, drawn as a table; marked NOT COMPARABLE when the trials
    ran another number of tasks or another dataset than the paper (50 tasks, full MNIST)."""
    fig = figure("Average accuracy on the last 10 tasks: PSP paper (50 tasks, permuted MNIST) "
                 "vs this sweep", data, "ours: mean over seeds, 95% t interval (needs ≥ 2 seeds)")
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
    differs = table["differs"].iloc[0] if len(table) else ""
    if differs:
        ax.text(0.5, 0.97, f"NOT COMPARABLE with the paper's numbers — {differs}", ha="center",
                va="top", transform=ax.transAxes, fontsize=10, color="tab:red", weight="bold",
                wrap=True)
    ax.text(0.5, 0.02, f"paper: last 10 of 50 tasks, EWC and SI from Zenke et al.; ours: last "
            f"{k} of {n_tasks} tasks at the widest width of each type; —: not run",
            ha="center", va="bottom", transform=ax.transAxes, fontsize=8, color="0.35")
    return fig


def icifar_label(keys: dict) -> str:
    """The paper's names: standard, multihead, pspBinary (one head), pspBinary + multihead."""
    psp, heads = keys.get("psp"), keys.get("heads", "single")
    name = {"none": "standard"}.get(psp, PSP_LABEL.get(psp, str(psp)))
    if heads == "multi":
        name = "multihead" if psp == "none" else f"{name} + multihead"
    rest = {k: v for k, v in keys.items() if k not in ("psp", "heads", "units")}
    return ", ".join(part for part in (name, grp.label(rest)) if part)


def fig_icifar(data: Analysis) -> Figure:
    """Incremental CIFAR (PSP Figure 6b): CIFAR-10 (task 0) accuracy vs step per
    configuration, and every task's accuracy after the last task, R[T−1, j] (mean over seeds,
    bars: min–max over seeds), superposed vs multihead vs standard."""
    fig = figure("Incremental CIFAR: per-task accuracy, superposed vs multihead "
                 "(cf. PSP Figure 6b)", data, SEED_BAND + "; dashed: chance")
    tests = data.tests
    if tests.empty or "stream" not in tests or not (tests["stream"] == "incremental").any():
        return not_enough(fig, "no incremental-CIFAR trials (stream: incremental) in this store")
    tests = tests[tests["stream"] == "incremental"]
    varying = [k for k in data.config_keys if tests[k].nunique(dropna=False) > 1]
    keys = [k for k in dict.fromkeys(["psp", "heads", *varying]) if k in tests]
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    series = list(grp.groups(tests, keys))
    width = 0.8 / max(len(series), 1)
    for i, (values, rows) in enumerate(series):
        color = config_color(values, i)
        label = icifar_label(values)
        curve(left, rows[rows["eval_task"] == 0], label, color)
        R = metrics.accuracy_matrix(rows)
        finals = (R.groupby(level="trial_id").tail(1) if R.index.nlevels > 1 else R.tail(1))
        mean, lo, hi = finals.mean(), finals.min(), finals.max()
        x = np.arange(len(mean)) + (i - (len(series) - 1) / 2) * width
        right.bar(x, 100 * mean.to_numpy(), width, color=color, label=label)
        if len(finals) > 1:
            right.errorbar(x, 100 * mean.to_numpy(),
                           yerr=[100 * (mean - lo).to_numpy(), 100 * (hi - mean).to_numpy()],
                           fmt="none", ecolor="0.2", elinewidth=0.8, capsize=2)
    for ax in (left, right):
        ax.axhline(100 * data.chance, color="0.5", ls="--", lw=0.8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
    left.set_title("CIFAR-10 (task 0) during training", fontsize=9)
    left.set_xlabel("step")
    left.legend(fontsize=7, loc="lower left")
    right.set_title("every task after the last one, R[T−1, j]", fontsize=9)
    right.set_xlabel("task j (0: CIFAR-10; 1…: CIFAR-100 splits)")
    right.set_xticks(range(int(tests["tasks"].max())))
    return fig
