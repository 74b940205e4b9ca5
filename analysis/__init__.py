"""psplab analysis: queries, continual-learning metrics, capacity estimates and plots.

    from analysis import load, load_trials, summarize, capacity_table, width_scaling
    df = load("results/sweeps/demo", split="test")        # tidy rows, filters pushed down
    summary = summarize(df)                                # ACC, last-10, BWT, forgetting
    table, draws = capacity_table(df, return_draws=True)  # K* and K̂ per group, seed bootstrap
    width_scaling(table, draws)                            # K* ∝ units^α per configuration
    backtest(df, fit_tasks=10).summary                     # forecasts from 10 tasks vs measured

Names are imported lazily so that `psp --help` (which imports analysis.cli) stays fast.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load": "analysis.query", "load_trials": "analysis.query", "QueryError": "analysis.query",
    "accuracy_matrix": "analysis.metrics", "anytime_curves": "analysis.metrics",
    "average_accuracy": "analysis.metrics", "average_last_k": "analysis.metrics",
    "backward_transfer": "analysis.metrics", "forgetting": "analysis.metrics",
    "average_forgetting": "analysis.metrics", "summarize": "analysis.metrics",
    "aggregate": "analysis.metrics",
    "group_columns": "analysis.groups",
    "capacity_table": "analysis.capacity", "estimate_capacity": "analysis.capacity",
    "CapacityError": "analysis.capacity", "width_scaling": "analysis.scaling",
    "retention_points": "analysis.retention", "survival_times": "analysis.survival",
    "kaplan_meier": "analysis.survival", "forecast": "analysis.forecasting",
    "ForecastError": "analysis.forecasting", "backtest": "analysis.backtesting",
    "families_from": "analysis.backtesting",
    "write_all": "analysis.plots", "write_study": "analysis.study",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
