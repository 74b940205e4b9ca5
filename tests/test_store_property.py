"""Issue 6, item 4: retries are idempotent — the reader always sees "latest attempt wins,
every step once", whatever history of writes, crashes and restores led there.

Hypothesis draws histories over two trials of three operations:

* write:   the trial writes its next task's chunk with its current attempt;
* crash:   the trial dies while writing that chunk (only a partial temporary file is left);
* restore: the trial restarts from an earlier checkpoint (task k <= its next task) with
           attempt+1 and different values, so it writes chunks k.. again.

The model is a plain log of the writes that completed; for each measurement key it keeps the
row of the highest attempt. The store (read by `Store.read_steps`, and by pandas after
`latest_attempt`) must equal it exactly.
"""
from __future__ import annotations

import os
import tempfile

import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import faults, fsck
from orchestrator.store import Store, latest_attempt
from trainables import schema

TRIALS = ("t-a", "t-b")
KEYS = list(schema.KEY_COLUMNS)

operation = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(TRIALS)),
    st.tuples(st.just("crash"), st.sampled_from(TRIALS), st.floats(0.0, 1.0)),
    st.tuples(st.just("restore"), st.sampled_from(TRIALS), st.integers(0, 3)),  # tasks back
)


class Trial:
    """What a trial knows about itself: its attempt, the next task, and its value stream."""

    def __init__(self, trial_id: str):
        self.trial_id, self.attempt, self.next_task, self.values = trial_id, 0, 0, 0

    def chunk(self) -> pa.Table:
        return faults.synthetic_chunk(self.trial_id, self.next_task, self.attempt,
                                      steps_per_task=4, eval_every=2, values=self.values)

    def restore(self, tasks_back: int) -> None:
        """Restart from the checkpoint ``tasks_back`` tasks before the next one."""
        self.attempt += 1
        self.values += 1
        self.next_task = max(0, self.next_task - tasks_back)


def model(completed: list[pa.Table]) -> pd.DataFrame:
    """For each key, the row of the highest attempt among the writes that completed."""
    if not completed:
        return schema.STEPS_SCHEMA.empty_table().to_pandas()
    rows = pa.concat_tables(completed).to_pandas()
    best = rows.groupby(KEYS, dropna=False).attempt.transform("max")
    return rows[rows.attempt == best]


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEYS, na_position="first").reset_index(drop=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=14))
def test_reader_sees_latest_attempt_of_every_step_once(history):
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        store.initialise()
        trials = {trial_id: Trial(trial_id) for trial_id in TRIALS}
        completed: list[pa.Table] = []
        for op, trial_id, *arg in history:
            trial = trials[trial_id]
            if op == "write":
                store.write_chunk(trial_id, trial.next_task, trial.chunk())
                completed.append(trial.chunk())
                trial.next_task += 1
            elif op == "crash":
                faults.leave_partial_write(store, trial_id, trial.next_task, trial.chunk(), arg[0])
            else:
                trial.restore(arg[0])

        expected = canonical(model(completed))
        got = canonical(store.read_steps())
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        if completed:  # the dedupe alone, on the whole write log with every attempt in it
            everything = latest_attempt(pa.concat_tables(completed).to_pandas())
            pd.testing.assert_frame_equal(canonical(everything), expected, check_dtype=False)
        if completed:  # a reader with no psplab code, plus the documented dedupe, agrees
            plain = latest_attempt(pd.read_parquet(os.path.join(root, "steps")))
            pd.testing.assert_frame_equal(canonical(plain), expected, check_dtype=False)
        # Nothing but the crashes' leftovers is wrong with the store: no duplicate, no corruption.
        for trial_id in TRIALS:
            store.write_trial({"trial_id": trial_id, "attempt": trials[trial_id].attempt})
        assert {p.kind for p in fsck.check(store).problems} <= {"partial"}
