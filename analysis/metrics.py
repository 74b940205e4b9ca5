"""Continual-learning metrics: pure functions of DataFrames, no I/O.

Notation (GEM, Lopez-Paz & Ranzato 2017). T tasks, trained one after another, each for
``steps_per_task`` updates. R[i, j] is the test accuracy on task j measured at the end of
training task i, i.e. after (i + 1)·steps_per_task updates; 0-based, so the final row is i = T−1.
R[i, j] for j > i (a task not yet seen) is not evaluated: NaN, never 0.

Input is the steps table as ``analysis.load`` returns it (test rows are used; train rows are
ignored). The metric functions take one trial's accuracy matrix; ``summarize`` applies them to
every trial and ``aggregate`` averages over seeds with a confidence interval.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.groups import group_columns
from trainables.schema import PARAM_FIELDS

# Columns kept on each per-trial summary row (those present in the input): every trial
# parameter, so that summaries can be grouped by whatever varies (analysis.groups).
TRIAL_KEYS = ("sweep", "trial_id", *PARAM_FIELDS)
METRICS = ("acc", "acc_last10", "bwt", "forgetting", "task0_final")


def _test_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "split" in df:
        df = df[df["split"] == "test"]
    return df[df["eval_task"].notna() & df["accuracy"].notna()]


def _one_value(df: pd.DataFrame, column: str, default=None):
    if column not in df or df[column].isna().all():
        return default
    values = df[column].dropna().unique()
    if len(values) > 1:
        raise ValueError(f"{column} differs within one trial: {sorted(values)[:5]}")
    return values[0]


def accuracy_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """R[i, j]: accuracy on task j after training task i (the test row at step (i+1)·spt).

    One trial: a T×T DataFrame, index ``trained`` = i, columns ``eval_task`` = j, NaN where
    nothing was measured (j > i, or rows after a trial diverged). Several trials: the same
    stacked, with index (trial_id, trained). T is the ``tasks`` column (else the largest task
    seen + 1); ``steps_per_task`` must be a column.
    """
    tests = _test_rows(df)
    if "trial_id" in tests and tests["trial_id"].nunique() > 1:
        parts = {tid: accuracy_matrix(group) for tid, group in tests.groupby("trial_id", sort=True)}
        return pd.concat(parts, names=["trial_id", "trained"])
    spt = _one_value(df, "steps_per_task")
    if spt is None:
        raise ValueError("accuracy_matrix needs a steps_per_task column")
    seen = int(tests["eval_task"].max()) + 1 if len(tests) else 0
    n_tasks = int(_one_value(df, "tasks", seen))
    boundary = tests[tests["step"] % int(spt) == 0]
    trained = (boundary["step"] // int(spt) - 1).astype(int)
    matrix = pd.DataFrame(
        {"trained": trained.to_numpy(), "eval_task": boundary["eval_task"].astype(int).to_numpy(),
         "accuracy": boundary["accuracy"].astype(float).to_numpy()}
    ).pivot_table(index="trained", columns="eval_task", values="accuracy", aggfunc="last")
    axis = pd.RangeIndex(n_tasks)
    matrix = matrix.reindex(index=axis, columns=axis).astype(float)
    matrix.index.name, matrix.columns.name = "trained", "eval_task"
    return matrix


def anytime_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Every test measurement as a point on its task's curve; R is these curves sampled at the
    task boundaries.

    Columns: trial_id, eval_task, step, accuracy (and n_examples, the test-set size, when the
    input has it), ``tasks_trained`` = step / spt (fractional),
    and ``stored_after`` = n = step / spt − (eval_task + 1): how many tasks were trained after
    ``eval_task`` when it was measured (negative while ``eval_task`` itself is being trained;
    R[i, j] is the point with n = i − j).
    """
    tests = _test_rows(df)
    keep = [c for c in TRIAL_KEYS if c in tests]
    measured = ["accuracy", "n_examples"] if "n_examples" in tests else ["accuracy"]
    out = tests[[*keep, "eval_task", "step", *measured]].copy()
    spt = out["steps_per_task"].astype(float)
    out["tasks_trained"] = out["step"] / spt
    out["stored_after"] = out["tasks_trained"] - (out["eval_task"].astype(float) + 1)
    out["accuracy"] = out["accuracy"].astype(float)
    return out.sort_values(["trial_id", "eval_task", "step"], kind="stable").reset_index(drop=True)


def _final_row(R: pd.DataFrame) -> pd.Series:
    return R.iloc[-1]


def average_accuracy(R: pd.DataFrame) -> float:
    """ACC = (1/T) Σ_{j=0}^{T−1} R[T−1, j]: mean accuracy over all tasks after training all.

    NaN if any entry of the final row is missing (e.g. a diverged trial): a mean over the tasks
    that happen to have been measured would not be comparable.
    """
    return float(_final_row(R).mean(skipna=False)) if len(R) else float("nan")


def average_last_k(R: pd.DataFrame, k: int = 10) -> float:
    """ACC_last-k = (1/k) Σ_{j=T−k}^{T−1} R[T−1, j]: the PSP paper's table metric ("average
    accuracy on the last 10 tasks after training all tasks"); k is min(k, T) when T < k."""
    if not len(R):
        return float("nan")
    k = min(int(k), R.shape[1])
    return float(_final_row(R).iloc[-k:].mean(skipna=False))


def backward_transfer(R: pd.DataFrame) -> float:
    """BWT = (1/(T−1)) Σ_{j=0}^{T−2} (R[T−1, j] − R[j, j]); negative means forgetting.

    NaN for T = 1 or when a needed entry is missing."""
    T = len(R)
    if T < 2:
        return float("nan")
    values = R.to_numpy(dtype=float)
    diffs = values[T - 1, : T - 1] - np.diag(values)[: T - 1]
    return float(np.mean(diffs))  # NaN propagates: a missing entry leaves BWT undefined


def forgetting(R: pd.DataFrame) -> pd.Series:
    """f_j = max_{i<T−1} R[i, j] − R[T−1, j] for j = 0..T−2: the best accuracy task j ever had
    before the end, minus its final accuracy (≥ 0 up to noise). Indexed by j.

    The max skips entries not measured (NaN); f_j is NaN if R[T−1, j] is missing."""
    T = len(R)
    values = R.to_numpy(dtype=float)
    out = {}
    for j in range(T - 1):
        before = values[j: T - 1, j]  # rows i < j are NaN by construction (task not seen)
        best = np.nanmax(before) if np.isfinite(before).any() else np.nan
        out[j] = best - values[T - 1, j]
    return pd.Series(out, dtype=float, name="forgetting").rename_axis("eval_task")


def average_forgetting(R: pd.DataFrame) -> float:
    """F = (1/(T−1)) Σ_{j=0}^{T−2} f_j (see ``forgetting``); NaN if any f_j is."""
    f = forgetting(R)
    return float(f.mean(skipna=False)) if len(f) else float("nan")


def summarize(df: pd.DataFrame, k: int = 10, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial: its parameters and acc (ACC), acc_last10 (ACC over the last k tasks),
    bwt (BWT), forgetting (mean f_j), task0_final (R[T−1, 0]), tasks_done (rows of R measured)
    and status — from ``trials`` when given (completed, diverged, running, …), else
    "incomplete" for a trial with fewer rows of R than tasks and null otherwise. A trial of
    ``trials`` without a test row (diverged at once) gets a row of NaN metrics."""
    tests = _test_rows(df)
    status = dict(zip(trials["trial_id"], trials["status"])) if trials is not None else {}
    rows = []
    for trial_id, group in tests.groupby("trial_id", sort=True):
        R = accuracy_matrix(group)
        row = {c: _one_value(group, c) for c in TRIAL_KEYS if c in group}
        row["trial_id"] = trial_id
        done = int(R.notna().any(axis=1).sum())
        row.update(
            tasks_done=done,
            status=status.get(trial_id, "incomplete" if done < len(R) else None),
            acc=average_accuracy(R),
            acc_last10=average_last_k(R, k),
            bwt=backward_transfer(R),
            forgetting=average_forgetting(R),
            task0_final=float(R.iloc[-1, 0]) if len(R) else float("nan"),
        )
        rows.append(row)
    if trials is not None:  # a trial that diverged before its first test is still a trial
        seen = set(tests["trial_id"].unique())
        for trial in trials[~trials["trial_id"].isin(seen)].to_dict("records"):
            rows.append({**{c: trial.get(c) for c in TRIAL_KEYS if c in trials},
                         "tasks_done": 0, "status": trial.get("status"),
                         **{m: float("nan") for m in METRICS}})
    columns = [c for c in TRIAL_KEYS if c in tests] + ["tasks_done", "status", *METRICS]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))


def mean_ci(values: Sequence[float], ci: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with Student's t interval mean ± t_{(1+ci)/2, n−1} · s/√n.

    NaNs are dropped; the interval is NaN when fewer than two values remain."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), 1
    half = float(stats.t.ppf((1 + ci) / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def aggregate(summary: pd.DataFrame, by: Sequence[str] | None = None, ci: float = 0.95,
              metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per group — ``by``, or every trial parameter that varies (``analysis.groups``) — for
    each metric m: m_mean, m_lo, m_hi (a t interval at level ``ci`` over the trials of the
    group, normally its seeds) and m_n (trials with a value). ``n_trials`` and ``n_seeds``
    count the group, ``n_diverged`` its diverged trials and ``n_incomplete`` those that did
    not finish every task (diverged ones included): a metric averaged over fewer trials than
    the group has says so in m_n, and these columns say why."""
    by = list(by) if by is not None else group_columns(summary)
    status = summary["status"] if "status" in summary else pd.Series(None, index=summary.index)
    rows = []
    for key, group in summary.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n_trials"] = len(group)
        row["n_seeds"] = group["seed"].nunique() if "seed" in group else len(group)
        row["n_diverged"] = int((status[group.index] == "diverged").sum())
        row["n_incomplete"] = (int((group["tasks_done"] < group["tasks"]).sum())
                               if {"tasks_done", "tasks"} <= set(group) else 0)
        for m in metrics:
            mean, lo, hi, n = mean_ci(group[m], ci)
            row.update({f"{m}_mean": mean, f"{m}_lo": lo, f"{m}_hi": hi, f"{m}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)
