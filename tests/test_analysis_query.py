"""`analysis.load` / `load_trials`: sources, pushed-down filters, dtypes, errors.

``make_store`` (used by the other analysis tests too) writes a real store through the project's
writer: retention curves generated from the capacity model, several types, widths and seeds.
"""
import datetime as dt
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import capacity as cap
from analysis.query import QueryError, load, load_trials
from orchestrator.store import Store
from trainables import schema
from trainables.config import TrialConfig

KAPPA = {"none": 1.0, "binary": 10.0, "complex": 14.0}


def make_store(root, *, psps=("none", "binary", "complex"), widths=(64, 256), seeds=(0, 1),
               tasks=6, steps_per_task=100, eval_every=25, sweep="synth", diverge=None,
               train_rows=True):
    """A store at ``root`` with one trial per (psp, width, seed), κ ∝ width^0.9 per type.

    ``diverge``: a (psp, width, seed) whose trial stops after 1.5 tasks with status diverged.
    Returns the steps rows written (a DataFrame)."""
    store = Store(str(root))
    store.initialise()
    frames = []
    for psp in psps:
        kappas = {w: KAPPA.get(psp, 5.0) * (w / 64) ** 0.9 for w in widths}
        df = cap.simulate(kappas, psp=psp, seeds=seeds, tasks=tasks, steps_per_task=steps_per_task,
                          eval_every=eval_every, rng_seed=len(frames), sweep=sweep)
        frames.append(df)
    everything = pd.concat(frames, ignore_index=True)
    for trial_id, rows in everything.groupby("trial_id", sort=True):
        first = rows.iloc[0]
        cfg = TrialConfig(psp=first.psp, units=int(first.units), tasks=tasks, seed=int(first.seed),
                          steps_per_task=steps_per_task, eval_every=eval_every)
        status, last_step = "completed", tasks * steps_per_task
        if diverge == (first.psp, int(first.units), int(first.seed)):
            status, last_step = "diverged", int(1.5 * steps_per_task)
        for task in range(tasks):
            mine = rows[(rows.task == task) & (rows.step <= last_step)]
            if mine.empty:
                break
            measured = [{"step": int(r.step), "task": task, "context": task, "split": "test",
                         "eval_task": int(r.eval_task), "loss": None, "accuracy": float(r.accuracy),
                         "n_examples": 1000} for r in mine.itertuples()]
            if train_rows:
                measured += [{"step": s, "task": task, "context": task, "split": "train",
                              "eval_task": None, "loss": 0.5, "accuracy": 0.9, "n_examples": 128}
                             for s in range(task * steps_per_task + 1,
                                            min((task + 1) * steps_per_task, last_step) + 1)]
            store.write_chunk(trial_id, task, schema.steps_table(
                measured, cfg.identity(), sweep=sweep, trial_id=trial_id, attempt=0))
        store.publish(trial_id)
        now = dt.datetime.now(dt.timezone.utc)
        store.write_trial({"sweep": sweep, "trial_id": trial_id, "attempt": 0,
                           **schema.param_row(cfg.model_dump()), "status": status,
                           "steps_done": last_step, "restarts": 0, "start_time": now,
                           "end_time": now, "device": "cpu"})
    return everything


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage") / "synth" / "results"
    make_store(root, diverge=("none", 64, 1))
    return root


def test_filters_select_rows(store_root):
    df = load(store_root, psp="binary", units=256, split="test", eval_task=0)
    assert set(df.psp) == {"binary"} and set(df.units) == {256} and set(df.eval_task) == {0}
    assert df.seed.nunique() == 2 and df.trial_id.nunique() == 2
    listed = load(store_root, psp=["none", "complex"], seed=[1], split="train",
                  step_min=101, step_max=200)
    assert set(listed.psp) == {"none", "complex"} and set(listed.seed) == {1}
    assert listed.step.between(101, 200).all() and listed.eval_task.isna().all()
    assert load(store_root, psp="rotation").empty


def test_columns_and_tidy_dtypes(store_root):
    df = load(store_root, trial_id="synth-binary-64-s0", split="test", eval_task=0,
              columns=["step", "accuracy"])
    assert list(df.columns) == ["step", "accuracy"]
    assert df.step.tolist() == list(range(25, 601, 25))
    full = load(store_root, units=64, seed=0, psp="binary")
    assert str(full.eval_task.dtype) == "Int32" and full.eval_task.isna().sum() == 600
    assert full.accuracy.dtype == "float64" and full.units.dtype == "int32"
    assert full.seed.dtype == "int64" and full.step.dtype == "int64"
    assert full.loss[full.split == "test"].isna().all()  # not measured: null, never 0


def test_filters_are_pushed_down_to_pyarrow(store_root, monkeypatch):
    seen = {}
    original = Store.read_steps

    def spy(self, filter=None, columns=None):
        seen["filter"] = filter
        return original(self, filter=filter, columns=columns)

    monkeypatch.setattr(Store, "read_steps", spy)
    load(store_root, psp="binary", units=[64, 256], step_max=300)
    text = str(seen["filter"])
    assert "psp" in text and "units" in text and "step" in text


def test_a_sweep_directory_and_a_store_root_read_the_same(store_root):
    a = load(store_root, psp="complex", split="test")
    b = load(store_root.parent, psp="complex", split="test")
    pd.testing.assert_frame_equal(a, b)


def test_load_trials_and_diverged(store_root):
    trials = load_trials(store_root)
    assert len(trials) == 12 and trials.trial_id.is_unique
    diverged = load_trials(store_root, status="diverged")
    assert diverged.trial_id.tolist() == ["synth-none-64-s1"]
    assert diverged.steps_done.iloc[0] == 150
    steps = load(store_root, trial_id="synth-none-64-s1")
    assert steps.step.max() == 150


def test_a_single_psp_run_file(tmp_path, store_root):
    steps = load(store_root, trial_id="synth-binary-64-s0")
    table = pq.read_table(store_root / "steps" / "synth-binary-64-s0" / "trial.parquet",
                          filters=[("task", "==", 0)])
    out = tmp_path / "run.parquet"
    # The same chunk twice, the second as a later attempt with other numbers: latest wins.
    again = table.set_column(table.schema.get_field_index("attempt"), "attempt",
                             pa.array([1] * len(table), pa.int32()))
    again = again.set_column(again.schema.get_field_index("accuracy"), "accuracy",
                             pa.array([0.5] * len(table), pa.float32()))
    pq.write_table(pa.concat_tables([table, again]), out)
    df = load(out, split="test", eval_task=0)
    assert (df.accuracy == 0.5).all() and df.step.is_unique and (df.attempt == 1).all()
    # no X.trials.parquet beside it: rows rebuilt from the steps
    trials = load_trials(out)
    assert trials.trial_id.tolist() == ["synth-binary-64-s0"] and trials.status.isna().all()
    assert trials.steps_done.iloc[0] == 100 and trials.units.iloc[0] == 64
    # with it: read from it
    pq.write_table(pq.read_table(store_root / "trials" / "synth-binary-64-s0.parquet"),
                   tmp_path / "run.trials.parquet")
    assert load_trials(out).status.tolist() == ["completed"]
    assert len(steps) > 0


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or directory"),
    (lambda p: p, "not a psplab store"),
    (lambda p: (p / "x.csv").write_text("a\n") and p / "x.csv", "not a Parquet file"),
    (lambda p: (p / "x.parquet").write_text("junk") and p / "x.parquet", "not a readable"),
])
def test_bad_store_paths_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(QueryError, match=message) as info:
        load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_filters_name_the_field(store_root):
    with pytest.raises(QueryError, match="units"):
        load(store_root, units="wide")
    with pytest.raises(QueryError, match="unknown filter 'colour'"):
        load(store_root, colour="red")
    with pytest.raises(QueryError, match="unknown column"):
        load(store_root, columns=["nope"])


def test_nan_is_never_zero_in_an_empty_result(store_root):
    df = load(store_root, psp="binary", step_min=10**9)
    assert df.empty and math.isnan(df.accuracy.mean())
