"""Capacity: how many tasks fit in one set of weights before earlier ones fall below a threshold.

The model (from PSP's Appendix A)
---------------------------------
Task k is read out of the superposed weights W = Σ_i W_i C_i⁻¹ as Ŵ_k x = W_k x + ε with
ε = Σ_{i≠k} W_i C_i⁻¹ C_k x. For random contexts the terms of ε are uncorrelated and zero-mean,
so ε's variance grows linearly in the number of models stored — its size relative to the signal
grows like sqrt(K/M). Take task j right after it was trained, with signal-to-noise SNR₀; each of
the n tasks stored after it adds the same variance, hence

    SNR(n) = SNR₀ / sqrt(1 + n/κ),

where κ is the number of further tasks whose interference equals the noise already present when
j was learned. Interference per task scales like 1/M, so κ ∝ M: the theory predicts capacity
linear in width (α = 1), which is what the width fit tests. To first order the accuracy above
chance c is proportional to the SNR, so task j's accuracy after n further tasks is

    a_j(n) = c + (A_j − c)·(1 + n/κ)^(−γ),   γ = 1/2,

with A_j its just-trained accuracy (R[j, j]). In normalised units z = (a − c)/(A_j − c) every
task follows the same curve z(n) = (1 + n/κ)^(−γ).

Fitting. γ is fixed at the theory's 1/2 rather than fitted: over the few tasks a sweep runs, γ
and κ trade off against each other and a free γ makes extrapolation unstable. The points are
every test measurement of a learned task j (measured R[j, j] ≥ c + 0.05) at n ≥ 0 tasks after it
was trained — the task-0 curve every ``eval_every`` steps gives fractional n, the accuracy
matrix gives R[i, j] at n = i − j — pooled over the tasks and seeds of one (psp, units) group.
κ and one amplitude A_j per (trial, task) are fitted jointly by least squares on the accuracies.
For a given κ each A_j is linear (closed form), so only log κ is searched
(``scipy.optimize.minimize_scalar``, bounded). Fitting A_j instead of dividing by the single
measurement R[j, j] keeps that measurement's noise from scaling all of task j's points.

Capacity. A task stays usable while a(n) ≥ θ·A (θ = 0.9 by default: 90% of the accuracy it had
right after training), i.e. while z(n) ≥ z* = (θ·Ā − c)/(Ā − c), Ā the mean fitted just-trained
accuracy of the group. K* is the number of tasks that can be stored after a task before it falls
below that threshold:

    K* = κ·(z*^(−1/γ) − 1),

so a network holding K* + 1 tasks still serves the oldest one at θ of its accuracy. K* is
proportional to κ, hence K* ∝ units^α with the same α as κ.

Because the model is fitted, K* can lie beyond the tasks actually run; such estimates carry
``extrapolated = True``. The interval is a percentile bootstrap over seeds: trials are resampled
with replacement within the group and the fit repeated (over retention points when the group has
a single trial; ``ci_method`` says which). ``width_scaling`` fits log K* = log A + α·log units
per superposition type.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.metrics import anytime_curves

THRESHOLD = 0.9
CHANCE = 0.1           # 10-way classification (MNIST, FashionMNIST, CIFAR-10)
GAMMA = 0.5            # the sqrt(K/M) noise growth of PSP's Appendix A
MIN_GAIN = 0.05        # a task must have been learned this far above chance to measure retention
KAPPA_BOUNDS = (1e-3, 1e9)
MAX_TASKS = 1e6        # K* beyond this is reported as inf ("never", within any plausible range)
MIN_POINTS = 3


class CapacityError(ValueError):
    """The capacity model cannot be fitted from the data given; the message says why."""


# ---- the model -------------------------------------------------------------------------------
def retention_model(n, kappa: float, gamma: float = GAMMA):
    """z(n) = (1 + n/κ)^(−γ): normalised accuracy above chance after n more tasks are stored."""
    return (1.0 + np.asarray(n, dtype=float) / kappa) ** (-gamma)


def z_threshold(threshold: float, a0: float, chance: float = CHANCE) -> float:
    """z* = (θ·a₀ − c)/(a₀ − c): the threshold a ≥ θ·a₀ in normalised units."""
    return (threshold * a0 - chance) / (a0 - chance)


def capacity_from_kappa(kappa: float, z_star: float, gamma: float = GAMMA) -> float:
    """K* = κ·(z*^(−1/γ) − 1): tasks storable after a task before it falls below threshold;
    inf when z* ≤ 0 (threshold at or below chance)."""
    if z_star <= 0:
        return float("inf")
    return kappa * (z_star ** (-1.0 / gamma) - 1.0)


def fit_kappa(n, excess, task, gamma: float = GAMMA,
              start: float | None = None) -> tuple[float, np.ndarray, float]:
    """Least squares of excess = a − c ≈ b_task·(1 + n/κ)^(−γ) → (κ, b, rmse).

    ``task`` holds each point's task index 0..m−1; b[k] = A_k − c is the fitted just-trained
    accuracy above chance of task k (NaN for a task with no points). For fixed κ each b[k] is
    Σ g·y / Σ g² over its points, so the SSE is profiled over log κ alone, within KAPPA_BOUNDS.
    κ at the upper bound means no measurable decay. ``start`` (a κ) searches near it first.
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(excess, dtype=float)
    task = np.asarray(task, dtype=int)
    m = int(task.max()) + 1 if len(task) else 0

    def profile(log_kappa: float) -> tuple[float, np.ndarray]:
        g = retention_model(n, np.exp(log_kappa), gamma)
        num = np.bincount(task, g * y, minlength=m)
        den = np.bincount(task, g * g, minlength=m)
        b = np.divide(num, den, out=np.full(m, np.nan), where=den > 0)
        return float(np.sum((y - b[task] * g) ** 2)), b

    lo, hi = np.log(KAPPA_BOUNDS)
    log_kappa = None
    if start is not None:  # bootstrap replicates: Brent near the full-data fit, no grid
        bracket = (max(lo, np.log(start) - 2.0), min(hi, np.log(start) + 2.0))
        result = optimize.minimize_scalar(lambda x: profile(x)[0], bounds=bracket,
                                          method="bounded", options={"xatol": 1e-6})
        # An optimum on the bracket's edge may lie beyond it: search globally then, unless
        # the edge is the global bound itself.
        low_edge = result.x <= bracket[0] + 1e-3 and bracket[0] > lo
        high_edge = result.x >= bracket[1] - 1e-3 and bracket[1] < hi
        log_kappa = None if low_edge or high_edge else result.x
    if log_kappa is None:
        # The SSE in log κ has flat shoulders; a coarse grid finds the basin, Brent refines it.
        grid = np.linspace(lo, hi, 37)
        sse = [profile(x)[0] for x in grid]
        best = int(np.argmin(sse))
        bracket = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
        result = optimize.minimize_scalar(lambda x: profile(x)[0], bounds=bracket,
                                          method="bounded", options={"xatol": 1e-6})
        log_kappa = result.x if result.fun <= sse[best] else grid[best]
    final_sse, b = profile(log_kappa)
    return float(np.exp(log_kappa)), b, float(np.sqrt(final_sse / max(len(n), 1)))


# ---- data → retention points -----------------------------------------------------------------
def retention_points(df: pd.DataFrame, chance: float = CHANCE,
                     min_gain: float = MIN_GAIN) -> pd.DataFrame:
    """The points the model is fitted to: every test measurement of a learned task j taken
    n ≥ 0 tasks after j was trained, for tasks with at least one point at n > 0.

    Columns: the trial's keys, eval_task, step, n (tasks stored after j), accuracy and a0 (the
    measured R[j, j]). Tasks with a0 < c + min_gain (never learned) are left out.
    """
    curves = anytime_curves(df)
    if curves.empty:
        return curves.assign(n=[], a0=[])
    spt = curves["steps_per_task"].astype(int)
    just_trained = curves[curves["step"] == (curves["eval_task"].astype(int) + 1) * spt]
    a0 = just_trained.groupby(["trial_id", "eval_task"])["accuracy"].last().rename("a0")
    points = curves[curves["stored_after"] >= 0].join(a0, on=["trial_id", "eval_task"])
    points = points[points["a0"].notna() & (points["a0"] >= chance + min_gain)]
    points = points.assign(n=points["stored_after"])
    later = points[points["n"] > 0].groupby(["trial_id", "eval_task"]).size().rename("later")
    points = points.join(later, on=["trial_id", "eval_task"])
    points = points[points["later"].notna()].drop(columns="later")
    return points.reset_index(drop=True)


def fit_retention(points: pd.DataFrame, chance: float = CHANCE, gamma: float = GAMMA) -> dict:
    """Fit the model to ``retention_points`` → {kappa, rmse, a0_fit (Ā), points}: the points with
    ``A`` (the fitted just-trained accuracy of their task) and ``z`` = (accuracy − c)/(A − c)."""
    keys = points["trial_id"].astype(str) + "/" + points["eval_task"].astype(str)
    task, _ = pd.factorize(keys)
    kappa, b, rmse = fit_kappa(points["n"], points["accuracy"] - chance, task, gamma)
    amplitude = chance + b[task]
    points = points.assign(A=amplitude, z=(points["accuracy"] - chance) / (amplitude - chance))
    return {"kappa": kappa, "rmse": rmse, "a0_fit": float(np.nanmean(chance + b)),
            "points": points}


# ---- one group -------------------------------------------------------------------------------
def _fit_arrays(n: np.ndarray, excess: np.ndarray, task: np.ndarray, threshold: float,
                chance: float, gamma: float, start: float | None = None) -> dict:
    kappa, b, rmse = fit_kappa(n, excess, task, gamma, start)
    a0_fit = chance + float(np.nanmean(b))
    z_star = z_threshold(threshold, a0_fit, chance)
    k_star = capacity_from_kappa(kappa, z_star, gamma)
    if kappa >= KAPPA_BOUNDS[1] * 0.999 or k_star > MAX_TASKS:
        k_star = float("inf")
    return {"kappa": kappa, "rmse": rmse, "a0_fit": a0_fit, "z_star": z_star, "K_star": k_star}


def _quantiles(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    # inverted_cdf: no interpolation, so an inf draw never turns a bound into NaN.
    lo, hi = np.quantile(values, [(1 - ci) / 2, (1 + ci) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def estimate_capacity(df: pd.DataFrame, *, threshold: float = THRESHOLD, chance: float = CHANCE,
                      gamma: float = GAMMA, n_boot: int = 200, ci: float = 0.95, seed: int = 0,
                      label: str = "", return_draws: bool = False):
    """K* of the trials in ``df`` (one (psp, units) group), with a bootstrap interval.

    Returns a dict (see ``capacity_table`` for the fields), plus the bootstrap draws as a DataFrame
    (b, kappa, K_star) when ``return_draws``. Raises CapacityError with fewer than three
    distinct retention points (n values), or for a threshold outside (0, 1).
    """
    if not 0 < threshold < 1:
        raise CapacityError(f"threshold must be in (0, 1) (a fraction of the just-trained "
                            f"accuracy); got {threshold}")
    points = retention_points(df, chance)
    where = f" for {label}" if label else ""
    distinct = points.loc[points["n"] > 0, "n"].nunique() if len(points) else 0
    if distinct < MIN_POINTS:
        raise CapacityError(
            f"need at least {MIN_POINTS} retention points to fit the capacity model{where}; got "
            f"{distinct} (distinct numbers of tasks stored after a learned task; run more tasks "
            f"or evaluate more often with eval_every)")
    # Plain arrays per trial: the bootstrap refits hundreds of times, pandas would dominate.
    per_trial = []
    for _, g in points.groupby("trial_id", sort=True):
        task, _ = pd.factorize(g["eval_task"])
        per_trial.append((g["n"].to_numpy(float), (g["accuracy"] - chance).to_numpy(float), task))

    def pooled(parts):  # concatenate trials, renumbering tasks so each (trial, task) is its own
        offsets = np.cumsum([0] + [int(t.max()) + 1 for _, _, t in parts[:-1]])
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] + o for p, o in zip(parts, offsets)]))

    fit = _fit_arrays(*pooled(per_trial), threshold, chance, gamma)
    n_min = float(points.loc[points["n"] > 0, "n"].min())
    n_max = float(points["n"].max())

    rng = np.random.default_rng(seed)
    ci_method = "seeds" if len(per_trial) > 1 else "points"
    draws = []
    for b in range(n_boot):
        if len(per_trial) > 1:  # resample whole trials (seeds) with replacement
            picked = [per_trial[i] for i in rng.integers(0, len(per_trial), len(per_trial))]
            n_b, y_b, t_b = pooled(picked)
        else:  # one trial: resample its points
            n_all, y_all, t_all = per_trial[0]
            idx = rng.integers(0, len(n_all), len(n_all))
            n_b, y_b, t_b = n_all[idx], y_all[idx], t_all[idx]
        if len(np.unique(n_b[n_b > 0])) < MIN_POINTS:
            draws.append((b, np.nan, np.nan))
            continue
        again = _fit_arrays(n_b, y_b, t_b, threshold, chance, gamma, start=fit["kappa"])
        draws.append((b, again["kappa"], again["K_star"]))
    draws = pd.DataFrame(draws, columns=["b", "kappa", "K_star"])
    k_lo, k_hi = _quantiles(draws["K_star"].to_numpy(dtype=float), ci)
    kappa_lo, kappa_hi = _quantiles(draws["kappa"].to_numpy(dtype=float), ci)

    k_star = fit["K_star"]
    observed = n_max  # the most tasks stored after a task that any retention point saw
    if np.isinf(k_star) and fit["z_star"] <= 0:
        status, note = "never", "the threshold is at or below chance accuracy"
    elif np.isinf(k_star):
        status, note = "never", (f"no fall below threshold within {MAX_TASKS:.0e} tasks "
                                 f"(no measurable decay)")
    elif k_star < n_min:
        status, note = "already_below", (f"below threshold at the first retention point "
                                         f"({n_min:g} tasks after): K* is a backward extrapolation")
    elif k_star > observed:
        status, note = "extrapolated", (f"K* = {k_star:.3g} extrapolated beyond the "
                                        f"{observed:g} tasks stored after a task in the data")
    else:
        status, note = "interpolated", ""
    result = {
        "K_star": k_star, "K_lo": k_lo, "K_hi": k_hi,
        "kappa": fit["kappa"], "kappa_lo": kappa_lo, "kappa_hi": kappa_hi,
        "status": status, "extrapolated": status in ("extrapolated", "never", "already_below"),
        "threshold": threshold, "z_star": fit["z_star"], "a0_fit": fit["a0_fit"],
        "chance": chance, "gamma": gamma,
        "n_trials": len(per_trial),
        "n_seeds": int(df["seed"].nunique()) if "seed" in df else len(per_trial),
        "n_points": len(points), "n_distinct": distinct, "n_observed": observed,
        "rmse": fit["rmse"], "ci_method": ci_method, "n_boot": n_boot, "note": note,
    }
    return (result, draws) if return_draws else result


# ---- every group -----------------------------------------------------------------------------
def capacity_table(df: pd.DataFrame, *, by: Sequence[str] = ("psp", "units"),
             threshold: float = THRESHOLD, chance: float = CHANCE, gamma: float = GAMMA,
             n_boot: int = 200, ci: float = 0.95, seed: int = 0, errors: str = "raise",
             return_draws: bool = False):
    """K* per group (default psp × units) as a DataFrame, one row per group.

    Columns: the group keys; K_star with its bootstrap interval K_lo, K_hi; kappa (κ) with
    kappa_lo, kappa_hi; status (interpolated | extrapolated | never | already_below |
    insufficient) and extrapolated (bool); threshold, z_star, a0_fit (Ā), chance, gamma;
    n_trials, n_seeds, n_points, n_distinct (distinct n > 0), n_observed (the most tasks stored
    after a task in the data); rmse of the fit (accuracy units); ci_method, n_boot, note.

    ``errors="raise"`` propagates CapacityError; ``"note"`` records the group as
    ``insufficient`` with the message in ``note`` (what plots and the CLI use). With
    ``return_draws`` also returns the bootstrap draws (group keys, b, kappa, K_star), which
    ``width_scaling`` turns into an interval for α.
    """
    by = list(by)
    tests = df[df["split"] == "test"] if "split" in df else df
    rows, all_draws = [], []
    for key, group in tests.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        keys = dict(zip(by, key))
        label = ", ".join(f"{k}={v}" for k, v in keys.items())
        try:
            result, draws = estimate_capacity(group, threshold=threshold, chance=chance,
                                              gamma=gamma, n_boot=n_boot, ci=ci, seed=seed,
                                              label=label, return_draws=True)
        except CapacityError as exc:
            if errors == "raise":
                raise
            result = {"status": "insufficient", "extrapolated": False, "note": str(exc),
                      "threshold": threshold, "chance": chance, "gamma": gamma,
                      "n_trials": group["trial_id"].nunique(),
                      "n_seeds": group["seed"].nunique() if "seed" in group else np.nan}
            draws = pd.DataFrame(columns=["b", "kappa", "K_star"])
        rows.append({**keys, **result})
        all_draws.append(draws.assign(**keys))
    columns = [*by, "K_star", "K_lo", "K_hi", "kappa", "kappa_lo", "kappa_hi", "status",
               "extrapolated", "threshold", "z_star", "a0_fit", "chance", "gamma", "n_trials",
               "n_seeds", "n_points", "n_distinct", "n_observed", "rmse", "ci_method",
               "n_boot", "note"]
    table = pd.DataFrame(rows, columns=columns)
    if not return_draws:
        return table
    draws = (pd.concat(all_draws, ignore_index=True) if all_draws
             else pd.DataFrame(columns=[*by, "b", "kappa", "K_star"]))
    return table, draws[[*by, "b", "kappa", "K_star"]]


# ---- scaling with width ----------------------------------------------------------------------
def _slope(log_u: np.ndarray, log_k: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(log_u, log_k, 1)
    return float(slope), float(intercept)


def _bootstrap_slopes(draws: pd.DataFrame, units: pd.Series) -> np.ndarray:
    """α of each bootstrap replicate b: the least-squares slope of log K*_b vs log units over
    the widths whose b-th draw is finite (replicates with fewer than 2 such widths drop out)."""
    wide = draws[draws["units"].isin(units)].pivot_table(index="b", columns="units",
                                                         values="K_star", aggfunc="first")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_k = np.log(wide.to_numpy(dtype=float))      # (B, widths); inf/NaN drop out below
    log_u = np.broadcast_to(np.log(wide.columns.to_numpy(dtype=float)), log_k.shape)
    ok = np.isfinite(log_k)
    count = ok.sum(axis=1)
    mean_u = np.where(ok, log_u, 0).sum(axis=1) / np.maximum(count, 1)
    mean_k = np.where(ok, log_k, 0).sum(axis=1) / np.maximum(count, 1)
    du = np.where(ok, log_u - mean_u[:, None], 0)
    dk = np.where(ok, log_k - mean_k[:, None], 0)
    sxx = (du * du).sum(axis=1)
    keep = (count >= 2) & (sxx > 0)
    return (du * dk).sum(axis=1)[keep] / sxx[keep]


def width_scaling(cap: pd.DataFrame, draws: pd.DataFrame | None = None, *, ci: float = 0.95,
                  by: str = "psp") -> pd.DataFrame:
    """Per superposition type: the power law K* = A·units^α, fitted as log K* = log A + α·log units
    by least squares over the widths with a finite K*.

    Interval for α: with ``draws`` (from ``capacity_table(..., return_draws=True)``) the percentile
    bootstrap — replicate b refits α on every width's b-th draw, so seed noise propagates;
    otherwise Student's t on the OLS standard error (needs ≥ 3 widths). Columns: psp, alpha,
    alpha_lo, alpha_hi, alpha_se (OLS), prefactor (A), n_widths, units_min, units_max,
    n_extrapolated (widths whose K* was extrapolated), ci_method, note.
    """
    rows = []
    for value, group in cap.groupby(by, sort=True):
        usable = group[np.isfinite(group["K_star"].astype(float)) & (group["K_star"] > 0)
                       & (group["units"] > 0)].sort_values("units")
        row = {by: value, "alpha": np.nan, "alpha_lo": np.nan, "alpha_hi": np.nan,
               "alpha_se": np.nan, "prefactor": np.nan, "n_widths": len(usable),
               "units_min": usable["units"].min() if len(usable) else np.nan,
               "units_max": usable["units"].max() if len(usable) else np.nan,
               "n_extrapolated": int(usable["extrapolated"].astype(bool).sum()),
               "ci_method": "", "note": ""}
        if usable["units"].nunique() < 2:
            row["note"] = (f"need K* at 2 or more widths to fit α; got "
                           f"{usable['units'].nunique()}")
            rows.append(row)
            continue
        log_u = np.log(usable["units"].to_numpy(dtype=float))
        log_k = np.log(usable["K_star"].to_numpy(dtype=float))
        alpha, intercept = _slope(log_u, log_k)
        row.update(alpha=alpha, prefactor=float(np.exp(intercept)))
        if len(usable) >= 3:
            row["alpha_se"] = float(stats.linregress(log_u, log_k).stderr)
        if draws is not None and len(draws):
            alphas = _bootstrap_slopes(draws[draws[by] == value], usable["units"])
            if len(alphas):
                row["alpha_lo"], row["alpha_hi"] = _quantiles(alphas, ci)
                row["ci_method"] = "bootstrap"
        if row["ci_method"] == "" and len(usable) >= 3:
            half = stats.t.ppf((1 + ci) / 2, len(usable) - 2) * row["alpha_se"]
            row.update(alpha_lo=alpha - half, alpha_hi=alpha + half, ci_method="ols")
        if row["ci_method"] == "":
            row["note"] = "2 widths: α has no interval (need bootstrap draws or 3 widths)"
        rows.append(row)
    return pd.DataFrame(rows, columns=[by, "alpha", "alpha_lo", "alpha_hi", "alpha_se", "prefactor",
                                       "n_widths", "units_min", "units_max", "n_extrapolated",
                                       "ci_method", "note"])


# ---- synthetic data from the model -----------------------------------------------------------
def simulate(kappa_by_units: dict[int, float], *, psp: str = "binary",
             seeds: Sequence[int] = range(4), tasks: int = 10, steps_per_task: int = 100,
             eval_every: int = 25, a0: float = 0.9, a0_sd: float = 0.01,
             kappa_sd: float = 0.05, noise_sd: float = 0.003, chance: float = CHANCE,
             gamma: float = GAMMA, rng_seed: int = 0, sweep: str = "synthetic") -> pd.DataFrame:
    """Test rows of a steps table generated from the model, with the training loop's schedule.

    For each width and seed: κ_seed = κ_units·exp(N(0, kappa_sd)); each task j reaches
    a₀_j ~ N(a0, a0_sd) at the end of its training (rising linearly from chance before), then
    a(n) = c + (a₀_j − c)·(1 + n/κ_seed)^(−γ) for n tasks stored after it; every measurement gets
    N(0, noise_sd) noise. Evaluated like ``trainables.loop``: task 0 and the current task every
    ``eval_every`` steps, every seen task at each boundary. The true K* for a width is
    ``capacity_from_kappa(κ_units, z_threshold(θ, a0, c))``.
    """
    rng = np.random.default_rng(rng_seed)
    rows = []
    for units, kappa in sorted(kappa_by_units.items()):
        for seed in seeds:
            kappa_seed = kappa * np.exp(rng.normal(0.0, kappa_sd))
            peaks = rng.normal(a0, a0_sd, tasks)
            trial_id = f"{sweep}-{psp}-{units}-s{seed}"
            for step in range(1, tasks * steps_per_task + 1):
                task = (step - 1) // steps_per_task
                due = set()
                if eval_every and step % eval_every == 0:
                    due |= {0, task}
                if step % steps_per_task == 0:
                    due |= set(range(task + 1))
                for j in sorted(due):
                    n = step / steps_per_task - (j + 1)
                    if n < 0:  # still training j: rising towards its peak
                        level = chance + (peaks[j] - chance) * (1 + n)
                    else:
                        kept = float(retention_model(n, kappa_seed, gamma))
                        level = chance + (peaks[j] - chance) * kept
                    accuracy = float(np.clip(level + rng.normal(0.0, noise_sd), 0.0, 1.0))
                    rows.append({"sweep": sweep, "trial_id": trial_id, "psp": psp, "units": units,
                                 "tasks": tasks, "steps_per_task": steps_per_task, "seed": seed,
                                 "eval_every": eval_every, "step": step, "task": task,
                                 "split": "test", "eval_task": j, "accuracy": accuracy})
    return pd.DataFrame(rows)
