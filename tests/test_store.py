"""The results store's contract, one property per test: layout, replacement, latest-attempt
reads, version checks and the errors that name what is wrong."""
from __future__ import annotations

import json
import os
import time

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator import faults
from orchestrator.store import (MANIFEST, TMP_PREFIX, Store, StoreError, _split_s3_timeouts,
                                latest_attempt, resolve)
from trainables import schema


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "store"))
    store.initialise()
    return store


def test_layout_and_a_plain_pandas_read(store):
    chunks = [faults.synthetic_chunk("t1", task, 0) for task in range(2)]
    for task, chunk in enumerate(chunks):
        store.write_chunk("t1", task, chunk)
    root = store.root
    assert json.load(open(os.path.join(root, MANIFEST))) == {"schema_version": schema.SCHEMA_VERSION}
    assert sorted(os.listdir(os.path.join(root, "_inflight", "t1"))) == ["task-000000.parquet",
                                                                         "task-000001.parquet"]
    # In flight: only a live read sees the rows; steps/ holds nothing of the trial yet.
    assert store.read_steps().empty and not os.listdir(store.steps_dir)
    assert len(store.read_steps(live=True)) == sum(c.num_rows for c in chunks)
    store.publish("t1")
    store.write_trial({"trial_id": "t1", "attempt": 0, "status": "completed"})
    assert os.listdir(os.path.join(root, "steps", "t1")) == ["trial.parquet"]
    assert not os.path.exists(os.path.join(root, "_inflight", "t1"))  # nothing left in flight
    df = pd.read_parquet(os.path.join(root, "steps"))
    assert list(df.columns) == schema.STEPS_SCHEMA.names
    assert len(df) == len(store.read_steps()) == sum(c.num_rows for c in chunks)
    assert store.read_trials().status.tolist() == ["completed"]


def test_rewriting_a_chunk_replaces_it(store):
    store.write_chunk("t1", 0, faults.synthetic_chunk("t1", 0, 0))
    store.write_chunk("t1", 0, faults.synthetic_chunk("t1", 0, 1, values=7))
    df = store.read_steps(live=True)
    assert set(df.attempt) == {1} and len(df) == faults.synthetic_chunk("t1", 0, 1).num_rows
    assert os.listdir(os.path.join(store.root, "_inflight", "t1")) == ["task-000000.parquet"]


def test_publishing_again_replaces_the_published_tasks_in_one_file(store):
    """A published trial run again from task 1 (a resumed sweep): its new chunks replace those
    tasks' rows in the same file, which never stands beside a chunk a reader can see. The
    expected rows are built here from the chunks, task by task."""
    first = [faults.synthetic_chunk("t1", task, 0) for task in range(3)]
    for task, chunk in enumerate(first):
        store.write_chunk("t1", task, chunk)
    path = store.publish("t1")
    again = [faults.synthetic_chunk("t1", task, 1, values=5) for task in (1, 2)]
    for task, chunk in zip((1, 2), again):
        store.write_chunk("t1", task, chunk)
    live = store.read_steps(live=True)
    assert store.publish("t1") == path
    assert os.listdir(os.path.join(store.steps_dir, "t1")) == ["trial.parquet"]
    expected = pd.concat([first[0].to_pandas(), *(c.to_pandas() for c in again)])
    got = pd.read_parquet(os.path.join(store.root, "steps"))
    key = list(schema.KEY_COLUMNS)
    pd.testing.assert_frame_equal(got.sort_values(key, ignore_index=True),
                                  expected.sort_values(key, ignore_index=True), check_dtype=False)
    pd.testing.assert_frame_equal(store.read_steps(), live)  # what live promised, published


def test_a_task_run_again_with_fewer_rows_drops_the_old_rows_of_that_task(store):
    """A resumed attempt that diverged early in task 1: task 1's old rows after that step are
    gone (its chunk replaces the task), task 2's older rows remain, as a task's chunk did."""
    for task in range(3):
        store.write_chunk("t1", task, faults.synthetic_chunk("t1", task, 0))
    store.publish("t1")
    short = faults.synthetic_chunk("t1", 1, 1).slice(0, 3)
    store.write_chunk("t1", 1, short)
    store.publish("t1")
    df = store.read_steps()
    assert df[df.task == 1].step.tolist() == short["step"].to_pylist()
    assert set(df[df.task == 2].attempt) == {0} and set(df[df.task == 0].attempt) == {0}


def test_reader_keeps_the_latest_attempt_across_files(store):
    """Files never hold the same measurement twice through write_chunk; if an older layout
    or a hand copy leaves one, the reader still returns the latest attempt once."""
    store.write_chunk("t1", 0, faults.synthetic_chunk("t1", 0, 1))
    store.publish("t1")
    pq.write_table(faults.synthetic_chunk("t1", 0, 2, values=2), store.chunk_path("t1", 5))
    df = store.read_steps()
    assert set(df.attempt) == {2}
    assert not df.duplicated(list(schema.KEY_COLUMNS)).any()


def test_latest_attempt_is_per_key_and_sorted():
    df = pd.DataFrame({"trial_id": ["a", "a", "a", "b"], "step": [2, 1, 1, 1],
                       "split": ["train"] * 4, "eval_task": [None] * 4, "attempt": [0, 0, 3, 1],
                       "loss": [0.2, 0.1, 0.9, 0.5]})
    out = latest_attempt(df)
    assert out[["trial_id", "step", "attempt"]].values.tolist() == [["a", 1, 3], ["a", 2, 0],
                                                                    ["b", 1, 1]]


def test_filters_and_columns_push_down(store):
    for trial_id in ("t1", "t2"):
        store.write_chunk(trial_id, 0, faults.synthetic_chunk(trial_id, 0, 0))
        store.publish(trial_id)
    df = store.read_steps(filter=ds.field("trial_id") == "t2", columns=["accuracy"])
    assert set(df.trial_id) == {"t2"}
    assert set(df.columns) == {"accuracy", *schema.KEY_COLUMNS, "attempt"}


def test_written_files_carry_this_schema_version(store):
    table = faults.synthetic_chunk("t1", 0, 0).replace_schema_metadata({})
    path = store.write_chunk("t1", 0, table)
    assert schema.file_schema_version(pq.read_schema(path)) == schema.SCHEMA_VERSION
    path = store.publish("t1")
    assert schema.file_schema_version(pq.read_schema(path)) == schema.SCHEMA_VERSION


@pytest.mark.parametrize("trial_id", ["../evil", "a/b", ".hidden", "_x", "k=v", "", "x" * 201])
def test_trial_ids_that_would_escape_or_hide_are_refused(store, trial_id):
    with pytest.raises(StoreError, match="trial_id"):
        store.write_chunk(trial_id, 0, faults.synthetic_chunk("ok", 0, 0))
    assert os.listdir(store.steps_dir) == []


def test_a_chunk_with_another_trials_rows_is_refused(store):
    with pytest.raises(schema.SchemaError, match="other"):
        store.write_chunk("mine", 0, faults.synthetic_chunk("other", 0, 0))


def test_a_chunk_with_wrong_columns_is_refused(store):
    with pytest.raises(schema.SchemaError, match="mine"):
        store.write_chunk("mine", 0, faults.synthetic_chunk("mine", 0, 0).drop_columns(["loss"]))


def test_temporary_files_are_invisible(store):
    """To pandas (a leading '.'), and to DuckDB's and polars' globs, which match hidden names
    too: a temporary file does not end in .parquet."""
    import duckdb
    import polars as pl

    store.write_chunk("t1", 0, faults.synthetic_chunk("t1", 0, 0))
    store.publish("t1")
    leftovers = [faults.leave_partial_write(store, "t1", 1, faults.synthetic_chunk("t1", 1, 0), 0.5),
                 faults.leave_partial_write(store, "t1", 1, faults.synthetic_chunk("t1", 1, 0), 0.5,
                                            path=store.published_path("t1"))]
    assert all(os.path.basename(p).startswith(TMP_PREFIX) for p in leftovers)
    assert os.path.dirname(leftovers[1]) == os.path.join(store.steps_dir, "t1")
    rows = len(store.read_steps())
    assert len(pd.read_parquet(os.path.join(store.root, "steps"))) == rows > 0
    glob = os.path.join(store.steps_dir, "*", "*.parquet")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0] == rows
    assert pl.read_parquet(glob).height == rows


def test_manifest_is_written_atomically(store, tmp_path):
    fs = faults.faulty(1, ops=("move",))
    broken = Store(str(tmp_path / "other"), filesystem=fs, write_retries=0)
    with pytest.raises(StoreError, match=MANIFEST):
        broken.initialise()
    assert not os.path.exists(os.path.join(tmp_path / "other", MANIFEST))


def test_newer_manifest_is_refused_for_reads_and_writes(store):
    json.dump({"schema_version": 99}, open(os.path.join(store.root, MANIFEST), "w"))
    for action in (store.read_steps, store.read_trials, store.initialise):
        with pytest.raises(StoreError, match="schema version 99.*upgrade psplab"):
            action()


def test_newer_file_is_refused_naming_it(store):
    path = store.chunk_path("t1", 0)
    os.makedirs(os.path.dirname(path))
    table = faults.synthetic_chunk("t1", 0, 0)
    pq.write_table(table.replace_schema_metadata({schema.METADATA_KEY: b"99"}), path)
    with pytest.raises(StoreError, match=f"{path}.*schema version 99"):
        store.read_steps()


def test_corrupt_file_is_named_with_the_fix(store):
    store.write_chunk("t1", 0, faults.synthetic_chunk("t1", 0, 0))
    store.publish("t1")
    path = store.chunk_path("t1", 1)
    open(path, "wb").write(b"PAR1" + b"\0" * 100)
    with pytest.raises(StoreError, match=f"{path}.*psp fsck"):
        store.read_steps()


def test_empty_store_reads_as_empty_frames(tmp_path):
    store = Store(str(tmp_path / "nothing-yet"))
    assert store.read_steps().empty and list(store.read_steps().columns) == schema.STEPS_SCHEMA.names
    assert store.read_trials().empty


def test_s3_timeouts_are_taken_off_the_uri():
    uri, timeouts = _split_s3_timeouts("s3://b/p?region=eu-west-1&connect_timeout=1&retries=2")
    assert uri == "s3://b/p?region=eu-west-1"
    assert timeouts == {"connect_timeout": 1.0, "retries": 2.0}
    assert _split_s3_timeouts("/local/path?connect_timeout=1") == ("/local/path?connect_timeout=1", {})
    with pytest.raises(StoreError, match="connect_timeout"):
        _split_s3_timeouts("s3://b/p?connect_timeout=soon")


@pytest.mark.parametrize("uri", ["hdfs://namenode:8020/x", "nosuch://bucket/x"])
def test_unsupported_storage_names_the_uri(uri):
    with pytest.raises(StoreError, match=uri) as raised:
        resolve(uri)
    assert len(str(raised.value)) < 400  # libhdfs's list of every path it tried is cut short


def test_unreachable_s3_fails_fast_naming_the_uri(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = ("s3://psplab-unreachable/store?region=us-east-1&endpoint_override=127.0.0.1:9"
           "&scheme=http&connect_timeout=1&request_timeout=1&retries=1")
    started = time.monotonic()
    with pytest.raises(StoreError, match="psplab-unreachable") as raised:
        Store(uri).read_steps()
    assert time.monotonic() - started < 3
    assert "\n" not in str(raised.value)
