"""Groups are every trial parameter that varies: two configurations with the same psp × units
are never pooled as if they were seeds, and a diverged seed is counted, not dropped."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import capacity as cap
from analysis import groups as grp
from analysis import metrics


def two_configs(column: str, values, kappas, seeds=range(3)) -> pd.DataFrame:
    """Same psp and units, ``column`` set to each of ``values``, with a different κ each."""
    frames = []
    for value, kappa in zip(values, kappas):
        df = cap.simulate({64: kappa}, seeds=seeds, tasks=8, steps_per_task=40, eval_every=20,
                          rng_seed=len(frames), sweep=f"s{len(frames)}")
        frames.append(df.assign(**{column: value}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("column, values", [("heads", ["single", "multi"]),
                                            ("penalty_strength", [np.nan, 100.0])])
def test_capacity_keeps_configurations_apart(column, values):
    df = two_configs(column, values, kappas=(3.0, 30.0))
    assert grp.group_columns(df) == ["psp", "units", column]
    table = cap.capacity_table(df, n_boot=20)
    assert len(table) == 2 and table["n_seeds"].tolist() == [3, 3]
    by_value = {("nan" if pd.isna(v) else v): k for v, k in zip(table[column], table["K_star"])}
    truth = {k: cap.capacity_from_kappa(kappa, cap.z_threshold(0.9, 0.9))
             for k, kappa in zip(["nan" if pd.isna(v) else v for v in values], (3.0, 30.0))}
    for key, k in by_value.items():
        assert k == pytest.approx(truth[key], rel=0.15), (key, k, truth[key])
    # Pooled as if seeds, the two would have given one K* between the two.
    pooled = cap.capacity_table(df, by=["psp", "units"], n_boot=0).iloc[0]
    assert truth[min(truth, key=truth.get)] < pooled.K_star < max(truth.values())


def test_summaries_aggregate_by_what_varies_and_count_diverged_seeds():
    df = two_configs("heads", ["single", "multi"], kappas=(3.0, 30.0))
    # Seed 2 of "multi" diverged during its 5th task: rows after that are missing.
    cut = (df.heads == "multi") & (df.seed == 2) & (df.step > 4 * 40 + 10)
    df = df[~cut]
    trials = df.drop_duplicates("trial_id")[["trial_id"]].assign(status="completed")
    diverged_id = df.loc[(df.heads == "multi") & (df.seed == 2), "trial_id"].iloc[0]
    trials.loc[trials.trial_id == diverged_id, "status"] = "diverged"
    summary = metrics.summarize(df, trials=trials)
    table = metrics.aggregate(summary).set_index("heads")
    assert table.loc["multi", "n_trials"] == 3 and table.loc["multi", "n_diverged"] == 1
    assert table.loc["multi", "n_incomplete"] == 1 and table.loc["multi", "acc_n"] == 2
    assert table.loc["single", "n_diverged"] == 0 and table.loc["single", "acc_n"] == 3


def test_config_only_parameters_group_too():
    df = two_configs("sweep_tag", ["a", "b"], kappas=(3.0, 30.0)).drop(columns="sweep_tag")
    ids = sorted(df.trial_id.unique())
    trials = pd.DataFrame({"trial_id": ids, "config_json": [
        json.dumps({"input_norm": tid.startswith("s1"), "threads": i, "units": 64})
        for i, tid in enumerate(ids)]})
    joined, by = grp.grouped(df, trials)
    assert by == ["psp", "units", "input_norm"]   # threads says how it ran: not a group
    assert joined.groupby("input_norm").trial_id.nunique().tolist() == [3, 3]


def test_interval_words():
    assert grp.no_interval(1) == "no interval (1 seed)"
    assert grp.no_interval(2) == "no interval (2 seeds)"
    assert grp.no_interval(3) == ""
    assert math.isnan(grp.percentile_interval([np.nan], 0.9)[0])
