"""Exactly once for every reader, in every state (issues 6 and 13): whatever history of writes,
crashes, restores, publications and publications killed part-way led there, a plain reader of
``steps/`` (pandas with no psplab code; DuckDB and polars in the example below) sees each
measurement once and the same rows as `analysis.load`, and a live read sees the latest attempt.

Hypothesis draws histories over two trials of five operations:

* write:   the trial writes its next task's chunk with its current attempt (in flight);
* crash:   the trial dies while writing that chunk (only a partial temporary file is left);
* restore: the trial restarts from an earlier checkpoint (task k <= its next task) with
           attempt+1 and different values, so it writes chunks k.. again;
* publish: the trial's attempt ends and publishes its rows;
* killed:  a publication killed at its n-th change to the store (before its file is whole,
           between the file's rename and the deletion of the chunks, or among the deletions).

The model is a few lines of pandas: per trial, the chunks in flight (task → the last chunk
written) and the published rows; publishing replaces each in-flight task's published rows
with its chunk. A publication killed after its rename has published; its leftover chunks
hold exactly what it published, so the model keeps them in flight.
"""
from __future__ import annotations

import os
import tempfile

import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis import load
from orchestrator import faults, fsck
from orchestrator.store import Store
from trainables import schema

TRIALS = ("t-a", "t-b")
KEYS = list(schema.KEY_COLUMNS)
COLUMNS = [*KEYS, "task", "attempt", "loss", "accuracy"]

operation = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(TRIALS)),
    st.tuples(st.just("crash"), st.sampled_from(TRIALS), st.floats(0.0, 1.0)),
    st.tuples(st.just("restore"), st.sampled_from(TRIALS), st.integers(0, 3)),  # tasks back
    st.tuples(st.just("publish"), st.sampled_from(TRIALS)),
    st.tuples(st.just("killed"), st.sampled_from(TRIALS), st.integers(1, 6)),  # at n-th change
)


class Trial:
    """What a trial knows about itself (attempt, next task, value stream) and the model of
    what the store holds for it."""

    def __init__(self, trial_id: str):
        self.trial_id, self.attempt, self.next_task, self.values = trial_id, 0, 0, 0
        self.inflight: dict[int, pd.DataFrame] = {}
        self.published: pd.DataFrame | None = None

    def chunk(self) -> pa.Table:
        return faults.synthetic_chunk(self.trial_id, self.next_task, self.attempt,
                                      steps_per_task=4, eval_every=2, values=self.values)

    def restore(self, tasks_back: int) -> None:
        """Restart from the checkpoint ``tasks_back`` tasks before the next one."""
        self.attempt += 1
        self.values += 1
        self.next_task = max(0, self.next_task - tasks_back)

    def folded(self) -> pd.DataFrame | None:
        """The published rows with each in-flight task's rows replaced by its chunk."""
        parts = [] if self.published is None else [
            self.published[~self.published.task.isin(list(self.inflight))]]
        parts += list(self.inflight.values())
        return pd.concat(parts) if parts else None


def canonical(frames) -> pd.DataFrame:
    frames = [f for f in frames if f is not None]
    df = pd.concat(frames) if frames else schema.STEPS_SCHEMA.empty_table().to_pandas()
    return df[COLUMNS].sort_values(KEYS, na_position="first").reset_index(drop=True)


def published_by_plain_pandas(root: str) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(root, "steps"), schema=schema.STEPS_SCHEMA)


def replay(root: str, history) -> dict[str, Trial]:
    """Apply ``history`` to a store at ``root`` and to the model; returns the model."""
    store = Store(root)
    store.initialise()
    trials = {trial_id: Trial(trial_id) for trial_id in TRIALS}
    for op, trial_id, *arg in history:
        trial = trials[trial_id]
        if op == "write":
            store.write_chunk(trial_id, trial.next_task, trial.chunk())
            trial.inflight[trial.next_task] = trial.chunk().to_pandas()
            trial.next_task += 1
        elif op == "crash":
            faults.leave_partial_write(store, trial_id, trial.next_task, trial.chunk(), arg[0])
        elif op == "restore":
            trial.restore(arg[0])
        elif op == "publish":
            store.publish(trial_id)
            trial.published, trial.inflight = trial.folded(), {}
        else:
            dying = Store(root, filesystem=faults.dying(arg[0]))
            try:
                dying.publish(trial_id)
                trial.published, trial.inflight = trial.folded(), {}
            except faults.Killed:
                if f"move {store.published_path(trial_id)}" in dying.fs.handler.done:
                    trial.published = trial.folded()
    return trials


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=16))
def test_every_reader_sees_each_measurement_once_whatever_the_history(history):
    with tempfile.TemporaryDirectory() as root:
        trials = replay(root, history)

        expected = canonical(t.published for t in trials.values())
        plain = published_by_plain_pandas(root)
        assert not plain.duplicated(KEYS).any(), "a plain reader sees a measurement twice"
        pd.testing.assert_frame_equal(canonical([plain]), expected, check_dtype=False)
        pd.testing.assert_frame_equal(canonical([load(root)]), expected, check_dtype=False)
        live = canonical(t.folded() for t in trials.values())
        pd.testing.assert_frame_equal(canonical([load(root, live=True)]), live, check_dtype=False)

        # Nothing but the crashes' leftovers is wrong with the store: no duplicate, no overlap.
        store = Store(root)
        for trial_id in TRIALS:
            store.write_trial({"trial_id": trial_id, "attempt": trials[trial_id].attempt})
        assert {p.kind for p in fsck.check(store).problems} <= {"partial"}


def test_duckdb_and_polars_agree_after_a_rerun_and_a_killed_publication(tmp_path):
    """One history with every kind of step, read by DuckDB and polars straight from the
    directory (globs that, unlike pandas, also match hidden names): the same rows as
    `analysis.load`, each once. Task 1 is re-run by attempt 1 (values 1), then a publication
    of task 2 is killed between its file's rename and the deletion of its chunks."""
    import duckdb
    import polars as pl

    root = str(tmp_path)
    history = [("write", "t-a"), ("write", "t-a"), ("crash", "t-a", 0.5), ("publish", "t-a"),
               ("restore", "t-a", 1), ("write", "t-a"), ("write", "t-a"), ("killed", "t-a", 3),
               ("write", "t-b"), ("killed", "t-b", 1)]
    trials = replay(root, history)
    assert os.listdir(os.path.join(root, "_inflight", "t-a")), "the kill left chunks behind"
    loaded = load(root)
    # By hand: tasks 0 (attempt 0), 1 and 2 (attempt 1) of t-a; nothing of t-b is published.
    assert sorted(loaded.groupby("task").attempt.unique().map(list).items()) == [
        (0, [0]), (1, [1]), (2, [1])]
    assert set(loaded.trial_id) == {"t-a"}
    glob = os.path.join(root, "steps", "*", "*.parquet")
    count, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (trial_id, step, split, eval_task)) "
        f"FROM read_parquet('{glob}')").fetchall()[0]
    assert count == distinct == len(loaded)
    frame = pl.read_parquet(glob)
    assert frame.height == frame.unique(subset=KEYS).height == len(loaded)
    pd.testing.assert_frame_equal(canonical([frame.to_pandas()]), canonical([loaded]),
                                  check_dtype=False)
    assert set(trials["t-a"].inflight) == {1, 2}
