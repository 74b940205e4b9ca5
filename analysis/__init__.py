"""psplab analysis: queries, continual-learning metrics, capacity estimates and plots.

    from analysis import load, load_trials, summarize, capacity_table, width_scaling
    df = load("results/sweeps/demo", split="test")        # tidy rows, filters pushed down
    summary = summarize(df)                                # ACC, last-10, BWT, forgetting
    table, draws = capacity_table(df, return_draws=True)  # K* per (psp, units), bootstrap CI
    width_scaling(table, draws)                            # K* ∝ units^α per superposition type

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
    "capacity_table": "analysis.capacity", "estimate_capacity": "analysis.capacity",
    "width_scaling": "analysis.capacity", "retention_points": "analysis.capacity",
    "fit_retention": "analysis.capacity", "CapacityError": "analysis.capacity",
    "write_all": "analysis.plots",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
