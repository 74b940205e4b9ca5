"""Numbers as text: the backtest and capacity tables the command line prints and the study
report embeds. Every interval says its method, and a missing one says why."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import groups as grp
from analysis.backtesting import APPLIES_HELDOUT
from analysis.forecasting import METHOD


def num(value, digits: int = 3) -> str:
    """A number for a table: "—" when missing, "∞" when infinite, else ``digits`` significant."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "—"
    value = float(value)
    if np.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def pts(value) -> str:
    """Accuracy points with one decimal and a sign: "+1.3"."""
    return "—" if value is None or not np.isfinite(value) else f"{value:+.1f}"


def pct(value) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"


def pct1(value) -> str:
    """An accuracy (0–1) in percent with one decimal: "78.2"; "—" when missing."""
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def interval(lo, hi, why: str = "") -> str:
    """"[lo, hi]"; the reason there is none otherwise."""
    if lo is None or not np.isfinite(lo) and not np.isinf(lo):
        return why or "no interval"
    return f"[{num(lo)}, {num(hi)}]"


def k_star_text(row) -> str:
    """K* with its interval and its status: "12.3 [10.1, 14.9]", "57 [40, 90] extrapolated"."""
    if row["status"] == "insufficient" or pd.isna(row["K_star"]):
        return "— (insufficient data)"
    text = f"{num(row['K_star'])} {interval(row['K_lo'], row['K_hi'], _why(row['ci_method']))}"
    if row["status"] != "interpolated":
        text += f" {row['status'].replace('_', ' ')}"
    return text


def k_hat_text(row) -> str:
    """K̂ with its interval: "13 [11, 16]", "> 49 (censored)"."""
    if pd.isna(row.get("K_hat")):
        return "— (no learned tasks)"
    if np.isinf(row["K_hat"]):
        text = f"> {num(row['K_hat_follow_up'])} (censored)"
    else:
        text = num(row["K_hat"])
    if np.isfinite(row["K_hat"]) or np.isfinite(row.get("K_hat_lo", np.nan)):
        text += " " + interval(row["K_hat_lo"], row["K_hat_hi"], _why(row["K_hat_ci"]))
    return text


def _why(method: str) -> str:
    return method if isinstance(method, str) and method.startswith("no interval") else ""


def capacity_text(table: pd.DataFrame, keys: list[str]) -> str:
    """K* and K̂ per group, with the model chosen and whether the two agree."""
    rows = []
    for r in table.to_dict("records"):
        rows.append({"group": grp.label({k: r[k] for k in keys}), "seeds": r["n_seeds"],
                     "diverged": r.get("n_diverged", 0), "K* (model)": k_star_text(r),
                     "K̂ (data)": k_hat_text(r), "agreement": r.get("agreement") or "—",
                     "curve": r.get("family") or "—"})
    shown = pd.DataFrame(rows)
    threshold = table["threshold"].dropna()
    head = (f"capacity at θ = {threshold.iloc[0]:.0%} of just-trained accuracy: K* from the "
            f"fitted retention curve, K̂ the Kaplan–Meier median of tasks stored before a task "
            f"first measured below θ; 95% intervals by seed bootstrap") if len(threshold) else ""
    return head + "\n" + shown.to_string(index=False)


def backtest_text(result) -> str:
    """The backtest as a table per group, then what the columns mean."""
    s = result.summary
    rows = []
    for r in s.to_dict("records"):
        label = grp.label({k: r[k] for k in result.by})
        if r.get("note"):
            rows.append({"group": label, "seeds": r["n_seeds"], "note": r["note"]})
            continue
        why = r["interval"] if str(r["interval"]).startswith("no interval") else ""
        rows.append({
            "group": label, "seeds": r["n_seeds"], "diverged": r["n_diverged"],
            "curve": r["family"],
            "task 0 at the end: measured": f"{pct1(r['task0_measured'])} after "
                                           f"{r['task0_after']}",
            "forecast": f"{pct1(r['task0_pred'])} "
                        + interval(100 * r["task0_lo"], 100 * r["task0_hi"], why),
            "error": pts(r["task0_err"]),
            "per trial |err|": num(r["task0_trial_mae"], 2),
            "trials covered": (f"{r['task0_trial_covered']}/{r['task0_trials']}" if not why
                               else "—"),
            "held-out |err|": f"{r['points_mae']:.1f}",
            "coverage": pct(r["points_coverage"]) + f" of {r['n_points']}",
            "final row": pct(r["final_coverage"]),
            "seed means": pct(r["means_coverage"]),
            "applies": "yes" if r["applies"] else "no",
            "best curve": r["best_family"],
        })
    table = pd.DataFrame(rows).fillna("")
    level = f"{result.level:.0%}"
    lines = [
        f"backtest: each group fitted on the measurements taken while its first "
        f"{result.fit_tasks} tasks trained; every later accuracy-matrix entry R[i, j] "
        f"(i ≥ {result.fit_tasks}) forecast and compared",
        table.to_string(index=False),
        f"error: forecast − measured seed mean of task 0 after the last task, accuracy points; "
        f"per trial |err|: mean over trials of |forecast − measured| for that entry; "
        f"held-out |err| and coverage: every held-out entry of every trial, against its "
        f"{level} prediction interval ({METHOD}; none with fewer than 3 seeds); final row: R[T−1, ·] only; seed means: the mean "
        f"over seeds of each entry against its interval; applies: the model's own forecast "
        f"inside the fit window (first half → second half) within {APPLIES_HELDOUT:g} points "
        f"rms; best curve: "
        f"the family with the lowest rms error on the held-out entries of tasks seen in the "
        f"fit window.",
    ]
    fitted = s[s["note"].fillna("") == ""] if "note" in s else s
    if len(fitted) and fitted["points_coverage"].notna().any():
        covered = (fitted["points_coverage"] * fitted["n_points"]).sum()
        total = fitted.loc[fitted["points_coverage"].notna(), "n_points"].sum()
        within = (fitted["task0_err"].abs() <= 2).sum()
        applies = fitted[fitted["applies"].astype(bool)]
        lines.append(f"over all groups: {level} intervals covered {covered / total:.0%} of "
                     f"{int(total)} held-out entries; task-0 seed-mean forecast within 2 points "
                     f"in {within} of {len(fitted)} groups ({(applies['task0_err'].abs() <= 2).sum()}"
                     f" of the {len(applies)} where the model claims to apply)")
    return "\n".join(lines)
