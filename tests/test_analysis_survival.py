"""K̂, the model-free capacity: survival times read off hand-built accuracy matrices, and the
Kaplan–Meier estimate computed by hand (expected values written out below, not computed by the
code under test)."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import capacity as cap
from analysis import survival as sv

SPT = 10
NAN = np.nan

# Three trials of 5 tasks, θ = 0.9. Task j is "learned" when R[j, j] ≥ 0.15 (chance + 0.05).
A = [[.90, NAN, NAN, NAN, NAN],   # complete
     [.88, .90, NAN, NAN, NAN],   # task 0: threshold .81; first below at row 3 → t = 3 (event)
     [.85, .70, .90, NAN, NAN],   # task 1: .70 < .81 at row 2 → t = 1 (event)
     [.80, .69, .89, .12, NAN],   # task 2: never below through row 4 → censored at t = 2
     [.79, .68, .88, .11, .90]]   # task 3: R[3, 3] = .12, never learned: left out
#                                  # task 4: no later row → censored at t = 0
B = [[.80, NAN, NAN, NAN, NAN],   # still running: rows 0-3 measured
     [.75, .80, NAN, NAN, NAN],   # task 0: threshold .72; .75 .73 .74 → censored at t = 3
     [.73, .78, .80, NAN, NAN],   # task 1: .78 then .60 < .72 → t = 2 (event)
     [.74, .60, .79, .80, NAN],   # task 2: censored at t = 1; task 3: censored at t = 0
     [NAN, NAN, NAN, NAN, NAN]]
C = [[.90, NAN, NAN, NAN, NAN],   # diverged while training task 3: rows 0-2 measured
     [.86, .90, NAN, NAN, NAN],   # task 0: above through row 2 → fails at divergence, t = 3
     [.85, .50, .90, NAN, NAN],   # task 1: .50 < .81 → t = 1; task 2: fails at divergence, t = 1
     [NAN] * 5, [NAN] * 5]


def rows_of(trial_id: str, seed: int, R, units: int = 64, **params) -> list[dict]:
    rows = []
    for i, row in enumerate(R):
        for j, value in enumerate(row):
            if np.isfinite(value):
                rows.append({"trial_id": trial_id, "seed": seed, "psp": "binary", "units": units,
                             "tasks": len(R), "steps_per_task": SPT, "step": (i + 1) * SPT,
                             "split": "test", "eval_task": j, "accuracy": value, **params})
    return rows


@pytest.fixture
def three():
    df = pd.DataFrame(rows_of("A", 0, A) + rows_of("B", 1, B) + rows_of("C", 2, C))
    trials = pd.DataFrame({"trial_id": ["A", "B", "C"],
                           "status": ["completed", "running", "diverged"]})
    return df, trials


def test_survival_times_by_hand(three):
    df, trials = three
    times = sv.survival_times(df, 0.9, trials=trials)
    got = {(r.trial_id, r.eval_task): (r.time, r.event, r.cause) for r in times.itertuples()}
    assert got == {
        ("A", 0): (3, True, "below"), ("A", 1): (1, True, "below"),
        ("A", 2): (2, False, "censored"), ("A", 4): (0, False, "censored"),
        ("B", 0): (3, False, "censored"), ("B", 1): (2, True, "below"),
        ("B", 2): (1, False, "censored"), ("B", 3): (0, False, "censored"),
        ("C", 0): (3, True, "diverged"), ("C", 1): (1, True, "below"),
        ("C", 2): (1, True, "diverged"),
    }


def test_kaplan_meier_by_hand_with_a_diverged_trial(three):
    df, trials = three
    times = sv.survival_times(df, 0.9, trials=trials)
    km = sv.kaplan_meier(times["time"], times["event"])
    # t = 1: at risk all 9 units with time ≥ 1, 3 fail (A1, C1, C2): S = 1 − 3/9 = 2/3
    # t = 2: at risk A0, A2, B0, B1, C0 = 5, one fails (B1):      S = 2/3 · 4/5 = 8/15
    # t = 3: at risk A0, B0, C0 = 3, two fail (A0, C0):           S = 8/15 · 1/3 = 8/45
    assert km["t"].tolist() == [1, 2, 3]
    assert km["at_risk"].tolist() == [9, 5, 3] and km["events"].tolist() == [3, 1, 2]
    assert km["S"].to_numpy() == pytest.approx([2 / 3, 8 / 15, 8 / 45])
    assert sv.km_median(times["time"], times["event"]) == 3  # S(2) = .53 > .5 ≥ S(3)


def test_without_the_trials_table_a_stopped_trial_is_censored(three):
    df, _ = three
    times = sv.survival_times(df, 0.9)
    c = times[times.trial_id == "C"].set_index("eval_task")
    assert c.loc[0, "cause"] == "censored" and c.loc[0, "time"] == 2
    assert c.loc[2, "cause"] == "censored" and c.loc[2, "time"] == 0
    km = sv.kaplan_meier(times["time"], times["event"])
    # t = 1: 8 at risk, 2 fail → 3/4; t = 2: 5 at risk, 1 fails → 3/5; t = 3: A0, B0 at risk,
    # A0 fails → 3/10.
    assert km["at_risk"].tolist() == [8, 5, 2]
    assert km["S"].to_numpy() == pytest.approx([3 / 4, 3 / 5, 3 / 10])


def test_censored_median_and_its_report():
    # One trial: task 0 never falls (censored at 3), task 1 falls at 1, tasks 2, 3 censored.
    R = [[.9, NAN, NAN, NAN], [.88, .9, NAN, NAN], [.87, .5, .9, NAN], [.86, .5, .89, .9]]
    df = pd.DataFrame(rows_of("solo", 0, R))
    times = sv.survival_times(df, 0.9)
    km = sv.kaplan_meier(times["time"], times["event"])
    assert km["S"].tolist() == pytest.approx([2 / 3])  # t = 1: 3 at risk, 1 fails
    assert sv.km_median(times["time"], times["event"]) == math.inf
    out = sv.survival_capacity(df, 0.9)
    assert out["K_hat_status"] == "censored" and out["K_hat_follow_up"] == 3
    assert out["K_hat_ci"] == "no interval (1 seed)" and math.isnan(out["K_hat_lo"])


def test_interval_resamples_seeds(three):
    df, trials = three
    out = sv.survival_capacity(df, 0.9, trials=trials, n_boot=200)
    assert out["K_hat"] == 3 and out["K_hat_ci"] == "seeds" and out["K_hat_diverged"] == 2
    # Resampling whole trials: every draw is a median of some trials' tasks, so bounded by
    # the per-trial medians' range (A alone: 3, B alone: ∞ (censored), C alone: 1).
    assert 1 <= out["K_hat_lo"] <= 3 <= out["K_hat_hi"]


@pytest.mark.parametrize("k, lo, hi, observed, khat, khlo, khhi, follow, expected", [
    (4.3, 4.0, 4.6, 10, 5, 4, 6, 10, "agree"),                       # ⌈4.3⌉ = 5
    (2.0, 1.8, 2.2, 10, 6, 5, 7, 10, "disagree: intervals do not overlap"),
    (30, 20, 40, 10, math.inf, math.inf, math.inf, 10,
     "agree; K* extrapolated; K̂ censored (> 10)"),
    (3.0, 2.5, 3.5, 10, math.inf, 8, math.inf, 10,
     "disagree: intervals do not overlap; K̂ censored (> 10)"),
    (25, 15, 40, 10, 6, 5, 7, 10, "disagree: intervals do not overlap; K* extrapolated"),
    (4.3, NAN, NAN, 10, 5, NAN, NAN, 10, "points agree (no interval)"),
])
def test_agreement_words(k, lo, hi, observed, khat, khlo, khhi, follow, expected):
    assert sv.agreement(k, lo, hi, observed, khat, khlo, khhi, follow) == expected


def test_capacity_table_puts_k_hat_beside_k_star(three):
    df, trials = three
    row = cap.capacity_table(df, trials=trials, n_boot=50, errors="note").iloc[0]
    assert row.K_hat == 3 and row.n_diverged == 1 and row.K_hat_diverged == 2
    assert isinstance(row.agreement, str) and row.agreement
