"""Issue 6, item 3: a writer SIGKILLed anywhere never leaves a file that breaks a reader.

A forked child (imports already done, so a fork costs milliseconds, not the 0.5 s of a fresh
interpreter) writes chunks through `Store.write_chunk` and publishes them (`Store.publish`) in
an endless loop on a slow filesystem that sleeps between 256-byte pieces, so a kill after a
seeded random delay lands at many different points: before the first byte, mid-file, between
the last byte and the rename, between files, between a publication's write and its cleanup.
After each kill, pandas and `Store.read_steps` must read the store and agree, each measurement
once; every in-flight chunk must equal, row for row, a chunk the child was asked to write, and
every task in the published file one such chunk.
"""
from __future__ import annotations

import collections
import os
import random
import signal
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import faults, fsck
from orchestrator.store import TMP_PREFIX, Store
from trainables import schema

KILLS = 50
SEED = 20240617
TASKS = 4            # the child cycles over these chunks, replacing them
PIECE_DELAY_S = 0.0005
CHUNKS_PER_LIFE = 3  # the kill comes within about this many chunk writes (calibrated)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def slow_store(root: str) -> Store:
    return Store(root, filesystem=faults.slow(PIECE_DELAY_S, piece_bytes=256))


def write_forever(root: str, trial_id: str, attempt: int) -> None:
    """The victim: rewrite this trial's chunks and publish them, slowly, until killed. Never
    returns."""
    try:
        store = slow_store(root)
        task = 0
        while True:
            store.write_chunk(trial_id, task % TASKS, faults.synthetic_chunk(trial_id, task % TASKS,
                                                                             attempt))
            if task % 2 == 0:
                store.publish(trial_id)
            task += 1
    finally:
        os._exit(1)  # never run the parent's pytest machinery in the child


def seconds_per_chunk(root: str) -> float:
    """How long one slow write takes here and now (the machine may be busy with other work)."""
    store = slow_store(root)
    started = time.monotonic()
    for task in range(2):
        store.write_chunk("calibration", task, faults.synthetic_chunk("calibration", task, 0))
    return (time.monotonic() - started) / 2


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def kill_one_writer(store: Store, trial_id: str, attempt: int, delay: float) -> None:
    pid = os.fork()
    if pid == 0:
        write_forever(store.root, trial_id, attempt)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        "the writer died on its own: see its error by calling write_forever directly"


def temporary_files(store: Store, trial_id: str) -> set[str]:
    directories = [os.path.dirname(store.inflight_path(trial_id, 0)),
                   os.path.dirname(store.published_path(trial_id))]
    return {os.path.join(d, n) for d in directories if os.path.isdir(d)
            for n in os.listdir(d) if n.startswith(TMP_PREFIX)}


def where_it_died(store: Store, trial_id: str, attempt: int, tmp_before: set[str]) -> str:
    """Classify the kill point from the temporary file it left (if any)."""
    new = temporary_files(store, trial_id) - tmp_before
    if not new:
        return "between files"
    (path,) = new
    if os.path.basename(path).startswith(f"{TMP_PREFIX}trial.parquet"):
        return "publishing"
    task = int(os.path.basename(path).removeprefix(f"{TMP_PREFIX}task-").split(".")[0])
    size = os.path.getsize(path)
    full = len(parquet_bytes(store.prepare_chunk(trial_id, faults.synthetic_chunk(trial_id, task,
                                                                                  attempt))))
    if size == 0:
        return "before the first byte"
    return "mid-file" if size < full else "after the last byte, before the rename"


def check_readers_and_chunks(store: Store, newest: dict) -> None:
    """Both readers work and agree, each measurement once; each chunk in flight is one complete
    write, never older than one seen before; each published task one complete chunk."""
    steps = pd.read_parquet(os.path.join(store.root, "steps"), schema=schema.STEPS_SCHEMA)
    assert len(store.read_steps()) == len(steps)
    assert not steps.duplicated(["trial_id", "step", "split", "eval_task"]).any()
    for trial_id, tasks in steps.groupby("trial_id"):
        for task, rows in tasks.groupby("task"):
            (attempt,) = set(rows.attempt)
            expected = faults.synthetic_chunk(trial_id, task, attempt).to_pandas()
            pd.testing.assert_frame_equal(rows.reset_index(drop=True), expected, check_dtype=False,
                                          obj=f"published task {task} of {trial_id}")
    for trial_id in sorted(store.inflight_trials()):
        for task, path in store.inflight_chunks(trial_id).items():
            table = pq.read_table(path)
            (attempt,) = set(table.column("attempt").to_pylist())
            expected = faults.synthetic_chunk(trial_id, task, attempt)
            assert table.equals(expected), f"{path} differs from what was written"
            assert attempt >= newest.get((trial_id, task), -1), "an older chunk came back"
            newest[(trial_id, task)] = attempt


def test_writers_killed_at_random_points_leave_only_whole_chunks(tmp_path):
    started = time.monotonic()
    store = Store(str(tmp_path / "store"))
    store.initialise()
    trials = [f"trial-{i}" for i in range(3)]
    for trial_id in trials:
        store.write_trial({"trial_id": trial_id, "attempt": 0, "status": "running"})
    max_delay = CHUNKS_PER_LIFE * seconds_per_chunk(str(tmp_path / "calibration"))
    rng = random.Random(SEED)
    outcomes: collections.Counter[str] = collections.Counter()
    newest: dict = {}
    for kill in range(KILLS):
        trial_id = trials[kill % len(trials)]
        tmp_before = temporary_files(store, trial_id)
        kill_one_writer(store, trial_id, attempt=kill, delay=rng.uniform(0, max_delay))
        outcomes[where_it_died(store, trial_id, kill, tmp_before)] += 1
        check_readers_and_chunks(store, newest)
    print(dict(outcomes), f"kills within {max_delay * 1000:.0f} ms, {time.monotonic() - started:.1f} s")
    assert sum(outcomes.values()) == KILLS
    assert outcomes["publishing"] >= 3, f"too few kills landed in a publication: {outcomes}"
    assert outcomes["mid-file"] + outcomes["publishing"] >= 12, \
        f"too few kills landed in a file's write to prove much: {outcomes}"
    published = set(pd.read_parquet(os.path.join(store.root, "steps"),
                                    schema=schema.STEPS_SCHEMA).trial_id)
    assert {trial for trial, _ in newest} | published == set(trials), \
        "some writer never finished a chunk"

    # The leftovers are invisible to readers, and fsck names each one and moves them aside.
    report = fsck.check(store)
    leftovers = sum(n.startswith(TMP_PREFIX) for _, _, names in os.walk(store.root)
                    for n in names)
    assert {p.kind for p in report.problems} <= {"partial"}
    assert len(report.problems) == leftovers
    fsck.repair(store, report)
    assert fsck.check(store).problems == []
    check_readers_and_chunks(store, newest)
    assert time.monotonic() - started < 60
