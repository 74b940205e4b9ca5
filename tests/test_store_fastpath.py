"""The per-trial read (`read_steps(trial_id=…)`, `load(store, trial_id=…)`) opens only the
named trials' directories; it must return exactly what the general read over all of steps/
returns, duplicates, filters, columns, rows in flight and errors included. Compaction must
change no read."""
from __future__ import annotations

import os
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from analysis import load, load_trials
from orchestrator import faults
from orchestrator.fsck import check
from orchestrator.store import Store, StoreError, latest_attempt
from trainables import schema


def general(store: Store, ids, filter=None, columns=None, live=False) -> pd.DataFrame:
    """The reference: the whole steps/ dataset with trial_id as one more filter."""
    term = ds.field("trial_id").isin(pa.array(ids, pa.string()))
    return store.read_steps(filter=term if filter is None else filter & term, columns=columns,
                            live=live)


@pytest.fixture
def store(tmp_path) -> Store:
    """Three published trials; t1 was retried (attempt 1 replaced task 1, and a file of the
    older layout re-measured steps of task 0), t2 holds the same measurement twice with the
    same attempt, and runs again: attempt 1's task 1 is in flight."""
    store = Store(str(tmp_path / "store"))
    store.initialise()
    for trial in ("t0", "t1", "t2"):
        for task in range(3):
            store.write_chunk(trial, task, faults.synthetic_chunk(trial, task, 0))
        store.publish(trial)
        store.write_trial({"trial_id": trial, "attempt": 0, "status": "completed"})
    store.write_chunk("t1", 1, faults.synthetic_chunk("t1", 1, 1, values=1))
    store.publish("t1")
    faults.write_legacy_chunk(store, "t1", 7, faults.synthetic_chunk("t1", 0, 1, values=2))
    faults.write_legacy_chunk(store, "t2", 9, faults.synthetic_chunk("t2", 2, 0, values=3))
    store.write_chunk("t2", 1, faults.synthetic_chunk("t2", 1, 1, values=4))
    # What dataset reads skip, the per-trial read must skip too.
    pq.write_table(faults.synthetic_chunk("t0", 0, 5), os.path.join(store.steps_dir, "t0",
                                                                    ".tmp-x-task-000000.parquet"))
    os.makedirs(os.path.join(store.steps_dir, "t0", "_old"))
    pq.write_table(faults.synthetic_chunk("t0", 0, 6), os.path.join(store.steps_dir, "t0",
                                                                    "_old", "task-000000.parquet"))
    return store


@pytest.mark.parametrize("ids", [["t0"], ["t1"], ["t2"], ["t2", "t0"], ["t1", "t1"],
                                 ["nosuch"], [], ["t1", "nosuch"], ["../t1"]])
@pytest.mark.parametrize("filter,columns", [
    (None, None),
    (ds.field("split") == "test", None),
    ((ds.field("step") >= 12) & (ds.field("eval_task") == 0), ["accuracy"]),
    (ds.field("attempt") == 0, ["loss", "task"]),
])
@pytest.mark.parametrize("live", [False, True])
def test_per_trial_read_is_the_general_read(store, ids, filter, columns, live):
    fast = store.read_steps(filter=filter, columns=columns, trial_id=ids, live=live)
    pd.testing.assert_frame_equal(fast, general(store, ids, filter, columns, live))


def test_a_live_read_puts_the_task_in_flight_in_place_of_the_published_one(store):
    published, live = store.read_steps(trial_id="t2"), store.read_steps(trial_id="t2", live=True)
    assert set(published.attempt) == {0} and len(live) == len(published)
    assert set(live[live.task == 1].attempt) == {1}
    assert set(live[live.task != 1].attempt) == {0}


def test_duplicates_resolve_as_in_the_general_read(store):
    t1 = store.read_steps(trial_id="t1")
    assert set(t1[t1.task == 1].attempt) == {1} and set(t1[t1.task == 0].attempt) == {1}
    assert not t1.duplicated(list(schema.KEY_COLUMNS)).any()
    t2 = store.read_steps(trial_id="t2")
    assert len(t2) == len(store.read_steps(trial_id="t2").drop_duplicates())
    pd.testing.assert_frame_equal(t2, general(store, ["t2"]))


def test_load_with_trial_id_matches_load_without_the_shortcut(store, monkeypatch):
    cases = [dict(trial_id="t1"), dict(trial_id=["t0", "t2"], split="train", step_min=5),
             dict(trial_id="t1", eval_task=0, columns=["step", "accuracy"]),
             dict(trial_id="nosuch")]
    fast = [load(store.root, **case) for case in cases]
    fast_trials = load_trials(store.root, trial_id=["t2", "t0"])
    original = Store.read_steps

    def without_shortcut(self, filter=None, columns=None, *, trial_id=None):
        return original(self, filter=filter, columns=columns)  # the filter names the ids

    monkeypatch.setattr(Store, "read_steps", without_shortcut)
    monkeypatch.setattr(Store, "read_trials",
                        lambda self, filter=None, trial_id=None: self._read(
                            self._dataset(self.trials_dir, schema.TRIALS_SCHEMA, filter),
                            filter=filter).to_pandas())
    for case, got in zip(cases, fast):
        pd.testing.assert_frame_equal(got, load(store.root, **case))
    pd.testing.assert_frame_equal(fast_trials, load_trials(store.root, trial_id=["t2", "t0"]))


def test_a_misplaced_file_leaks_no_rows(store):
    pq.write_table(faults.synthetic_chunk("t2", 0, 4), store.chunk_path("t0", 8))
    os.makedirs(os.path.dirname(store.inflight_path("t0", 8)))
    pq.write_table(faults.synthetic_chunk("t2", 0, 4), store.inflight_path("t0", 8))
    fast = store.read_steps(trial_id="t0")
    assert set(fast.trial_id) == {"t0"}
    pd.testing.assert_frame_equal(fast, general(store, ["t0"]))
    fast = store.read_steps(trial_id="t0", live=True)
    assert set(fast.trial_id) == {"t0"}
    pd.testing.assert_frame_equal(fast, general(store, ["t0"], live=True))


def test_per_trial_read_checks_files_like_the_general_read(store):
    path = store.chunk_path("t1", 4)
    open(path, "wb").write(b"PAR1" + b"\0" * 100)
    with pytest.raises(StoreError, match=f"{path}.*psp fsck"):
        store.read_steps(trial_id="t1")
    newer = store.chunk_path("t0", 4)
    table = faults.synthetic_chunk("t0", 4, 0)
    pq.write_table(table.replace_schema_metadata({schema.METADATA_KEY: b"99"}), newer)
    with pytest.raises(StoreError, match=f"{newer}.*schema version 99"):
        store.read_steps(trial_id="t0")
    inflight = store.inflight_path("t2", 5)
    open(inflight, "wb").write(b"PAR1" + b"\0" * 100)
    store.read_steps(trial_id="t2")  # a published read never opens what is in flight
    for read in (lambda: store.read_steps(trial_id="t2", live=True), lambda: store.publish("t2")):
        with pytest.raises(StoreError, match=f"{inflight}.*psp fsck"):
            read()


def test_a_store_without_steps_reads_as_the_general_read(tmp_path):
    store = Store(str(tmp_path / "empty"))
    pd.testing.assert_frame_equal(store.read_steps(trial_id="t0", columns=["loss"]),
                                  store.read_steps(filter=ds.field("trial_id") == "t0",
                                                   columns=["loss"]))


def test_compaction_changes_no_read(store):
    """Folding the older layout's files (t1, t2) changes no read, and leaves pandas alone
    seeing what the store's reader sees; t2's task in flight becomes the published one."""
    before = {t: store.read_steps(trial_id=t, live=True) for t in ("t0", "t1", "t2")}
    everything = store.read_steps(live=True)
    for trial in ("t0", "t1", "t2"):
        path = store.compact_trial(trial)
        assert os.path.basename(path) == "trial.parquet"
        visible = [n for n in os.listdir(os.path.join(store.steps_dir, trial))
                   if not n.startswith((".", "_"))]
        assert visible == [os.path.basename(path)]
        pd.testing.assert_frame_equal(store.read_steps(trial_id=trial), before[trial])
    pd.testing.assert_frame_equal(store.read_steps(), everything)
    assert len(pd.read_parquet(store.steps_dir)) == len(everything)


def test_fsck_accepts_a_published_trial(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.initialise()
    for task in range(4):
        store.write_chunk("t0", task, faults.synthetic_chunk("t0", task, 0))
    store.write_trial({"trial_id": "t0", "attempt": 0, "status": "completed"})
    report = check(store)
    assert not report.problems and any("in flight" in w for w in report.warnings), report
    store.publish("t0")
    report = check(store)
    assert not report.problems and not report.warnings and report.chunks == 1, report


def test_a_published_trial_run_again_keeps_the_new_attempt(store):
    store.publish("t1")
    store.write_chunk("t1", 2, faults.synthetic_chunk("t1", 2, 2, values=9))
    t1 = store.read_steps(trial_id="t1", live=True)
    assert set(t1[t1.task == 2].attempt) == {2}
    pd.testing.assert_frame_equal(t1, general(store, ["t1"], live=True))
    store.publish("t1")  # again: the file replaces itself, the chunk goes
    pd.testing.assert_frame_equal(store.read_steps(trial_id="t1"), t1)
    assert os.listdir(os.path.join(store.steps_dir, "t1")) == ["trial.parquet"]


def test_latest_attempt_matches_pandas_sort_and_duplicated():
    """The numpy implementation against the obvious pandas one, on random keys with NA."""
    def reference(df):
        keys = list(schema.KEY_COLUMNS)
        df = df.sort_values([*keys, "attempt"], kind="stable", na_position="first")
        return df[~df.duplicated(keys, keep="last")].reset_index(drop=True)

    rng = random.Random(3)
    for case in range(200):
        n = rng.randint(1, 60)
        df = pd.DataFrame({
            "trial_id": pd.array([rng.choice(["a", "b", "ä", None]) for _ in range(n)],
                                 dtype=rng.choice(["str", "string", object])),
            "step": np.array([rng.randint(-2, 4) for _ in range(n)], dtype="int64"),
            "split": [rng.choice(["train", "test"]) for _ in range(n)],
            "eval_task": pd.array([rng.choice([0, 1, None]) for _ in range(n)],
                                  dtype=rng.choice(["Int32", "float64"])),
            "attempt": np.array([rng.randint(0, 2) for _ in range(n)], dtype="int32"),
            "row": np.arange(n),
        })
        pd.testing.assert_frame_equal(latest_attempt(df), reference(df), obj=f"case {case}")


def test_psp_compact_merges_finished_trials_only(tmp_path, capsys):
    """On a store of the older layout (a chunk file per task), `psp compact` merges
    completed/diverged trials, leaves running and errored ones (a resume writes to them)
    untouched, and changes no read."""
    from orchestrator.cli import main

    store = Store(str(tmp_path / "store"))
    store.initialise()
    for trial, status in (("done", "completed"), ("nan", "diverged"), ("live", "running"),
                          ("bad", "error")):
        for task in range(3):
            faults.write_legacy_chunk(store, trial, task, faults.synthetic_chunk(trial, task, 0))
        store.write_trial({"trial_id": trial, "attempt": 0, "status": status})
    before = store.read_steps().sort_values(["trial_id", "step", "eval_task"], ignore_index=True)

    assert main(["compact", store.uri]) == 0
    out = capsys.readouterr().out
    assert "compacted 2 trial(s): 6 file(s) -> 2" in out
    assert "live (running)" in out and "bad (error)" in out
    assert [len(store.trial_files(t)) for t in ("done", "nan", "live", "bad")] == [1, 1, 3, 3]
    after = store.read_steps().sort_values(["trial_id", "step", "eval_task"], ignore_index=True)
    pd.testing.assert_frame_equal(before, after)
    assert pd.read_parquet(store.path("steps")).shape[0] == len(before)  # pandas alone agrees

    assert main(["compact", store.uri, "--trial", "nope"]) == 2
    assert "--trial nope: no such trial" in capsys.readouterr().err
