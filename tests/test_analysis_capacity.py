"""The capacity estimator recovers K* and α from retention curves generated from the theory's
model (`capacity.simulate`, γ = 1/2)."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import capacity as cap
from analysis import scaling

ALPHA = 0.9
KAPPA_64 = 10.0
WIDTHS = (64, 128, 256, 512)
KAPPAS = {w: KAPPA_64 * (w / 64) ** ALPHA for w in WIDTHS}


@pytest.fixture(scope="module")
def synthetic():
    """6 seeds × 4 widths × 12 tasks from the model: a(n) = c + (A − c)(1 + n/κ)^(−1/2)."""
    df = cap.simulate(KAPPAS, seeds=range(6), tasks=12, steps_per_task=100, eval_every=25,
                      a0=0.9, rng_seed=0)
    table, draws = cap.capacity_table(df, n_boot=200, return_draws=True)
    return df, table.set_index("units"), draws


def true_k(units, threshold=0.9):
    return cap.capacity_from_kappa(KAPPAS[units], cap.z_threshold(threshold, 0.9, cap.CHANCE))


def test_model_and_threshold_formulas():
    assert cap.retention_model(0, 5.0) == pytest.approx(1.0)
    assert cap.retention_model(15, 5.0) == pytest.approx(0.5)  # (1 + 3)^(−1/2)
    z_star = cap.z_threshold(0.9, 0.9, 0.1)  # (0.81 − 0.1) / (0.9 − 0.1)
    assert z_star == pytest.approx(0.8875)
    k = cap.capacity_from_kappa(10.0, z_star)
    assert k == pytest.approx(10.0 * (0.8875 ** -2 - 1))
    assert cap.retention_model(k, 10.0) == pytest.approx(z_star)  # the crossing is at K*
    assert cap.capacity_from_kappa(10.0, 0.0) == math.inf


def test_recovers_known_capacity_within_its_interval(synthetic):
    _, table, _ = synthetic
    for units in WIDTHS:
        row = table.loc[units]
        truth = true_k(units)
        assert row.K_lo <= truth <= row.K_hi, (units, truth, row.K_lo, row.K_hi)
        assert row.K_star == pytest.approx(truth, rel=0.05)
        assert row.K_lo < row.K_star < row.K_hi and row.ci_method == "seeds"
        assert row.n_seeds == 6 and row.n_boot == 200
        # K̂ (model-free) agrees: a noise-free crossing at K* is first measured below at ⌈K*⌉,
        # and noise can only bring a first dip earlier, by up to one task here.
        if row.status == "interpolated":
            assert truth - 1 <= row.K_hat <= math.ceil(truth) and row.agreement == "agree", row


def test_flags_extrapolation_beyond_the_tasks_run(synthetic):
    _, table, _ = synthetic
    # 12 tasks: retention points reach n = 11 tasks stored after task 0.
    assert table.loc[512, "K_star"] > 11 and table.loc[512, "extrapolated"]
    assert table.loc[512, "status"] == "extrapolated" and "extrapolated" in table.loc[512, "note"]
    assert table.loc[64, "K_star"] < 11 and not table.loc[64, "extrapolated"]
    assert table.loc[64, "status"] == "interpolated" and table.loc[64, "n_observed"] == 11


def test_recovers_the_width_exponent_within_its_interval(synthetic):
    _, table, draws = synthetic
    fit = scaling.width_scaling(table.reset_index(), draws).iloc[0]
    assert fit.psp == "binary" and fit.n_widths == 4 and fit.ci_method == "bootstrap over seeds"
    assert fit.alpha_lo <= ALPHA <= fit.alpha_hi, fit
    assert fit.alpha == pytest.approx(ALPHA, abs=0.05)
    assert fit.n_extrapolated == 1 and "1/bootstrap variance" in fit.weighting
    # No draws: the extrapolated width is left out, t interval on the weighted fit of the rest.
    ols = scaling.width_scaling(table.reset_index()).iloc[0]
    assert ols.ci_method == "t (weighted fit)" and ols.n_widths == 3 and ols.n_extrapolated == 0
    assert ols.alpha_lo <= ALPHA <= ols.alpha_hi


def test_threshold_is_a_parameter():
    df = cap.simulate({64: 10.0}, seeds=range(3), tasks=8, rng_seed=3)
    strict = cap.capacity_table(df, threshold=0.95, n_boot=30, family="power_half").iloc[0]
    loose = cap.capacity_table(df, threshold=0.8, n_boot=30, family="power_half").iloc[0]
    assert strict.K_star < loose.K_star and strict.threshold == 0.95
    expected = cap.capacity_from_kappa(strict.scale, cap.z_threshold(0.95, strict.a0_fit))
    assert strict.K_star == pytest.approx(expected)


def test_fewer_than_three_points_is_refused_with_a_clear_message():
    # 3 tasks evaluated only at boundaries: n ∈ {1, 2} — two distinct retention points.
    df = cap.simulate({64: 5.0}, seeds=[0], tasks=3, eval_every=0)
    with pytest.raises(cap.CapacityError, match=r"need at least 3 retention points to fit .*"
                                                r"psp=binary, units=64; got 2"):
        cap.capacity_table(df)
    noted = cap.capacity_table(df, errors="note").iloc[0]
    assert noted.status == "insufficient" and "got 2" in noted.note and math.isnan(noted.K_star)
    with pytest.raises(cap.CapacityError, match="got 0"):
        cap.estimate_capacity(df[df.step <= 100])


def test_no_decay_is_infinite_capacity_flagged():
    df = cap.simulate({64: 1e12}, seeds=range(2), tasks=5, rng_seed=1)
    row = cap.capacity_table(df, n_boot=20).iloc[0]
    assert row.K_star == math.inf and row.status == "never" and row.extrapolated


def test_already_below_threshold_is_flagged():
    df = cap.simulate({64: 0.02}, seeds=range(2), tasks=5, eval_every=0, rng_seed=2)
    row = cap.capacity_table(df, n_boot=20).iloc[0]
    assert row.status == "already_below" and row.K_star < 1 and row.extrapolated
    assert "first retention point" in row.note


@pytest.mark.parametrize("seeds, words", [([0], "no interval (1 seed)"),
                                          ([0, 1], "no interval (2 seeds)")])
def test_fewer_than_three_seeds_get_no_interval(seeds, words):
    """Repeated tests of one trial are not independent replicates: no bootstrap over them."""
    df = cap.simulate({128: 20.0}, seeds=seeds, tasks=6, rng_seed=4)
    row = cap.capacity_table(df, n_boot=50).iloc[0]
    assert row.ci_method == words and row.K_hat_ci == words and row.n_boot == 0
    assert math.isnan(row.K_lo) and math.isnan(row.K_hi) and math.isnan(row.K_hat_lo)
    assert np.isfinite(row.K_star) and words in row.gamma_vs_theory


def test_bad_threshold_is_refused():
    df = cap.simulate({64: 5.0}, seeds=[0], tasks=4)
    with pytest.raises(cap.CapacityError, match="threshold must be in"):
        cap.capacity_table(df, threshold=1.2)


def test_results_write_to_csv_and_parquet(synthetic, tmp_path):
    _, table, draws = synthetic
    table = table.reset_index()
    fit = scaling.width_scaling(table, draws)
    for frame, name in ((table, "capacity"), (fit, "scaling"), (draws, "draws")):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
        back = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    assert np.isclose(pd.read_csv(tmp_path / "capacity.csv").K_star, table.K_star).all()


def test_width_scaling_needs_two_widths():
    table = pd.DataFrame({"psp": ["binary"], "units": [64], "K_star": [3.0],
                          "status": ["interpolated"], "extrapolated": [False]})
    row = scaling.width_scaling(table, by=["psp"]).iloc[0]
    assert math.isnan(row.alpha) and "2 or more widths" in row.note


def test_alpha_interval_needs_three_widths_and_tests_one(synthetic):
    _, table, draws = synthetic
    table = table.reset_index()
    two = scaling.width_scaling(table[table.units <= 128], draws).iloc[0]
    assert two.n_widths == 2 and np.isnan(two.alpha_lo) and np.isnan(two.alpha_p1)
    assert two.alpha_vs_theory == "not tested (2 widths)" and "no interval" in two.note
    three = scaling.width_scaling(table[table.units <= 256], draws).iloc[0]
    assert three.n_widths == 3 and three.alpha_lo <= ALPHA <= three.alpha_hi
    # The simulation's α is 0.9: with six seeds and little noise, 1 is rejected.
    assert three.alpha_p1 < 0.05 and three.alpha_vs_theory.startswith("α = 1 outside")
