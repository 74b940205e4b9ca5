"""K̂: a model-free capacity read off the accuracy matrix, beside the model's K*.

For each learned task j of a trial (R[j, j] ≥ c + MIN_GAIN) its *survival time* is the number
of later tasks after which it is first measured below θ·R[j, j]:

    t_j = min { n ≥ 1 : R[j + n, j] < θ·R[j, j] }.

A task never measured below is right-censored at its follow-up, the last n at which it was
measured (T − 1 − j in a finished trial). A trial that diverged (status ``diverged`` in the
trials table) can serve none of its tasks afterwards: every task still above threshold at its
last measured row L fails at n = L + 1 − j. A trial that merely stopped early (still running)
censors them there instead.

The tasks of a group (every trial, every learned task) are pooled in a Kaplan–Meier estimate

    S(t) = Π_{t_i ≤ t} (1 − d_i / r_i),

d_i the tasks failing at t_i and r_i those still at risk (time ≥ t_i), and

    K̂ = min { t : S(t) ≤ 1/2 },

the median survival time: half the tasks of such a network fall below θ of their just-trained
accuracy within K̂ later tasks. When S stays above 1/2 over the follow-up, K̂ is censored:
"> t_max", t_max the longest follow-up with tasks at risk.

K̂ counts whole tasks and first failures, so a noise-free curve crossing its threshold at
K* gives K̂ = ⌈K*⌉: the two agree when K*'s interval meets [K̂_lo − 1, K̂_hi]. Measurement
noise makes K̂ a little pessimistic (one dip below counts), and pooling assumes that every task
of a trial forgets alike, whatever its position (what K* assumes too).

The interval is a percentile bootstrap over seeds (whole trials, all their tasks), none with
fewer than three seeds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import groups as grp
from analysis.metrics import accuracy_matrix
from analysis.retention import CHANCE, MIN_GAIN  # "learned" means what it means for K*


def survival_times(df: pd.DataFrame, threshold: float, *, chance: float = CHANCE,
                   min_gain: float = MIN_GAIN, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per learned (trial, task): trial_id, seed, eval_task, a0 (R[j, j]), time
    (t_j or the censoring time), event (True: fell below or the trial diverged) and cause
    (below | diverged | censored)."""
    tests = df[df["split"] == "test"] if "split" in df else df
    status = {}
    if trials is not None and "status" in trials:
        status = dict(zip(trials["trial_id"], trials["status"]))
    rows = []
    for trial_id, frame in tests.groupby("trial_id", sort=True):
        R = accuracy_matrix(frame).to_numpy(dtype=float)
        seed = frame["seed"].iloc[0] if "seed" in frame else trial_id
        measured = np.flatnonzero(np.isfinite(R).any(axis=1))
        if not len(measured):
            continue
        last = int(measured.max())
        diverged = status.get(trial_id) == "diverged"
        for j in range(last + 1):
            a0 = R[j, j]
            if not np.isfinite(a0) or a0 < chance + min_gain:
                continue
            later = R[j + 1:last + 1, j]
            below = np.flatnonzero(np.isfinite(later) & (later < threshold * a0))
            if len(below):
                time, event, cause = int(below[0]) + 1, True, "below"
            elif diverged:
                time, event, cause = last + 1 - j, True, "diverged"
            else:
                time, event, cause = last - j, False, "censored"
            rows.append((trial_id, seed, j, a0, time, event, cause))
    return pd.DataFrame(rows, columns=["trial_id", "seed", "eval_task", "a0", "time", "event",
                                       "cause"])


def kaplan_meier(time, event) -> pd.DataFrame:
    """S(t) at each distinct event time: columns t, at_risk, events, S (see the docstring).
    Units with time 0 (no follow-up) are never at risk of a failure at t ≥ 1."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    ts = np.unique(time[event])
    at_risk = np.array([(time >= t).sum() for t in ts], dtype=float)
    events = np.array([((time == t) & event).sum() for t in ts], dtype=float)
    return pd.DataFrame({"t": ts, "at_risk": at_risk, "events": events,
                         "S": np.cumprod(1.0 - events / at_risk)})


def km_median(time, event) -> float:
    """min {t : S(t) ≤ 1/2}; inf when S stays above 1/2 (censored), NaN with no units."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    if not len(time):
        return float("nan")
    # kaplan_meier's product in arrays: the bootstrap calls this hundreds of times.
    ts = np.unique(time[event])
    at_risk = len(time) - np.searchsorted(np.sort(time), ts, side="left")
    events = np.bincount(np.searchsorted(ts, time[event]), minlength=len(ts))
    hit = np.flatnonzero(np.cumprod(1.0 - events / at_risk) <= 0.5 + 1e-12)
    return float(ts[hit[0]]) if len(hit) else float("inf")


def survival_capacity(df: pd.DataFrame, threshold: float, *, chance: float = CHANCE,
                      trials: pd.DataFrame | None = None, n_boot: int = 200, ci: float = 0.95,
                      seed: int = 0) -> dict:
    """K̂ of one group with its bootstrap interval over seeds.

    Keys: K_hat, K_hat_lo, K_hat_hi (inf: censored), K_hat_status (observed | censored |
    no tasks), K_hat_follow_up (t_max), K_hat_tasks, K_hat_events, K_hat_diverged (tasks
    failed by divergence), K_hat_ci (seeds | "no interval (n seeds)").
    """
    times = survival_times(df, threshold, chance=chance, trials=trials)
    seeds = grp.n_seeds(df)
    out = {"K_hat": float("nan"), "K_hat_lo": float("nan"), "K_hat_hi": float("nan"),
           "K_hat_status": "no tasks", "K_hat_follow_up": float("nan"),
           "K_hat_tasks": len(times), "K_hat_events": int(times["event"].sum()),
           "K_hat_diverged": int((times["cause"] == "diverged").sum()),
           "K_hat_ci": grp.no_interval(seeds) or "seeds"}
    if times.empty:
        return out
    k_hat = km_median(times["time"], times["event"])
    out["K_hat"] = k_hat
    out["K_hat_follow_up"] = float(times["time"].max())
    out["K_hat_status"] = "censored" if np.isinf(k_hat) else "observed"
    if seeds < grp.MIN_SEEDS:
        return out
    by_seed = [(g["time"].to_numpy(float), g["event"].to_numpy(bool))
               for _, g in times.groupby("seed", sort=True)]
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        picked = [by_seed[i] for i in rng.integers(0, len(by_seed), len(by_seed))]
        draws[b] = km_median(np.concatenate([p[0] for p in picked]),
                             np.concatenate([p[1] for p in picked]))
    out["K_hat_lo"], out["K_hat_hi"] = grp.percentile_interval(draws, ci)
    return out


def agreement(k_star: float, k_lo: float, k_hi: float, observed: float, k_hat: float,
              k_hat_lo: float, k_hat_hi: float, follow_up: float) -> str:
    """Whether K* (the model) and K̂ (the data) tell the same story, in words.

    Both are put on K*'s scale: a noise-free curve crossing at K* gives K̂ = ⌈K*⌉, so K̂
    stands for K* ∈ [K̂ − 1, K̂], its interval for [K̂_lo − 1, K̂_hi], and a censored K̂ for
    K* > t_max − 1 (t_max its follow-up). They agree when these ranges meet K*'s interval
    (with fewer than 3 seeds, when the point K* lies in K̂'s range: "points agree"). An
    extrapolated K* or a censored K̂ is said either way.
    """
    if np.isnan(k_hat) or np.isnan(k_star):
        return ""
    tested = not (np.isnan(k_lo) or np.isnan(k_hat_lo))
    star = (k_lo, k_hi) if tested else (k_star, k_star)
    if np.isinf(k_hat):
        hat = (follow_up - 1, np.inf)
    elif tested:
        hat = (k_hat_lo - 1, np.inf if np.isinf(k_hat_hi) else k_hat_hi)
    else:
        hat = (k_hat - 1, k_hat)
    meet = star[0] <= hat[1] and hat[0] <= star[1]
    verdict = ("agree" if meet else "disagree: intervals do not overlap") if tested else \
        ("points agree (no interval)" if meet else "points differ (no interval)")
    flags = []
    if not np.isfinite(k_star) or k_star > observed:
        flags.append("K* extrapolated")
    if np.isinf(k_hat):
        flags.append(f"K̂ censored (> {follow_up:g})")
    return "; ".join([verdict, *flags])
