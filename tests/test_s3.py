"""The results store on a real S3 API (moto's server on 127.0.0.1, see conftest's ``s3``): the
layout, publication, psplab's reader, `psp fsck`/`compact`/`results`, and readers with no
psplab code — pandas through pyarrow, DuckDB through its httpfs extension, polars through its
own object-store client — all agreeing on every measurement once. No Ray: the sweeps on S3 are
in test_sweep_s3.py."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis import load
from orchestrator import cli, faults, fsck
from orchestrator.store import Store, StoreError
from trainables import schema
from conftest import plain_read

KEYS = list(schema.KEY_COLUMNS)


@pytest.fixture
def store(s3) -> Store:
    """Trial a published (its task 1 run again by attempt 1), trial b with tasks in flight."""
    store = Store(s3.uri("sweeps/x/results"))
    store.initialise()
    for task in range(3):
        store.write_chunk("a", task, faults.synthetic_chunk("a", task, 0))
    store.publish("a")
    store.write_chunk("a", 1, faults.synthetic_chunk("a", 1, 1, values=3))
    store.publish("a")
    store.write_trial({"trial_id": "a", "attempt": 1, "status": "completed"})
    for task in range(2):
        store.write_chunk("b", task, faults.synthetic_chunk("b", task, 0))
    store.write_trial({"trial_id": "b", "attempt": 0, "status": "running"})
    return store


def test_layout_on_s3_is_one_object_per_trial_and_nothing_temporary(s3, store):
    assert s3.keys("sweeps/x/results") == [
        "sweeps/x/results/_inflight/b/task-000000.parquet",
        "sweeps/x/results/_inflight/b/task-000001.parquet",
        "sweeps/x/results/_psplab.json",
        "sweeps/x/results/steps/a/trial.parquet",
        "sweeps/x/results/trials/a.parquet",
        "sweeps/x/results/trials/b.parquet",
    ]


def test_plain_readers_on_s3_see_every_measurement_once(s3, store):
    """pandas, DuckDB and polars straight from S3 at the local endpoint: trial a's rows once
    each, task 1 from attempt 1, the same rows as `analysis.load`."""
    expected = pd.concat([faults.synthetic_chunk("a", 0, 0).to_pandas(),
                          faults.synthetic_chunk("a", 1, 1, values=3).to_pandas(),
                          faults.synthetic_chunk("a", 2, 0).to_pandas()])
    loaded = load(store.uri)
    plain = plain_read(store.uri, "steps")
    for frame in (loaded, plain):
        pd.testing.assert_frame_equal(frame.sort_values(KEYS, ignore_index=True)[KEYS + ["attempt", "accuracy"]],
                                      expected.sort_values(KEYS, ignore_index=True)[KEYS + ["attempt", "accuracy"]],
                                      check_dtype=False)
    glob = f"s3://{s3.bucket}/sweeps/x/results/steps/*/*.parquet"
    duck = s3.duckdb().execute(
        f"SELECT count(*), count(DISTINCT (trial_id, step, split, eval_task)) FROM read_parquet('{glob}')"
    ).fetchall()[0]
    assert duck == (len(loaded), len(loaded))

    import polars as pl

    frame = pl.read_parquet(glob, storage_options=s3.polars_options)
    assert frame.height == len(loaded) == frame.unique(subset=KEYS).height
    live = load(store.uri, live=True)
    assert set(live.trial_id) == {"a", "b"} and len(live) == len(loaded) + sum(
        faults.synthetic_chunk("b", task, 0).num_rows for task in range(2))


def test_fsck_compact_and_results_on_s3(s3, store, capsys):
    code = cli.main(["fsck", store.uri])
    out = capsys.readouterr().out
    assert code == 0 and "clean:" in out and "trial 'b': 2 task chunk(s) in flight" in out, out
    assert cli.main(["compact", store.uri, "--trial", "b"]) == 0
    assert "compacted 1 trial(s): 2 file(s) -> 1" in capsys.readouterr().out
    assert "sweeps/x/results/steps/b/trial.parquet" in s3.keys()
    assert not any("_inflight" in key for key in s3.keys())
    assert cli.main(["fsck", store.uri]) == 0
    assert "warning" not in capsys.readouterr().out
    assert cli.main(["results", store.uri, "--live"]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s)" in out


def test_overlap_on_s3_is_reported_by_fsck_and_folded_by_compact(s3, store, capsys):
    """A store of the older layout beside the published file (a fold that was killed): plain
    readers see task 0 twice; fsck says so and names the fix, which leaves each row once."""
    faults.write_legacy_chunk(store, "a", 0, faults.synthetic_chunk("a", 0, 1, values=9))
    assert len(plain_read(store.uri, "steps")) > len(load(store.uri))
    report = fsck.check(store)
    assert [p.kind for p in report.problems] == ["overlap"], report.problems
    assert f"psp compact {store.uri} --trial a" in report.problems[0].detail
    assert cli.main(["compact", store.uri, "--trial", "a"]) == 0
    capsys.readouterr()
    assert not fsck.check(store).problems
    plain, loaded = plain_read(store.uri, "steps"), load(store.uri)
    assert len(plain) == len(loaded) and not plain.duplicated(KEYS).any()
    assert set(loaded[loaded.task == 0].attempt) == {1}


def test_a_write_to_a_stopped_server_is_retried_then_names_the_object(s3, monkeypatch):
    import orchestrator.store as store_module

    delays: list[float] = []
    monkeypatch.setattr(store_module, "_sleep", delays.append)
    store = Store(s3.uri("down", connect_timeout="1", request_timeout="1", retries="1"))
    store.initialise()
    s3.stop()
    with pytest.raises(StoreError) as raised:
        store.write_chunk("a", 0, faults.synthetic_chunk("a", 0, 0))
    assert "down/_inflight/a/task-000000.parquet: write failed after 4 tries" in str(raised.value)
    assert delays == [0.2, 0.4, 0.8]
    s3.start()
    store.write_chunk("a", 0, faults.synthetic_chunk("a", 0, 0))
    assert store.publish("a").endswith("down/steps/a/trial.parquet")
