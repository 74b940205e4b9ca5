"""The backtest: forecast every group from its first m tasks, compare with what was measured
after, and say how far off the forecasts were and how often their intervals held the truth.

Held-out points are the accuracy-matrix entries R[i, j] measured at the end of task i ≥ m (one
per trial, task and n = i − j, so no task's dense curve outweighs the others); tasks j ≥ m had
not been trained when the model was fitted, so their amplitude is forecast too. Errors are
forecast − measured, in accuracy points (×100).

Per group the summary gives:
- task 0 after all T tasks (R[T−1, 0]; ``task0_after`` says after how many, fewer while a
  sweep still runs): the seed mean forecast with its interval against the measured seed mean
  (the headline: ``task0_err``), and per trial the mean absolute error and how many trials'
  intervals covered their measurement;
- all held-out points of single trials: mean absolute error, rms error and interval coverage;
  the final row R[T−1, ·] alone; the seed-mean points;
- each family's rms error on the held-out points of tasks it had seen (``rmse_<family>``,
  a point forecast from the same window) and the best of them: which curve predicted best;
- ``applies``: whether the model claims to apply, judged in the fit window alone — the chosen
  curve, fitted on the window's first half, forecast its second half within APPLIES_HELDOUT
  points rms (``window_heldout``).
A diverged trial stays in the counts (``n_diverged``); it has no measurements to compare after
it diverged.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import forecasting as fc
from analysis import groups as grp
from analysis import models as mdl
from analysis import retention as ret
from analysis.metrics import accuracy_matrix

# Where the model claims to apply: its own forecast inside the fit window (fitted on the
# first half, scored on the second) erred by at most this many points, rms. Frozen on the
# study's development seeds: 0.5–0.9 for the PSP groups, 5.8 for the standard network.
APPLIES_HELDOUT = 2.0


@dataclass
class Backtest:
    """``points``: every held-out measurement of a single trial with pred, lo, hi, covered;
    ``means``: the same per (group, task, n) over seeds; ``summary``: one row per group;
    ``curves``: task 0's measured seed-mean curve and its forecast, for the figure."""

    points: pd.DataFrame
    means: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    by: list
    fit_tasks: int
    level: float


def held_out(frame: pd.DataFrame, fit_tasks: int) -> pd.DataFrame:
    """R[i, j] for i ≥ fit_tasks of every trial: trial_id, seed, eval_task (j), trained (i),
    n (i − j), measured."""
    rows = []
    for trial_id, trial in frame.groupby("trial_id", sort=True):
        R = accuracy_matrix(trial).to_numpy(dtype=float)
        seed = trial["seed"].iloc[0] if "seed" in trial else trial_id
        for i in range(fit_tasks, len(R)):
            for j in np.flatnonzero(np.isfinite(R[i, :i + 1])):
                rows.append((trial_id, seed, int(j), i, i - int(j), R[i, j]))
    return pd.DataFrame(rows, columns=["trial_id", "seed", "eval_task", "trained", "n",
                                       "measured"])


def backtest(df: pd.DataFrame, fit_tasks: int, *, trials: pd.DataFrame | None = None,
             family: str | Mapping[tuple, str] = "auto", families=mdl.DEFAULT_FAMILIES,
             level: float = fc.LEVEL, n_boot: int = 200, chance: float = ret.CHANCE,
             seed: int = 0) -> Backtest:
    """Forecast each group from its first ``fit_tasks`` tasks and score the forecasts on every
    later measurement (see the module docstring). ``family``: one curve family for every
    group, 'auto' (chosen inside each group's window), or a mapping from a group's key values
    (in ``by`` order) to its family — e.g. the family that forecast best on other runs (see
    ``families_from``); groups it lacks choose inside the window. Raises ForecastError when
    the split leaves nothing to fit or nothing to compare."""
    tests, by = grp.grouped(fc.evaluations(df), trials)
    if tests.empty:
        raise fc.ForecastError("no test measurements to backtest")
    most = int(tests["tasks"].max())
    if fit_tasks < 2:
        raise fc.ForecastError(f"fit_tasks {fit_tasks}: need at least 2 tasks to fit retention")
    if fit_tasks >= most:
        raise fc.ForecastError(f"fit_tasks {fit_tasks}: the trials ran at most {most} tasks, "
                               f"so no later task is left to compare the forecast with")
    points, means, rows, curves = [], [], [], []
    for keys, frame in grp.groups(tests, by):
        tasks = int(frame["tasks"].max())
        row = {**keys, "fit_tasks": fit_tasks, "tasks": tasks,
               "n_trials": frame["trial_id"].nunique(), "n_seeds": grp.n_seeds(frame),
               "n_diverged": grp.n_diverged(frame, trials)}
        if tasks <= fit_tasks:
            rows.append({**row, "note": f"ran {tasks} tasks: nothing after task {fit_tasks}"})
            continue
        chosen = (family if isinstance(family, str)
                  else family.get(tuple(keys[name] for name in by), "auto"))
        model, note = fc.fit_window(frame, fit_tasks, chosen, chance, n_boot, seed)
        if model is None:
            rows.append({**row, "note": note})
            continue
        out = held_out(frame, fit_tasks)
        out = out.assign(pred=mdl.predict_known(model, out) if len(out) else [])
        out = out.join(fc.intervals(model, out, level, seed))
        out["covered"] = _covered(out)
        mean = out.groupby(["eval_task", "n"], sort=True).agg(
            trained=("trained", "first"), measured=("measured", "mean"), pred=("pred", "mean"),
            seeds=("seed", "nunique")).join(
            fc.intervals(model, out, level, seed, ["eval_task", "n"])).reset_index()
        mean["covered"] = _covered(mean)
        # The last row measured: T − 1 once the group has finished, earlier while it runs.
        last = int(out["trained"].max()) if len(out) else tasks - 1
        row.update(_scores(out, mean, last), task0_after=last + 1)
        row.update(_family_scores(model, out, fit_tasks, families, chance, last))
        heldout = _window_heldout(model, chance)
        row.update(family=model.family.name, window_rmse=model.fit.rmse,
                   window_trend=_window_trend(model), window_heldout=heldout,
                   applies=bool(heldout <= APPLIES_HELDOUT),
                   interval=model.interval_note or f"{level:.0%}: {fc.METHOD}",
                   note="")
        rows.append(row)
        points.append(out.assign(**keys, family=model.family.name))
        means.append(mean.assign(**keys, family=model.family.name))
        curves.append(_task0_curve(model, frame, fit_tasks, tasks, level, seed)
                      .assign(**keys))
    summary = pd.DataFrame(rows)
    if not points:
        notes = "; ".join(f"{grp.label({k: r[k] for k in by})}: {r['note']}"
                          for r in summary.to_dict("records"))
        raise fc.ForecastError(f"no group could be backtested from its first {fit_tasks} "
                               f"tasks ({notes})")
    return Backtest(pd.concat(points, ignore_index=True), pd.concat(means, ignore_index=True),
                    summary, pd.concat(curves, ignore_index=True), by, fit_tasks, level)


def families_from(result: Backtest) -> dict[tuple, str]:
    """Per group (key values in ``result.by`` order), the family whose forecasts from the same
    window erred least on ``result``'s later measurements (``best_family``): a choice made on
    the runs ``result`` scored, to be used on others."""
    summary = result.summary
    if "best_family" not in summary:
        return {}
    known = summary[summary["best_family"].fillna("") != ""]
    return {tuple(row[name] for name in result.by): row["best_family"]
            for row in known.to_dict("records")}


def _covered(frame: pd.DataFrame) -> np.ndarray:
    """1.0 where lo ≤ measured ≤ hi, 0.0 where not, NaN where there is no interval."""
    inside = (frame["lo"] <= frame["measured"]) & (frame["measured"] <= frame["hi"])
    return np.where(frame["lo"].isna(), np.nan, inside.astype(float))


def _coverage(covered: pd.Series) -> float:
    known = covered.dropna()
    return float(known.mean()) if len(known) else float("nan")


def _scores(out: pd.DataFrame, mean: pd.DataFrame, last: int) -> dict:
    err = 100 * (out["pred"] - out["measured"])
    t0 = out[(out["eval_task"] == 0) & (out["trained"] == last)]
    t0_mean = mean[(mean["eval_task"] == 0) & (mean["trained"] == last)]
    final = out[out["trained"] == last]
    result = {
        "task0_measured": np.nan, "task0_pred": np.nan, "task0_lo": np.nan, "task0_hi": np.nan,
        "task0_err": np.nan, "task0_covered": np.nan,
        "task0_trial_mae": float((100 * (t0["pred"] - t0["measured"])).abs().mean()),
        "task0_trial_covered": int(np.nansum(t0["covered"])),
        "task0_trials": len(t0),
        "points_mae": float(err.abs().mean()), "points_rmse": float(np.sqrt((err ** 2).mean())),
        "points_bias": float(err.mean()), "points_coverage": _coverage(out["covered"]),
        "n_points": len(out),
        "final_mae": float((100 * (final["pred"] - final["measured"])).abs().mean()),
        "final_coverage": _coverage(final["covered"]),
        "means_mae": float((100 * (mean["pred"] - mean["measured"])).abs().mean()),
        "means_coverage": _coverage(mean["covered"]),
    }
    if len(t0_mean):
        r = t0_mean.iloc[0]
        result.update(task0_measured=r["measured"], task0_pred=r["pred"], task0_lo=r["lo"],
                      task0_hi=r["hi"], task0_err=100 * (r["pred"] - r["measured"]),
                      task0_covered=r["covered"])
    return result


def _family_scores(model, out, fit_tasks, families, chance, last) -> dict:
    """Each family's point forecast from the same window, scored on the held-out points of
    tasks the window had trained (their amplitudes are known; later tasks' are not a matter of
    the curve), and on the seed mean of task 0 after all tasks."""
    seen = out[out["eval_task"] < fit_tasks]
    result, best, best_rmse = {}, "", np.inf
    for name in families:
        other = model if name == model.family.name else mdl.fit_points(
            model.points.drop(columns=["unit", "fitted"]), chance, name)
        pred = mdl.predict_known(other, seen)
        rmse = float(100 * np.sqrt(np.mean((pred - seen["measured"]) ** 2))) if len(seen) else np.nan
        t0 = seen[(seen["eval_task"] == 0) & (seen["trained"] == last)]
        t0_err = (float(100 * (mdl.predict_known(other, t0).mean() - t0["measured"].mean()))
                  if len(t0) else np.nan)
        result[f"rmse_{name}"], result[f"task0_err_{name}"] = rmse, t0_err
        if np.isfinite(rmse) and rmse < best_rmse:
            best, best_rmse = name, rmse
    result["best_family"] = best
    return result


def _window_heldout(model, chance: float) -> float:
    """The chosen family's rms error (points) at the rolling origin inside the fit window."""
    selection = model.selection
    if selection.empty:   # a family given, not chosen: score it the same way
        selection = mdl.select_family(model.points.drop(columns=["unit", "fitted"]), chance,
                                      (model.family.name,))
    mine = selection.loc[selection["family"] == model.family.name, "heldout_rmse"]
    return float(100 * mine.iloc[0]) if len(mine) else float("nan")


def _window_trend(model) -> float:
    p = model.points
    return ret.residual_trend(p["n"], 100 * (p["accuracy"] - p["fitted"]), p["weight"])


def _task0_curve(model, frame, fit_tasks, tasks, level, seed) -> pd.DataFrame:
    """Task 0's measured seed mean at every evaluation, and the forecast seed mean (with its
    interval) at every task boundary; ``fitted`` marks the window the model saw."""
    task0 = frame[frame["eval_task"] == 0]
    spt = float(frame["steps_per_task"].iloc[0])
    measured = (task0.assign(tasks_trained=task0["step"] / spt)
                .groupby("tasks_trained")["accuracy"].mean().rename("measured").reset_index())
    trial_ids = sorted(model.units.loc[model.units["eval_task"] == 0, "trial_id"].unique())
    grid = pd.DataFrame([(t, 0, n) for t in trial_ids for n in range(tasks)],
                        columns=["trial_id", "eval_task", "n"])
    grid = grid.assign(seed=0, pred=mdl.predict_known(model, grid) if len(grid) else [])
    forecast = grid.groupby("n", sort=True).agg(pred=("pred", "mean"))
    forecast = forecast.join(fc.intervals(model, grid.assign(eval_task=0), level, seed,
                                          ["n"]))
    forecast = forecast.reset_index().assign(tasks_trained=lambda f: f["n"] + 1.0)
    both = measured.merge(forecast, on="tasks_trained", how="outer").sort_values("tasks_trained")
    return both.assign(fitted=both["tasks_trained"] <= fit_tasks)
