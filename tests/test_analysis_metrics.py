"""Continual-learning metrics on hand-computed 3×3 accuracy matrices (GEM's definitions)."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import metrics

SPT = 10
NAN = float("nan")
# R[i, j]: accuracy on task j after training task i (steps 10, 20, 30). Task 0 improves after
# task 1 (0.93 > 0.90), so forgetting (max before − final) differs from −BWT (diagonal − final).
R_A = [[0.90, NAN, NAN],
       [0.93, 0.95, NAN],
       [0.70, 0.85, 0.92]]
R_B = [[0.80, NAN, NAN],
       [0.60, 0.90, NAN],
       [0.50, 0.70, 1.00]]


def rows_of(trial_id, R, *, seed=0, psp="binary", extra=()):
    """Test rows at the task boundaries from R, plus periodic rows in between (not part of R)
    and train rows (ignored by every metric)."""
    rows = []
    for i, row in enumerate(R):
        for j, value in enumerate(row):
            if not math.isnan(value):
                rows.append(((i + 1) * SPT, i, "test", j, value))
    rows += [(5, 0, "test", 0, 0.50), (15, 1, "test", 0, 0.11), (15, 1, "test", 1, 0.40),
             (25, 2, "test", 0, 0.99), (25, 2, "test", 2, 0.30)]
    rows += [(s, (s - 1) // SPT, "train", None, 0.123) for s in range(1, 3 * SPT + 1)]
    rows += list(extra)
    frame = pd.DataFrame(rows, columns=["step", "task", "split", "eval_task", "accuracy"])
    frame["eval_task"] = frame["eval_task"].astype("Int32")
    return frame.assign(trial_id=trial_id, psp=psp, units=64, tasks=3, steps_per_task=SPT,
                        seed=seed).sample(frac=1.0, random_state=1)  # order must not matter


def matrix(R):
    return pd.DataFrame(R, index=pd.RangeIndex(3, name="trained"),
                        columns=pd.RangeIndex(3, name="eval_task"))


def test_accuracy_matrix_is_the_boundary_measurements_with_nan_where_not_evaluated():
    R = metrics.accuracy_matrix(rows_of("a", R_A))
    pd.testing.assert_frame_equal(R, matrix(R_A))
    assert R.isna().to_numpy().sum() == 3  # the upper triangle: NaN, never 0


def test_accuracy_matrix_of_several_trials_is_stacked_by_trial():
    both = pd.concat([rows_of("a", R_A), rows_of("b", R_B, seed=1)])
    R = metrics.accuracy_matrix(both)
    assert R.index.names == ["trial_id", "trained"]
    pd.testing.assert_frame_equal(R.loc["b"], matrix(R_B), check_names=False)


def test_a_trial_that_stopped_early_has_nan_rows():
    rows = rows_of("a", R_A)
    cut = rows[rows.step <= 15]  # diverged during task 1
    R = metrics.accuracy_matrix(cut)
    assert R.shape == (3, 3) and R.iloc[0, 0] == pytest.approx(0.90)
    assert R.iloc[1:].isna().all().all()
    assert math.isnan(metrics.average_accuracy(R)) and math.isnan(metrics.backward_transfer(R))


def test_anytime_curves_hold_every_test_point_with_tasks_stored_after():
    curves = metrics.anytime_curves(rows_of("a", R_A))
    task0 = curves[curves.eval_task == 0]
    assert task0.step.tolist() == [5, 10, 15, 20, 25, 30]
    assert task0.stored_after.tolist() == pytest.approx([-0.5, 0, 0.5, 1, 1.5, 2])
    # R is the curves sampled at the boundaries: R[i, j] is the point at n = i − j.
    at = curves.set_index(["eval_task", "stored_after"]).accuracy
    assert at[(0, 2.0)] == pytest.approx(0.70) and at[(1, 1.0)] == pytest.approx(0.85)


def test_average_accuracy():
    # ACC = (0.70 + 0.85 + 0.92) / 3
    assert metrics.average_accuracy(matrix(R_A)) == pytest.approx(2.47 / 3)
    assert metrics.average_accuracy(matrix(R_B)) == pytest.approx(2.20 / 3)


def test_average_last_k():
    assert metrics.average_last_k(matrix(R_A), k=2) == pytest.approx((0.85 + 0.92) / 2)
    assert metrics.average_last_k(matrix(R_A), k=1) == pytest.approx(0.92)
    # fewer tasks than k: all of them (= ACC)
    assert metrics.average_last_k(matrix(R_A), k=10) == pytest.approx(2.47 / 3)


def test_backward_transfer():
    # BWT = ((0.70 − 0.90) + (0.85 − 0.95)) / 2
    assert metrics.backward_transfer(matrix(R_A)) == pytest.approx(-0.15)
    # ((0.50 − 0.80) + (0.70 − 0.90)) / 2
    assert metrics.backward_transfer(matrix(R_B)) == pytest.approx(-0.25)


def test_forgetting_is_max_before_minus_final():
    f = metrics.forgetting(matrix(R_A))
    # f_0 = max(0.90, 0.93) − 0.70; f_1 = 0.95 − 0.85
    assert f.tolist() == pytest.approx([0.23, 0.10])
    assert metrics.average_forgetting(matrix(R_A)) == pytest.approx(0.165)
    assert metrics.forgetting(matrix(R_B)).tolist() == pytest.approx([0.30, 0.20])


def test_summarize_gives_one_row_per_trial():
    both = pd.concat([rows_of("a", R_A), rows_of("b", R_B, seed=1)])
    summary = metrics.summarize(both).set_index("trial_id")
    assert summary.loc["a", "acc"] == pytest.approx(2.47 / 3)
    assert summary.loc["a", "bwt"] == pytest.approx(-0.15)
    assert summary.loc["a", "forgetting"] == pytest.approx(0.165)
    assert summary.loc["b", "task0_final"] == pytest.approx(0.50)
    assert summary.loc["b", "acc_last10"] == pytest.approx(2.20 / 3)
    assert summary.loc["b", "tasks_done"] == 3 and summary.loc["b", "seed"] == 1


def test_aggregate_over_seeds_gives_a_t_interval():
    summary = pd.DataFrame({"psp": "binary", "units": 64, "seed": [0, 1, 2],
                            "acc": [0.8, 0.9, 1.0], "acc_last10": 0.5, "bwt": np.nan,
                            "forgetting": 0.1, "task0_final": [0.7, np.nan, 0.9]})
    out = metrics.aggregate(summary).iloc[0]
    # mean 0.9, s = 0.1, t(0.975, 2) = 4.302653 → half-width 4.302653 · 0.1 / √3
    assert out.acc_mean == pytest.approx(0.9)
    assert out.acc_hi - out.acc_mean == pytest.approx(0.2484138, abs=1e-6)
    assert out.acc_lo == pytest.approx(0.9 - 0.2484138, abs=1e-6)
    assert out.n_seeds == 3 and out.acc_n == 3
    assert out.task0_final_n == 2 and out.task0_final_mean == pytest.approx(0.8)
    assert math.isnan(out.bwt_mean) and out.bwt_n == 0
    single = metrics.aggregate(summary.iloc[:1]).iloc[0]
    assert single.acc_mean == pytest.approx(0.8) and math.isnan(single.acc_lo)
