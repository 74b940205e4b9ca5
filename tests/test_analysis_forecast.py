"""Forecasts recover known curves: data simulated here, by functions written in this file (not
``capacity.simulate``), from two curve families the theory does not assume — a power law with
γ = 3/2 and an exponential — are fitted on their first tasks and forecast to the last."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import backtesting as bt
from analysis import forecasting as fc

CHANCE = 0.1
TASKS, SPT, EVERY = 30, 20, 5
FIT = 12


def power_15(n):          # z = (1 + n/8)^(−3/2)
    return (1.0 + n / 8.0) ** -1.5


def exponential(n):       # z = exp(−n/15)
    return np.exp(-n / 15.0)


def two_regime(n):        # z = exp(−(n/20)^2): holds its first tasks, then falls ever faster
    return np.exp(-(n / 20.0) ** 2)


def simulate(shape, seeds=range(5), noise=0.004, peak=0.92, seed=0,
             task_sd=0.0) -> pd.DataFrame:
    """Test rows as the training loop records them: task 0 and the task in training every
    EVERY steps, every task seen at each boundary. Task j's accuracy n tasks after it was
    trained is c + (A_j − c)·shape(n·e^(−u_j)), A_j ~ N(peak, 0.01), u_j ~ N(0, task_sd) (each
    task forgets at its own pace); while training it rises linearly."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        peaks = rng.normal(peak, 0.01, TASKS)
        pace = np.exp(-rng.normal(0.0, task_sd, TASKS))
        for step in range(1, TASKS * SPT + 1):
            task = (step - 1) // SPT
            due = ({0, task} if step % EVERY == 0 else set()) | (
                set(range(task + 1)) if step % SPT == 0 else set())
            for j in sorted(due):
                n = step / SPT - (j + 1)
                level = (CHANCE + (peaks[j] - CHANCE) * (1 + n) if n < 0
                         else CHANCE + (peaks[j] - CHANCE) * shape(n * pace[j]))
                rows.append({"trial_id": f"t{s}", "seed": s, "psp": "binary", "units": 64,
                             "tasks": TASKS, "steps_per_task": SPT, "eval_every": EVERY,
                             "step": step, "split": "test", "eval_task": j,
                             "accuracy": level + rng.normal(0, noise), "n_examples": 1000})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module", params=[("power", power_15), ("exp", exponential),
                                        ("weibull", two_regime)],
                ids=["power-gamma-1.5", "exponential", "weibull-beta-2"])
def case(request):
    family, shape = request.param
    return family, shape, simulate(shape)


def truth_after(shape, n):
    """The seed mean expected after n later tasks: c + (0.92 − c)·shape(n)."""
    return CHANCE + (0.92 - CHANCE) * shape(n)


def test_the_right_family_recovers_its_parameters(case):
    family, shape, df = case
    f = fc.forecast(df, fit_tasks=FIT, horizon=TASKS, family=family, n_boot=40)
    params = f.models.iloc[0]
    if family == "power":
        assert params["gamma"] == pytest.approx(1.5, rel=0.15)
        assert params["kappa"] == pytest.approx(8.0, rel=0.15)
    elif family == "exp":
        assert params["tau"] == pytest.approx(15.0, rel=0.1)
    else:
        assert params["tau"] == pytest.approx(20.0, rel=0.1)
        assert params["beta"] == pytest.approx(2.0, rel=0.15)


def test_forecast_of_task0_after_all_tasks(case):
    family, shape, df = case
    f = fc.forecast(df, fit_tasks=FIT, horizon=TASKS, n_boot=60)   # family chosen by the data
    mean = f.task0[(f.task0.trial_id == "mean") & (f.task0.n == TASKS - 1)].iloc[0]
    truth = truth_after(shape, TASKS - 1)
    assert mean.pred == pytest.approx(truth, abs=0.02)       # 18 tasks beyond the fit window
    assert mean.lo <= truth <= mean.hi and mean.hi - mean.lo < 0.1
    assert mean.interval == fc.METHOD and mean.level == 0.9
    # Each trial's forecast, and the final row R[T−1, j] for every task, tasks never trained
    # in the window included.
    final = f.final_row[f.final_row.trial_id == "mean"].set_index("eval_task")
    assert len(final) == TASKS
    for j in (0, FIT - 1, FIT, TASKS - 1):
        assert final.loc[j, "pred"] == pytest.approx(truth_after(shape, TASKS - 1 - j), abs=0.025)
    trials = f.task0[(f.task0.trial_id != "mean") & (f.task0.n == TASKS - 1)]
    assert len(trials) == 5 and trials.lo.notna().all()


def test_the_theory_curve_alone_misses_a_curve_it_does_not_describe():
    # γ = 1/2 forced onto γ = 3/2 data: a forecast far off — what choosing by data avoids.
    df = simulate(power_15)
    forced = fc.forecast(df, fit_tasks=FIT, horizon=TASKS, family="power_half", n_boot=0)
    mean = forced.task0[(forced.task0.trial_id == "mean") & (forced.task0.n == TASKS - 1)]
    assert abs(mean.pred.iloc[0] - truth_after(power_15, TASKS - 1)) > 0.05


def test_one_or_two_seeds_get_no_interval():
    df = simulate(exponential, seeds=[0, 1])
    f = fc.forecast(df, fit_tasks=FIT, horizon=TASKS, n_boot=50)
    assert f.task0.lo.isna().all() and f.task0.hi.isna().all()
    assert set(f.task0.interval) == {"no interval (2 seeds)"}
    result = bt.backtest(df, FIT, n_boot=50)
    row = result.summary.iloc[0]
    assert row.interval == "no interval (2 seeds)" and math.isnan(row.points_coverage)


def test_backtest_scores_held_out_entries(case):
    family, shape, df = case
    result = bt.backtest(df, FIT, n_boot=60)
    row = result.summary.iloc[0]
    # Held-out entries: R[i, j] for i ≥ 12, j ≤ i, per trial: Σ_{i=12}^{29} (i + 1) = 387.
    assert row.n_points == 5 * 387 and len(result.points) == 5 * 387
    assert abs(row.task0_err) < 2.0 and row.task0_covered == 1.0
    assert 0.8 <= row.points_coverage <= 1.0
    assert row.best_family != "power_half"          # the half-power law is not the truth here
    assert row[f"rmse_{family}"] < row["rmse_power_half"]
    # Errors are forecast − measured in points: recompute one from the points table.
    t0 = result.points[(result.points.eval_task == 0) & (result.points.trained == TASKS - 1)]
    assert row.task0_trial_mae == pytest.approx((100 * (t0.pred - t0.measured)).abs().mean())


def test_bad_splits_are_refused():
    df = simulate(exponential, seeds=[0])
    with pytest.raises(fc.ForecastError, match="fit_tasks 30: the trials ran at most 30 tasks"):
        bt.backtest(df, TASKS)
    with pytest.raises(fc.ForecastError, match="need at least 2 tasks"):
        fc.forecast(df, fit_tasks=1, horizon=TASKS)


def test_the_forecast_sees_only_its_window():
    """Whatever was measured after task 12 cannot change a forecast fitted on tasks 0–11."""
    df = simulate(exponential, seeds=range(3))
    later = df.step > FIT * SPT
    spoiled = df.assign(accuracy=np.where(later, 0.5, df.accuracy))
    a = fc.forecast(df, fit_tasks=FIT, horizon=TASKS, n_boot=20)
    b = fc.forecast(spoiled, fit_tasks=FIT, horizon=TASKS, n_boot=20)
    pd.testing.assert_frame_equal(a.task0, b.task0)
    pd.testing.assert_frame_equal(a.final_row, b.final_row)


def test_intervals_cover_tasks_that_forget_unalike():
    """Each task its own decay pace (log-normal, s.d. 0.4, as on the study's development
    seeds): the intervals must widen for it, not only for seed and test noise."""
    df = simulate(power_15, task_sd=0.4, seed=3)
    result = bt.backtest(df, FIT, n_boot=60)
    row = result.summary.iloc[0]
    assert 0.8 <= row.points_coverage <= 0.98, row.points_coverage
    assert 0.85 <= row.means_coverage <= 1.0, row.means_coverage


def test_the_package_exports_the_functions():
    """analysis.forecast and analysis.backtest are functions, even once every analysis module
    is imported (a submodule of the same name would replace them)."""
    import analysis
    import analysis.backtesting  # noqa: F401
    from analysis import backtest, forecast

    assert forecast is fc.forecast and backtest is bt.backtest
    assert callable(analysis.forecast) and callable(analysis.backtest)


def test_a_curve_chosen_on_other_runs_is_used_for_the_held_out_ones():
    # Two groups: exponential forgetting at 64 units, γ = 3/2 at 128. The development seeds'
    # runs show which curve forecasts them best; the held-out seeds are forecast with it, and
    # beat the theory's curve imposed on them.
    df = pd.concat([simulate(exponential), simulate(power_15, seed=1).assign(units=128)])
    df["trial_id"] = df["trial_id"] + "-" + df["units"].astype(str)
    dev, held = df[df.seed.isin([0, 1])], df[df.seed.isin([2, 3, 4])]
    chosen = bt.families_from(bt.backtest(dev, FIT, n_boot=0))
    assert set(chosen) == {("binary", 64), ("binary", 128)}
    assert "power_half" not in chosen.values()
    theory = bt.backtest(held, FIT, family="power_half", n_boot=20).summary.set_index("units")
    mapped = bt.backtest(held, FIT, family=chosen, n_boot=20).summary.set_index("units")
    assert mapped.loc[64, "family"] == chosen[("binary", 64)]
    assert mapped.loc[128, "family"] == chosen[("binary", 128)]
    for units in (64, 128):
        assert abs(mapped.loc[units, "task0_err"]) < abs(theory.loc[units, "task0_err"])
    # a group the mapping lacks chooses inside its window, as with family="auto"
    auto = bt.backtest(held, FIT, n_boot=0).summary.set_index("units")
    partial = bt.backtest(held, FIT, family={("binary", 64): "weibull"}, n_boot=0).summary
    partial = partial.set_index("units")
    assert partial.loc[64, "family"] == "weibull"
    assert partial.loc[128, "family"] == auto.loc[128, "family"]
