"""Capacity: how many tasks fit in one set of weights before earlier ones fall below a threshold.

The theory (PSP's Appendix A). Task k is read out of the superposed weights as
Ŵ_k x = W_k x + ε, ε = Σ_{i≠k} W_i C_i⁻¹ C_k x. For random contexts ε's variance grows linearly
in the number of models stored, so relative to the signal it grows like sqrt(K/M): after n more
tasks, task j's signal-to-noise is SNR₀/sqrt(1 + n/κ), κ ∝ M, and to first order its accuracy
above chance c is a_j(n) − c = (A_j − c)·(1 + n/κ)^(−γ) with γ = 1/2. Capacity is then
linear in width (α = 1).

What is estimated. The theory's γ is a prior, not a fact of the data: each group (every
trial parameter that varies, ``analysis.groups``) is fitted with the curve family that
forecasts its own later measurements best (``analysis.models``: the interference law with free
γ, with γ = 1/2, an exponential or a Weibull), weighted so that task 0's dense curve counts as
one task (``analysis.retention``). A task stays usable while a(n) ≥ θ·A (θ = 0.9 by default), i.e.
while z(n) ≥ z* = (θ·Ā − c)/(Ā − c), Ā the mean fitted just-trained accuracy, so

    K* = z⁻¹(z*):   κ·(z*^(−1/γ) − 1) for the power laws,   −τ·ln z* for the exponential,
                    τ·(−ln z*)^(1/β) for the Weibull.

K* beyond the tasks measured is an extrapolation and says so (``status``). Beside it stands
K̂, read off the accuracy matrix without a model (``analysis.survival``), and whether the two
agree. The free-γ fit is reported for every group (γ̂ with its interval against 1/2).

Intervals come from a bootstrap over seeds (whole trials): the spread of the log draws with
Student's t on seeds − 1 degrees of freedom (``groups.log_t_interval``; the plain percentile
interval undercovers with a handful of seeds), or the percentile interval when a draw is
infinite. With fewer than three seeds there are none ("no interval (1 seed)"). ``width_scaling`` fits K* ∝ units^α per
configuration, weighting each width by its bootstrap precision, and tests α = 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import groups as grp
from analysis import models as mdl
from analysis import retention as ret
from analysis import survival as sv

THRESHOLD = 0.9
CHANCE = ret.CHANCE
GAMMA = ret.THEORY_GAMMA
MAX_TASKS = 1e6        # K* beyond this is reported as inf ("never", within any plausible range)
MIN_POINTS = 3
GAMMA_SPAN = 4.0       # γ counts as identified when its 95% interval spans at most this factor


class CapacityError(ValueError):
    """The capacity model cannot be fitted from the data given; the message says why."""


# ---- the theory's curve (kept for its formulas and the simulator) ----------------------------
def retention_model(n, kappa: float, gamma: float = GAMMA):
    """z(n) = (1 + n/κ)^(−γ): normalised accuracy above chance after n more tasks are stored."""
    return (1.0 + np.asarray(n, dtype=float) / kappa) ** (-gamma)


def z_threshold(threshold: float, a0: float, chance: float = CHANCE) -> float:
    """z* = (θ·a₀ − c)/(a₀ − c): the threshold a ≥ θ·a₀ in normalised units."""
    return (threshold * a0 - chance) / (a0 - chance)


def capacity_from_kappa(kappa: float, z_star: float, gamma: float = GAMMA) -> float:
    """K* = κ·(z*^(−1/γ) − 1) for the power law; inf when z* ≤ 0 (threshold at or below
    chance)."""
    if z_star <= 0:
        return float("inf")
    return kappa * (z_star ** (-1.0 / gamma) - 1.0)


def k_star(fam: ret.Family, theta, z_star: float) -> float:
    """The n at which the family's curve reaches z*: inf with no measurable decay (the scale
    at its upper bound), a threshold at or below chance, or beyond MAX_TASKS."""
    if z_star <= 0 or fam.at_bound(theta):
        return float("inf")
    if z_star >= 1:
        return 0.0
    k = float(fam.crossing(z_star, *theta))
    return float("inf") if k > MAX_TASKS else k


# ---- one group -------------------------------------------------------------------------------
def _checked_points(df, threshold, chance, label):
    if not 0 < threshold < 1:
        raise CapacityError(f"threshold must be in (0, 1) (a fraction of the just-trained "
                            f"accuracy); got {threshold}")
    points = ret.retention_points(df, chance)
    distinct = points.loc[points["n"] > 0, "n"].nunique() if len(points) else 0
    if distinct < MIN_POINTS:
        where = f" for {label}" if label else ""
        raise CapacityError(
            f"need at least {MIN_POINTS} retention points to fit the capacity model{where}; got "
            f"{distinct} (distinct numbers of tasks stored after a learned task; run more tasks "
            f"or evaluate more often with eval_every)")
    return points, distinct


def _status(k: float, z_star: float, n_min: float, observed: float) -> tuple[str, str]:
    if np.isinf(k) and z_star <= 0:
        return "never", "the threshold is at or below chance accuracy"
    if np.isinf(k):
        return "never", f"no fall below threshold within {MAX_TASKS:.0e} tasks (no measurable decay)"
    if k < n_min:
        return "already_below", (f"below threshold at the first retention point ({n_min:g} "
                                 f"tasks after): K* is a backward extrapolation")
    if k > observed:
        return "extrapolated", (f"K* = {k:.3g} extrapolated beyond the {observed:g} tasks "
                                f"stored after a task in the data")
    return "interpolated", ""


def _gamma_report(power: mdl.GroupModel, ci: float) -> dict:
    gamma = power.fit.natural()["gamma"]
    out = {"gamma": gamma, "gamma_lo": np.nan, "gamma_hi": np.nan}
    if power.boot is None:
        out["gamma_vs_theory"] = f"γ̂ = {gamma:.2f}, {power.interval_note}"
        return out
    lo, hi = grp.log_t_interval(gamma, np.exp(power.boot[:, 1]), power.n_seeds, ci)
    out.update(gamma_lo=lo, gamma_hi=hi)
    bounds = np.exp(ret.LOG_GAMMA)
    if gamma >= bounds[1] * 0.99 or gamma <= bounds[0] * 1.01:
        side = "upper" if gamma >= bounds[1] * 0.99 else "lower"
        out["gamma_vs_theory"] = (f"γ̂ at its {side} bound ({gamma:.2g}): no power law in range "
                                  f"fits" + (" (an exponential-like fall)" if side == "upper"
                                             else ""))
    elif hi / lo > GAMMA_SPAN or lo <= bounds[0] * 1.01 or hi >= bounds[1] * 0.99:
        out["gamma_vs_theory"] = (f"γ not identified: {ci:.0%} interval [{lo:.2f}, {hi:.2f}] "
                                  f"spans more than a factor {GAMMA_SPAN:g}")
    elif lo <= GAMMA <= hi:
        out["gamma_vs_theory"] = f"consistent with 1/2: [{lo:.2f}, {hi:.2f}]"
    else:
        out["gamma_vs_theory"] = (f"departs from 1/2: γ̂ = {gamma:.2f} [{lo:.2f}, {hi:.2f}], "
                                  f"{gamma / GAMMA:.2g}× the theory's")
    return out


def estimate_capacity(df: pd.DataFrame, *, threshold: float = THRESHOLD, chance: float = CHANCE,
                      family: str = "auto", n_boot: int = 200, ci: float = 0.95, seed: int = 0,
                      label: str = "", trials: pd.DataFrame | None = None,
                      return_draws: bool = False):
    """K* and K̂ of the trials in ``df`` (one group), with bootstrap intervals over seeds.

    Returns a dict (fields: see ``capacity_table``), plus the bootstrap draws (b, scale,
    K_star) as a DataFrame when ``return_draws``. Raises CapacityError with fewer than three
    distinct retention points (n values) or a threshold outside (0, 1).
    """
    points, distinct = _checked_points(df, threshold, chance, label)
    model = mdl.fit_points(points, chance, family, n_boot=n_boot, seed=seed)
    fam, theta = model.family, model.fit.theta
    a0_fit = chance + float(np.nanmean(model.fit.b))
    z_star = z_threshold(threshold, a0_fit, chance)
    k = k_star(fam, theta, z_star)
    draws = pd.DataFrame({"b": pd.Series(dtype=int), "scale": pd.Series(dtype=float),
                          "K_star": pd.Series(dtype=float)})
    k_lo = k_hi = s_lo = s_hi = np.nan
    if model.boot is not None:
        ks = [k_star(fam, t, z_threshold(threshold, chance + mb, chance))
              for t, mb in zip(model.boot, model.boot_mean_b)]
        draws = pd.DataFrame({"b": np.arange(len(ks)), "scale": np.exp(model.boot[:, 0]),
                              "K_star": ks})
        k_lo, k_hi = grp.seed_interval(k, draws["K_star"], model.n_seeds, ci)
        s_lo, s_hi = grp.seed_interval(float(np.exp(theta[0])), draws["scale"], model.n_seeds, ci)
    n_min = float(points.loc[points["n"] > 0, "n"].min())
    observed = float(points["n"].max())
    status, note = _status(k, z_star, n_min, observed)
    power = model if fam.name == "power" else mdl.fit_points(points, chance, "power",
                                                             n_boot=n_boot, seed=seed)
    residual = 100 * (model.points["accuracy"] - model.points["fitted"])
    khat = sv.survival_capacity(df, threshold, chance=chance, trials=trials, n_boot=n_boot, ci=ci,
                                seed=seed)
    result = {
        "K_star": k, "K_lo": k_lo, "K_hi": k_hi, "status": status,
        "extrapolated": status in ("extrapolated", "never", "already_below"),
        **khat,
        "agreement": sv.agreement(k, k_lo, k_hi, observed, khat["K_hat"], khat["K_hat_lo"],
                                  khat["K_hat_hi"], khat["K_hat_follow_up"]),
        "family": fam.name, "scale": float(np.exp(theta[0])), "scale_lo": s_lo, "scale_hi": s_hi,
        **_gamma_report(power, ci),
        "threshold": threshold, "z_star": z_star, "a0_fit": a0_fit, "chance": chance,
        "n_trials": int(df["trial_id"].nunique()), "n_seeds": model.n_seeds,
        "n_diverged": grp.n_diverged(df, trials),
        "n_points": len(points), "n_distinct": distinct, "n_observed": observed,
        "rmse": 100 * model.fit.rmse,
        "trend": ret.residual_trend(model.points["n"], residual, model.points["weight"]),
        "selection": _selection_text(model.selection),
        "ci_method": model.interval_note or "seeds", "n_boot": n_boot if model.boot is not None
        else 0, "note": note,
    }
    return (result, draws) if return_draws else result


def _selection_text(selection: pd.DataFrame) -> str:
    if selection.empty:
        return "fixed"
    if selection["heldout_rmse"].isna().all():
        return "too short to hold out: the theory's curve"
    return "; ".join(f"{r.family} {100 * r.heldout_rmse:.2f}" for r in selection.itertuples())


# ---- every group -----------------------------------------------------------------------------
RESULT_COLUMNS = [
    "K_star", "K_lo", "K_hi", "status", "extrapolated", "K_hat", "K_hat_lo", "K_hat_hi",
    "K_hat_status", "K_hat_follow_up", "K_hat_tasks", "K_hat_events", "K_hat_diverged",
    "K_hat_ci", "agreement", "family", "scale", "scale_lo", "scale_hi", "gamma", "gamma_lo",
    "gamma_hi", "gamma_vs_theory", "threshold", "z_star", "a0_fit", "chance", "n_trials",
    "n_seeds", "n_diverged", "n_points", "n_distinct", "n_observed", "rmse", "trend",
    "selection", "ci_method", "n_boot", "note"]


def capacity_table(df: pd.DataFrame, *, by: Sequence[str] | None = None,
                   trials: pd.DataFrame | None = None, threshold: float = THRESHOLD,
                   chance: float = CHANCE, family: str = "auto", n_boot: int = 200,
                   ci: float = 0.95, seed: int = 0, errors: str = "raise",
                   return_draws: bool = False):
    """K* and K̂ per group, one row per group.

    Groups: ``by``, or every trial parameter that varies (``analysis.groups``; ``trials``
    adds config-only parameters and the status that makes a diverged trial count as failing
    its tasks in K̂). Columns: the group keys, then
    - K_star [K_lo, K_hi] (model; bootstrap over seeds), status (interpolated | extrapolated |
      never | already_below | insufficient), extrapolated;
    - K_hat [K_hat_lo, K_hat_hi] (Kaplan–Meier median, inf: censored), K_hat_status,
      K_hat_follow_up, K_hat_tasks/events/diverged, K_hat_ci; agreement (K* vs K̂, in words);
    - family (the curve chosen), scale (κ or τ) with its interval; gamma [gamma_lo, gamma_hi]
      of the free-γ fit and gamma_vs_theory; rmse (accuracy points, weighted) and trend
      (residual slope, points per 10 tasks); selection (each family's held-out rms error);
    - threshold, z_star, a0_fit (Ā), chance, n_trials, n_seeds, n_diverged, n_points,
      n_distinct, n_observed, ci_method ("seeds" or why there is no interval), n_boot, note.

    ``errors="note"`` records a group that cannot be fitted as ``insufficient`` with the reason
    in ``note`` instead of raising. ``return_draws`` also returns the bootstrap draws (keys, b,
    scale, K_star), which ``width_scaling`` turns into an interval for α.
    """
    tests = df[df["split"] == "test"] if "split" in df else df
    if by is None:
        tests, by = grp.grouped(tests, trials)
    by = list(by)
    rows, all_draws = [], []
    for keys, group in grp.groups(tests, by):
        try:
            result, draws = estimate_capacity(group, threshold=threshold, chance=chance,
                                              family=family, n_boot=n_boot, ci=ci, seed=seed,
                                              label=grp.label(keys), trials=trials,
                                              return_draws=True)
        except CapacityError as exc:
            if errors == "raise":
                raise
            result = {"status": "insufficient", "extrapolated": False, "note": str(exc),
                      "threshold": threshold, "chance": chance,
                      "n_trials": group["trial_id"].nunique(), "n_seeds": grp.n_seeds(group),
                      "n_diverged": grp.n_diverged(group, trials),
                      **sv.survival_capacity(group, threshold, chance=chance, trials=trials,
                                             n_boot=n_boot, ci=ci, seed=seed)}
            draws = pd.DataFrame(columns=["b", "scale", "K_star"])
        rows.append({**keys, **result})
        all_draws.append(draws.assign(**keys))
    for keys, group in grp.unmeasured(trials, by, tests):  # counted, not dropped
        diverged = int((group["status"] == "diverged").sum()) if "status" in group else 0
        rows.append({**keys, "status": "insufficient", "extrapolated": False,
                     "threshold": threshold, "chance": chance, "n_trials": len(group),
                     "n_seeds": grp.n_seeds(group), "n_diverged": diverged,
                     "note": f"no test measurements ({diverged} of {len(group)} trials "
                             f"diverged before any)"})
    table = pd.DataFrame(rows, columns=[*by, *RESULT_COLUMNS])
    table = table.sort_values(by, kind="stable").reset_index(drop=True)
    if not return_draws:
        return table
    draws = (pd.concat(all_draws, ignore_index=True) if all_draws
             else pd.DataFrame(columns=[*by, "b", "scale", "K_star"]))
    return table, draws[[*by, "b", "scale", "K_star"]]


def group_keys(table: pd.DataFrame) -> list[str]:
    """The group columns of a ``capacity_table``: every column that is not a result."""
    return [c for c in table.columns if c not in RESULT_COLUMNS]


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
