"""Issue 6, item 5: storage that fails. Writes are retried a bounded number of times with
backoff, then fail loudly naming the file; rows acknowledged equal rows persisted.

The faults come from `orchestrator.faults`, a `pyarrow.fs.PyFileSystem` whose handler delegates
to the local filesystem and raises on chosen write calls (opening the output stream, writing
to it, renaming).
"""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

import orchestrator.store as store_module
from orchestrator import faults
from orchestrator.store import TMP_PREFIX, Store, StoreError


@pytest.fixture
def no_sleep(monkeypatch):
    """Record the backoff delays instead of sleeping through them."""
    delays: list[float] = []
    monkeypatch.setattr(store_module, "_sleep", delays.append)
    return delays


def visible_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root)
                  for n in names if not n.startswith((".", "_")))


def leftovers(root) -> list[str]:
    return [n for _, _, names in os.walk(root) for n in names if n.startswith(TMP_PREFIX)]


def test_injected_filesystem_keeps_the_store_root(tmp_path):
    for uri in (str(tmp_path / "s"), f"file://{tmp_path}/s"):
        shutil.rmtree(tmp_path / "s", ignore_errors=True)
        store = Store(uri, filesystem=faults.faulty(fail_every=1000))
        assert store.root == str(tmp_path / "s")
        store.write_chunk("t", 0, faults.synthetic_chunk("t", 0, 0))
        assert visible_files(tmp_path / "s") == ["_inflight/t/task-000000.parquet"]
        store.publish("t")
        assert visible_files(tmp_path / "s") == ["steps/t/trial.parquet"]


@pytest.mark.parametrize("ops, every", [
    (("open_output_stream", "move"), 3),
    (("open_output_stream", "move"), 5),
    (("write",), 2),
    (("open_output_stream", "move", "write"), 4),
])
def test_every_kth_write_fails_and_is_retried(tmp_path, no_sleep, ops, every):
    fs = faults.faulty(every, ops=ops)
    store = Store(str(tmp_path), filesystem=fs, write_retries=3)
    written = [faults.synthetic_chunk("t", task, 0) for task in range(12)]
    for task, table in enumerate(written):
        store.write_chunk("t", task, table)
    assert fs.handler.failures, "no fault was injected: the test proves nothing"
    assert len(no_sleep) == len(fs.handler.failures)  # one backoff per failed try
    for task, table in enumerate(written):
        assert pq.read_table(store.inflight_path("t", task)).equals(table)
    assert leftovers(tmp_path) == []  # a failed try cleans up its temporary file


def test_persistent_failure_raises_naming_the_file_after_bounded_backoff(tmp_path, no_sleep):
    fs = faults.faulty(1, ops=("move",))
    store = Store(str(tmp_path), filesystem=fs, write_retries=3, retry_backoff_s=0.5)
    with pytest.raises(StoreError) as raised:
        store.write_chunk("t", 7, faults.synthetic_chunk("t", 7, 0))
    message = str(raised.value)
    assert store.inflight_path("t", 7) in message and "after 4 tries" in message
    assert "\n" not in message
    assert len(fs.handler.failures) == 4            # bounded: 1 try + 3 retries
    assert no_sleep == [0.5, 1.0, 2.0]              # exponential backoff between them
    assert visible_files(tmp_path) == [] and leftovers(tmp_path) == []


def test_a_failing_trial_row_names_its_file(tmp_path, no_sleep):
    store = Store(str(tmp_path), filesystem=faults.faulty(1), write_retries=1)
    with pytest.raises(StoreError, match="trials/t.parquet"):
        store.write_trial({"trial_id": "t", "attempt": 0, "status": "running"})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_acknowledged_equal_rows_persisted(tmp_path, no_sleep, seed):
    fs = faults.faulty(fail_probability=0.3, seed=seed, ops=faults.WRITE_OPS)
    store = Store(str(tmp_path), filesystem=fs, write_retries=1)
    acknowledged, refused = [], []
    for task in range(30):
        table = faults.synthetic_chunk("t", task, 0)
        try:
            store.write_chunk("t", task, table)
        except StoreError as exc:
            assert store.inflight_path("t", task) in str(exc)
            refused.append(task)
        else:
            acknowledged.append(table)
    assert acknowledged and refused, "want both outcomes for this to prove anything"
    expected = pd.concat([t.to_pandas() for t in acknowledged])
    persisted = pd.read_parquet(tmp_path / "_inflight")
    key = ["task", "step", "split", "eval_task"]
    pd.testing.assert_frame_equal(persisted.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True),
                                  check_dtype=False)
    assert len(store.read_steps(live=True)) == len(expected)
    for task in refused:  # a write that raised left nothing a reader can see
        assert not os.path.exists(store.inflight_path("t", task))


def test_lost_acknowledgements_never_leave_partial_or_doubled_rows(tmp_path, no_sleep):
    """The rename happens but its reply is lost: the retry rewrites the same chunk in place."""
    fs = faults.faulty(2, ops=("move",), after=True)
    store = Store(str(tmp_path), filesystem=fs, write_retries=3)
    written = [faults.synthetic_chunk("t", task, 0) for task in range(6)]
    for task, table in enumerate(written):
        store.write_chunk("t", task, table)
    assert fs.handler.failures
    for task, table in enumerate(written):
        assert pq.read_table(store.inflight_path("t", task)).equals(table)
    assert len(store.read_steps(live=True)) == sum(t.num_rows for t in written)
