"""How capacity scales with width: K* = A·units^α per configuration, and whether α = 1.

The fit is weighted least squares of log K* on log units over the widths with a finite K*
(statuses ``interpolated`` and ``extrapolated``; ``never`` and ``already_below`` carry no
number to fit). Weights: with bootstrap draws, 1 / Var_b(log K*_b) — an extrapolated K* has a
wide bootstrap spread and counts for little; without draws (fewer than three seeds), equal
weights over the interpolated widths only, extrapolated ones excluded.

Interval for α, only with ≥ 3 widths (two points always fit a line exactly):
- with draws, the percentile bootstrap: replicate b refits α on every width's b-th draw (the
  widths are independent trials, so seed noise propagates), replicates with fewer than 3 finite
  widths dropped; the test of α = 1 is the bootstrap's two-sided p = 2·min(P(α_b ≤ 1),
  P(α_b ≥ 1));
- without draws, Student's t on the weighted fit's standard error (n − 2 degrees of freedom),
  and its t-test of α = 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis import capacity as cap
from analysis import groups as grp

MIN_WIDTHS = 3
MIN_SD = 0.05   # floor on a width's bootstrap s.d. of log K*, so that no width takes all weight
THEORY_ALPHA = 1.0


def _wls(log_u: np.ndarray, log_k: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, slope s.e.) of weighted least squares; s.e. NaN with 2 points."""
    mu, mk = np.average(log_u, weights=w), np.average(log_k, weights=w)
    sxx = np.sum(w * (log_u - mu) ** 2)
    slope = float(np.sum(w * (log_u - mu) * (log_k - mk)) / sxx)
    intercept = float(mk - slope * mu)
    n = len(log_u)
    if n < 3:
        return slope, intercept, float("nan")
    resid = log_k - intercept - slope * log_u
    sigma2 = np.sum(w * resid ** 2) / (n - 2)
    return slope, intercept, float(np.sqrt(sigma2 / sxx))


def _boot_slopes(draws: pd.DataFrame, units: np.ndarray, weights: np.ndarray) -> np.ndarray:
    wide = draws.pivot_table(index="b", columns="units", values="K_star", aggfunc="first")
    wide = wide.reindex(columns=units)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_k = np.log(wide.to_numpy(dtype=float))
    log_u = np.log(units.astype(float))
    slopes = []
    for row in log_k:
        ok = np.isfinite(row)
        if ok.sum() >= MIN_WIDTHS:
            slopes.append(_wls(log_u[ok], row[ok], weights[ok])[0])
    return np.asarray(slopes)


def width_scaling(capacity: pd.DataFrame, draws: pd.DataFrame | None = None, *,
                  ci: float = 0.95, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Per configuration (``by``: the capacity table's group keys except units): α, alpha_lo,
    alpha_hi, alpha_se, alpha_p1 (p-value of α = 1), alpha_vs_theory (in words), prefactor,
    n_widths (used), units_min, units_max, n_extrapolated (used widths whose K* was
    extrapolated), weighting, ci_method, note. See the module docstring."""
    keys = [k for k in (by if by is not None else cap.group_keys(capacity)) if k != "units"]
    rows = []
    grouping = grp.groups(capacity, keys) if keys else [({}, capacity)]
    for values, group in grouping:
        rows.append({**values, **_one(group, draws, values, ci)})
    columns = [*keys, "alpha", "alpha_lo", "alpha_hi", "alpha_se", "alpha_p1", "alpha_vs_theory",
               "prefactor", "n_widths", "units_min", "units_max", "n_extrapolated", "weighting",
               "ci_method", "note"]
    return pd.DataFrame(rows, columns=columns)


def _one(group: pd.DataFrame, draws: pd.DataFrame | None, values: dict, ci: float) -> dict:
    finite = group[group["status"].isin(["interpolated", "extrapolated"])
                   & np.isfinite(group["K_star"].astype(float)) & (group["K_star"] > 0)]
    mine = None
    if draws is not None and len(draws):
        mine = grp.matching(draws, values)
        mine = mine[mine["units"].isin(finite["units"])]
    has_draws = mine is not None and mine["K_star"].notna().any()
    usable = finite if has_draws else finite[finite["status"] == "interpolated"]
    usable = usable.sort_values("units")
    row = {"alpha": np.nan, "alpha_lo": np.nan, "alpha_hi": np.nan, "alpha_se": np.nan,
           "alpha_p1": np.nan, "alpha_vs_theory": "", "prefactor": np.nan,
           "n_widths": int(usable["units"].nunique()),
           "units_min": usable["units"].min() if len(usable) else np.nan,
           "units_max": usable["units"].max() if len(usable) else np.nan,
           "n_extrapolated": int((usable["status"] == "extrapolated").sum()),
           "weighting": "1/bootstrap variance of log K*" if has_draws
           else "equal; extrapolated widths excluded", "ci_method": "", "note": ""}
    if row["n_widths"] < 2:
        row["note"] = f"need K* at 2 or more widths to fit α; got {row['n_widths']}"
        row["alpha_vs_theory"] = "not tested"
        return row
    units = usable["units"].to_numpy(dtype=float)
    log_u, log_k = np.log(units), np.log(usable["K_star"].to_numpy(dtype=float))
    if has_draws:
        sd = []
        for u in units:
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log(mine.loc[mine["units"] == u, "K_star"].to_numpy(dtype=float))
            logs = logs[np.isfinite(logs)]
            sd.append(max(np.std(logs, ddof=1) if len(logs) > 2 else np.inf, MIN_SD))
        weights = 1.0 / np.square(sd)
    else:
        weights = np.ones(len(units))
    alpha, intercept, se = _wls(log_u, log_k, weights)
    row.update(alpha=alpha, prefactor=float(np.exp(intercept)), alpha_se=se)
    if len(units) < MIN_WIDTHS:
        row["note"] = f"{len(units)} widths: α has no interval (needs {MIN_WIDTHS})"
        row["alpha_vs_theory"] = "not tested (2 widths)"
        return row
    if has_draws:
        slopes = _boot_slopes(mine, units.astype(int), weights)
        if len(slopes):
            row["alpha_lo"], row["alpha_hi"] = grp.percentile_interval(slopes, ci)
            row["alpha_p1"] = float(min(1.0, 2 * min(np.mean(slopes <= THEORY_ALPHA),
                                                     np.mean(slopes >= THEORY_ALPHA))))
            row["ci_method"] = "bootstrap over seeds"
    if not row["ci_method"] and np.isfinite(se):
        half = stats.t.ppf((1 + ci) / 2, len(units) - 2) * se
        row.update(alpha_lo=alpha - half, alpha_hi=alpha + half, ci_method="t (weighted fit)")
        row["alpha_p1"] = float(2 * stats.t.sf(abs(alpha - THEORY_ALPHA) / se, len(units) - 2))
    if row["ci_method"]:
        inside = row["alpha_lo"] <= THEORY_ALPHA <= row["alpha_hi"]
        row["alpha_vs_theory"] = (f"α = 1 {'inside' if inside else 'outside'} the {ci:.0%} "
                                  f"interval (p = {row['alpha_p1']:.2g})")
    return row
