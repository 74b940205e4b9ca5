"""Forecasts of accuracy after more tasks, with prediction intervals (``analysis.backtesting``
checks them against what was measured later).

``forecast(df, fit_tasks=m, horizon=T)`` fits each group on the measurements taken while the
first m tasks trained (step ≤ m·steps_per_task) and predicts, per trial and for the seed mean,
task 0's accuracy after each of T tasks and the final accuracy row R[T−1, ·].

Point forecast of trial s, task j after n later tasks: c + b_sj·z(n; θ̂), with the group's
curve θ̂ and the task's own fitted amplitude b_sj = A_sj − c; a task not trained by task m
gets the mean amplitude of its trial's tasks.

Prediction interval (level 90% by default), from draws that add, in turn:

1. the seed-to-seed spread of the curve and the uncertainty of the group's fit: θ drawn as
   θ̂ + f·(θ_b − θ̂), θ_b the seed-bootstrap refits. The bootstrap spread of a fit pooled over
   S seeds is about the seed-to-seed spread / √S, so one trial's curve (its own deviation plus
   the fit's error) gets f = √(S + 1) and a mean over the S seeds (its deviation /√S plus the
   fit's error) gets f = √2;
2. the task-to-task spread of forgetting: each (trial, task) its own log-scale deviation
   ~ N(0, σ_u²) (``models.unit_spread``, estimated in the fit window). In a seed mean the
   deviation of task j is one draw for all seeds: task j may be the same task in every seed
   (task 0 of permuted MNIST is the plain image; iCIFAR's splits are fixed);
3. the amplitudes refitted under each drawn θ, and for a task not yet trained, its trial's mean
   amplitude plus the within-trial spread of amplitudes;
4. the scatter σ_e of single tests around their task's curve, measured in the fit window.
   Not the binomial s.d. of a test on N images (0.8 points at 93% on 1000): every test of a
   task reuses the same images, so that sampling error is a fixed offset of the task, which its
   fitted amplitude carries; repeated tests scattered by 0.2–0.5 points on the study's
   development seeds.

With fewer than three seeds there is no bootstrap and no interval ("no interval (n seeds)").
The intervals cover the uncertainty within a family, not the error of extrapolating the wrong
family: that is what ``backtest`` measures.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import groups as grp
from analysis import models as mdl
from analysis import retention as ret

LEVEL = 0.9
DRAWS_PER_BOOT = 5
METHOD = "seed bootstrap of the curve + task-to-task spread + test scatter"


class ForecastError(ValueError):
    """The data cannot support the forecast asked for; the message says why in one line."""


def window(frame: pd.DataFrame, fit_tasks: int) -> pd.DataFrame:
    spt = frame["steps_per_task"].astype(int)
    return frame[frame["step"] <= fit_tasks * spt]


def evaluations(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] == "test"] if "split" in df else df


# ---- draws -----------------------------------------------------------------------------------
def _draws(model: mdl.GroupModel, targets: pd.DataFrame, factor: float,
           rng: np.random.Generator, shared_tasks: bool = False) -> np.ndarray:
    """(D, P) draws of the measured accuracy at each target (trial_id, eval_task, n).
    ``shared_tasks``: one task deviation per task index, the same in every trial."""
    fam, theta = model.family, model.fit.theta
    boot = np.repeat(model.boot, DRAWS_PER_BOOT, axis=0)
    bounds = np.array(fam.bounds)
    thetas = np.clip(theta + factor * (boot - theta), bounds[:, 0], bounds[:, 1])
    cols = [thetas[:, i:i + 1] for i in range(thetas.shape[1])]
    a = model.arrays
    b = ret.amplitudes(fam.shape(a.n[None, :], *cols), a.y, a.unit, a.w, a.m)   # (D, m)
    units = model.units
    key = dict(zip(zip(units["trial_id"], units["eval_task"]), units.index))
    index = np.array([key.get((t, int(j)), -1) for t, j in
                      zip(targets["trial_id"], targets["eval_task"])])
    trial_codes, trials = pd.factorize(units["trial_id"])
    per_trial = np.stack([np.nanmean(b[:, trial_codes == k], axis=1)
                          for k in range(len(trials))], axis=1)                     # (D, trials)
    spread = _amplitude_spread(units)
    target_trial = pd.Index(trials).get_indexer(targets["trial_id"])
    amp = np.where(index >= 0, b[:, np.maximum(index, 0)],
                   per_trial[:, np.maximum(target_trial, 0)]
                   + rng.normal(0.0, spread, (len(b), len(targets))))
    # Each target's unit (trial, task) gets its own log-scale deviation: tasks forget unalike.
    # Task j may be the same task in every seed (task 0 of permuted MNIST is the plain image;
    # iCIFAR's splits are fixed), so a seed mean does not average its deviation away.
    if shared_tasks:
        codes, uniques = pd.factorize(targets["eval_task"])
        scale = cols[0] + rng.normal(0.0, model.unit_sd, (len(b), len(uniques)))[:, codes]
    else:
        scale = cols[0] + rng.normal(0.0, model.unit_sd, (len(b), len(targets)))
    value = model.chance + amp * fam.shape(targets["n"].to_numpy(float)[None, :], scale, *cols[1:])
    value = value + rng.normal(0.0, model.jitter, value.shape)
    return np.clip(value, 0.0, 1.0)


def _amplitude_spread(units: pd.DataFrame) -> float:
    """The s.d. of a task's amplitude around its trial's mean, pooled over trials."""
    deviations = units["b"] - units.groupby("trial_id")["b"].transform("mean")
    dof = len(units) - units["trial_id"].nunique()
    return float(np.sqrt(np.nansum(deviations ** 2) / dof)) if dof > 0 else 0.0


def intervals(model: mdl.GroupModel, targets: pd.DataFrame, level: float, seed: int = 0,
              mean_over: list[str] | None = None) -> pd.DataFrame:
    """Prediction intervals lo, hi for each target row (one trial's measurement), or, with
    ``mean_over`` (the columns that identify a seed-mean point, e.g. eval_task and n), for the
    mean over the trials listed for it. NaN without a bootstrap."""
    qs = [(1 - level) / 2, (1 + level) / 2]
    if mean_over is None:
        out = pd.DataFrame({"lo": np.nan, "hi": np.nan}, index=targets.index)
        if model.boot is None or targets.empty:
            return out
        factor = np.sqrt(model.n_seeds + 1)
        rng = np.random.default_rng(seed)
        for start in range(0, len(targets), 2000):
            part = targets.iloc[start:start + 2000]
            values = _draws(model, part, factor, rng)
            out.loc[part.index, ["lo", "hi"]] = np.quantile(values, qs, axis=0).T
        return out
    keys = targets.groupby(mean_over, sort=True).size().index
    out = pd.DataFrame({"lo": np.nan, "hi": np.nan}, index=keys)
    if model.boot is None or targets.empty:
        return out
    rng = np.random.default_rng(seed)
    values = _draws(model, targets, np.sqrt(2.0), rng, shared_tasks=True)
    codes = targets.groupby(mean_over, sort=True).ngroup().to_numpy()
    sums = np.zeros((len(values), len(keys)))
    np.add.at(sums.T, codes, values.T)
    means = sums / np.bincount(codes, minlength=len(keys))
    out[["lo", "hi"]] = np.quantile(means, qs, axis=0).T
    return out


# ---- forecast --------------------------------------------------------------------------------
@dataclass
class Forecast:
    """Per group and trial (``trial_id`` "mean": the seed mean): ``task0`` (n = 0..T−1, i.e.
    after 1..T tasks) and ``final_row`` (R[T−1, j], j = 0..T−1), each with pred, lo, hi and
    interval (the method, or why there is none); ``models`` one row per group."""

    task0: pd.DataFrame
    final_row: pd.DataFrame
    models: pd.DataFrame
    fitted: dict = field(default_factory=dict)   # group label → GroupModel


def forecast(df: pd.DataFrame, fit_tasks: int, horizon: int, *, family: str = "auto",
             trials: pd.DataFrame | None = None, level: float = LEVEL, n_boot: int = 200,
             chance: float = ret.CHANCE, seed: int = 0) -> Forecast:
    """Fit each group on its first ``fit_tasks`` tasks; forecast up to ``horizon`` tasks (see
    the module docstring). Raises ForecastError when no group can be fitted."""
    if fit_tasks < 2:
        raise ForecastError(f"fit_tasks {fit_tasks}: need at least 2 tasks to fit retention")
    if horizon < 1:
        raise ForecastError(f"horizon {horizon}: must be at least 1 task")
    tests, by = grp.grouped(evaluations(df), trials)
    task0, final, rows, fitted = [], [], [], {}
    for keys, frame in grp.groups(tests, by):
        model, note = fit_window(frame, fit_tasks, family, chance, n_boot, seed)
        rows.append({**keys, **_model_row(model, note, fit_tasks)})
        if model is None:
            continue
        fitted[grp.label(keys)] = model
        trial_ids = sorted(model.units["trial_id"].unique())
        seeds = model.units.drop_duplicates("trial_id").set_index("trial_id")["seed"]
        curve = pd.DataFrame([(t, 0, n) for t in trial_ids for n in range(horizon)],
                             columns=["trial_id", "eval_task", "n"])
        curve = curve[curve.set_index(["trial_id", "eval_task"]).index.isin(
            model.units.set_index(["trial_id", "eval_task"]).index)]
        row = pd.DataFrame([(t, j, horizon - 1 - j) for t in trial_ids for j in range(horizon)],
                           columns=["trial_id", "eval_task", "n"])
        for targets, sink in ((curve, task0), (row, final)):
            targets = targets.reset_index(drop=True).assign(seed=lambda t: seeds[t.trial_id].values)
            targets = targets.assign(tasks_trained=targets["n"] + targets["eval_task"] + 1,
                                     pred=mdl.predict_known(model, targets))
            targets = targets.join(intervals(model, targets, level, seed))
            means = targets.groupby(["eval_task", "n"], sort=True).agg(
                tasks_trained=("tasks_trained", "first"), pred=("pred", "mean"),
                seeds=("seed", "nunique")).join(
                intervals(model, targets, level, seed, ["eval_task", "n"]))
            means = means.reset_index().assign(trial_id="mean", seed=pd.NA)
            both = pd.concat([targets, means], ignore_index=True)
            sink.append(both.assign(**keys, level=level,
                                    interval=model.interval_note or METHOD))
    if not fitted:
        notes = "; ".join(f"{grp.label({k: r[k] for k in by})}: {r['note']}" for r in rows)
        raise ForecastError(f"no group could be fitted on its first {fit_tasks} tasks ({notes})")
    order = [*by, "trial_id", "seed", "eval_task", "n", "tasks_trained", "pred", "lo", "hi",
             "level", "interval"]
    return Forecast(pd.concat(task0, ignore_index=True)[order],
                    pd.concat(final, ignore_index=True)[order], pd.DataFrame(rows), fitted)


def fit_window(frame, fit_tasks, family, chance, n_boot, seed):
    """(GroupModel, "") or (None, why not)."""
    points = ret.retention_points(window(frame, fit_tasks), chance)
    distinct = points.loc[points["n"] > 0, "n"].nunique() if len(points) else 0
    if distinct < 3:
        return None, (f"{distinct} distinct retention points in the first {fit_tasks} tasks; "
                      f"need 3")
    return mdl.fit_points(points, chance, family, n_boot=n_boot, seed=seed), ""


def _model_row(model, note: str, fit_tasks: int) -> dict:
    if model is None:
        return {"fit_tasks": fit_tasks, "family": "", "note": note}
    chosen = model.selection
    return {"fit_tasks": fit_tasks, "family": model.family.name, **model.fit.natural(),
            "rmse": model.fit.rmse, "n_seeds": model.n_seeds,
            "selection": "; ".join(f"{r.family} {100 * r.heldout_rmse:.2f}"
                                   for r in chosen.itertuples()) if len(chosen) else "fixed",
            "note": model.interval_note}
