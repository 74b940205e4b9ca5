"""Issue 6, item 3: a writer SIGKILLed anywhere never leaves a file that breaks a reader.

A forked child (imports already done, so a fork costs milliseconds, not the 0.5 s of a fresh
interpreter) writes chunks through `Store.write_chunk` in an endless loop on a slow filesystem
that sleeps between 256-byte pieces, so a kill after a seeded random delay lands at many
different points: before the first byte, mid-file, between the last byte and the rename,
between files. After each kill, pandas and `Store.read_steps` must read the store, and every
chunk file that exists must equal, row for row, a chunk the child was asked to write.
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

KILLS = 50
SEED = 20240617
TASKS = 4            # the child cycles over these chunks, replacing them
PIECE_DELAY_S = 0.0005
CHUNKS_PER_LIFE = 3  # the kill comes within about this many chunk writes (calibrated)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def slow_store(root: str) -> Store:
    return Store(root, filesystem=faults.slow(PIECE_DELAY_S, piece_bytes=256))


def write_forever(root: str, trial_id: str, attempt: int) -> None:
    """The victim: rewrite this trial's chunks, slowly, until killed. Never returns."""
    try:
        store = slow_store(root)
        task = 0
        while True:
            store.write_chunk(trial_id, task % TASKS, faults.synthetic_chunk(trial_id, task % TASKS,
                                                                             attempt))
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


def where_it_died(store: Store, trial_id: str, attempt: int, tmp_before: set[str]) -> str:
    """Classify the kill point from the temporary file it left (if any)."""
    directory = os.path.join(store.root, "steps", trial_id)
    new = [n for n in os.listdir(directory) if n.startswith(TMP_PREFIX) and n not in tmp_before] \
        if os.path.isdir(directory) else []
    if not new:
        return "between files"
    (name,) = new
    task = int(name.rsplit("task-", 1)[1].removesuffix(".parquet"))
    size = os.path.getsize(os.path.join(directory, name))
    full = len(parquet_bytes(store.prepare_chunk(trial_id, faults.synthetic_chunk(trial_id, task,
                                                                                  attempt))))
    if size == 0:
        return "before the first byte"
    return "mid-file" if size < full else "after the last byte, before the rename"


def check_readers_and_chunks(store: Store, newest: dict) -> None:
    """Both readers work; each chunk is one complete write, never older than one seen before."""
    steps = pd.read_parquet(os.path.join(store.root, "steps"))
    assert len(store.read_steps()) == len(steps)
    for trial_id in sorted(os.listdir(store.steps_dir)):
        for name in sorted(os.listdir(os.path.join(store.steps_dir, trial_id))):
            if name.startswith(TMP_PREFIX):
                continue
            task = int(name.removeprefix("task-").removesuffix(".parquet"))
            table = pq.read_table(os.path.join(store.steps_dir, trial_id, name))
            (attempt,) = set(table.column("attempt").to_pylist())
            expected = faults.synthetic_chunk(trial_id, task, attempt)
            assert table.equals(expected), f"{trial_id}/{name} differs from what was written"
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
        directory = os.path.join(store.steps_dir, trial_id)
        tmp_before = set(os.listdir(directory)) if os.path.isdir(directory) else set()
        kill_one_writer(store, trial_id, attempt=kill, delay=rng.uniform(0, max_delay))
        outcomes[where_it_died(store, trial_id, kill, tmp_before)] += 1
        check_readers_and_chunks(store, newest)
    print(dict(outcomes), f"kills within {max_delay * 1000:.0f} ms, {time.monotonic() - started:.1f} s")
    assert sum(outcomes.values()) == KILLS
    assert outcomes["mid-file"] >= 10, f"too few kills landed mid-file to prove much: {outcomes}"
    assert {trial for trial, _ in newest} == set(trials), "some writer never finished a chunk"

    # The leftovers are invisible to readers, and fsck names each one and moves them aside.
    report = fsck.check(store)
    leftovers = sum(n.startswith(TMP_PREFIX) for _, _, names in os.walk(store.steps_dir)
                    for n in names)
    assert {p.kind for p in report.problems} <= {"partial"}
    assert len(report.problems) == leftovers
    fsck.repair(store, report)
    assert fsck.check(store).problems == []
    check_readers_and_chunks(store, newest)
    assert time.monotonic() - started < 60
