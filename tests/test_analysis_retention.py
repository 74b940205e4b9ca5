"""Retention points and their weights: one unit of weight per (trial, task, ⌈n⌉), so task 0's
dense curve counts as one task, whatever eval_every is."""
import numpy as np
import pandas as pd
import pytest

from analysis import models as mdl
from analysis import retention as ret


def rows(eval_every: int, kappa0: float = 2.0, kappa: float = 20.0, tasks: int = 8,
         spt: int = 100) -> pd.DataFrame:
    """One trial, noise-free: task 0 forgets with κ0, every other task with κ (z = (1+n/κ)^−½);
    task 0 and the current task tested every ``eval_every`` steps, all tasks at boundaries."""
    out = []
    for step in range(1, tasks * spt + 1):
        task = (step - 1) // spt
        due = ({0, task} if step % eval_every == 0 else set()) | (
            set(range(task + 1)) if step % spt == 0 else set())
        for j in due:
            n = step / spt - (j + 1)
            k = kappa0 if j == 0 else kappa
            z = (1 + n) if n < 0 else (1 + n / k) ** -0.5
            out.append({"trial_id": "t", "seed": 0, "tasks": tasks, "steps_per_task": spt,
                        "step": step, "split": "test", "eval_task": j,
                        "accuracy": 0.1 + 0.8 * z})
    return pd.DataFrame(out)


def test_weights_by_hand():
    points = ret.retention_points(rows(eval_every=25))
    task0 = points[points.eval_task == 0]
    # Task 0 after it trained: bin 0 holds n = 0; bin k ≥ 1 holds n = k − 0.75, …, k (4 points).
    assert task0.groupby("bin").size().tolist() == [1] + [4] * 7
    assert np.allclose(task0.loc[task0.bin >= 1, "weight"], 0.25)
    assert points.groupby(["eval_task", "bin"]).weight.sum().eq(1.0).all()
    other = points[points.eval_task == 3]
    assert other.n.tolist() == [0, 1, 2, 3, 4] and other.weight.eq(1.0).all()


def test_task0_counts_as_one_task_however_often_it_is_tested():
    """Task 0 forgets ten times faster than the others: tested every 10 steps, it supplies ten
    times the points; weighted, the fitted κ stays where it is with sparse testing."""
    dense = ret.retention_points(rows(eval_every=10))
    sparse = ret.retention_points(rows(eval_every=100))
    fit = lambda p: mdl.fit_points(p, 0.1, "power_half").fit.natural()["kappa"]  # noqa: E731
    assert fit(dense) == pytest.approx(fit(sparse), rel=0.05)
    unweighted = dense.assign(weight=1.0)
    assert fit(unweighted) < 0.8 * fit(sparse)   # without weights task 0 drags κ down
