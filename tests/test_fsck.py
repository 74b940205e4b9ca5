"""Issue 6, item 6: `psp fsck STORE [--repair]` names every bad file and moves it aside.

Each case damages a healthy store in one way; fsck must name the problem and the file (one
line), exit 1, and `--repair` must MOVE the file under `_quarantine/<timestamp>/` with its bytes
intact, after which pandas reads the store and fsck exits 0.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import cli, faults, fsck
from orchestrator.store import MANIFEST, QUARANTINE, Store
from trainables import schema


def healthy_store(root) -> Store:
    store = Store(str(root))
    store.initialise()
    for trial_id in ("a", "b"):
        store.write_trial({"trial_id": trial_id, "attempt": 0, "status": "completed"})
        for task in range(3):
            store.write_chunk(trial_id, task, faults.synthetic_chunk(trial_id, task, 0))
        store.publish(trial_id)
    return store


def chunk(store: Store, trial_id: str = "a", task: int = 1) -> str:
    """A visible per-task file beside the trial's published one: where damage is planted."""
    return store.chunk_path(trial_id, task)


def run_fsck(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main(["fsck", *map(str, args)])
    return code, capsys.readouterr().out.splitlines()


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---- one way to damage a store per kind: each returns the bad file's path -----------------
def truncated(store):  # a copy cut short: no footer
    path = chunk(store, "a", 5)
    with open(path, "wb") as out:
        out.write(open(store.published_path("a"), "rb").read()[:400])
    return path


def not_parquet(store):
    path = chunk(store, "b", 4)
    open(path, "w").write("this is a spreadsheet, honest")
    return path


def zero_byte(store):
    path = chunk(store, "a", 6)
    open(path, "wb").close()
    return path


def partial(store):
    return faults.leave_partial_write(store, "a", 3, faults.synthetic_chunk("a", 3, 0), 0.5)


def missing_column(store):
    path = chunk(store, "b", 7)
    pq.write_table(faults.synthetic_chunk("b", 7, 0).drop_columns(["loss"]), path)
    return path


def retyped_column(store):
    path = chunk(store, "b", 8)
    table = faults.synthetic_chunk("b", 8, 0)
    index = table.schema.get_field_index("accuracy")
    pq.write_table(table.set_column(index, "accuracy", table["accuracy"].cast(pa.float64())), path)
    return path


def newer_version(store):
    path = chunk(store, "b", 9)
    table = faults.synthetic_chunk("b", 9, 0)
    pq.write_table(table.replace_schema_metadata({schema.METADATA_KEY: b"99"}), path)
    return path


def stray(store):
    path = os.path.join(store.steps_dir, "notes.txt")
    open(path, "w").write("remember to check lr")
    return path


def misplaced(store):
    path = chunk(store, "a", 10)
    pq.write_table(faults.synthetic_chunk("b", 10, 0), path)
    return path


def orphan(store):  # rows in flight of a trial without a row
    store.write_chunk("ghost", 0, faults.synthetic_chunk("ghost", 0, 0))
    return store.inflight_path("ghost", 0)


def corrupt_in_flight(store):  # breaks the trial's next publication and live reads
    store.write_chunk("a", 3, faults.synthetic_chunk("a", 3, 1))
    path = store.inflight_path("a", 3)
    with open(path, "r+b") as handle:
        handle.truncate(300)
    return path


def corrupt_trial_row(store):
    path = store.trial_path("a")
    open(path, "wb").write(b"PAR1 not really")
    return path


DAMAGE = {
    "corrupt": [truncated, not_parquet, corrupt_trial_row, corrupt_in_flight],
    "zero-byte": [zero_byte],
    "partial": [partial],
    "schema-drift": [missing_column, retyped_column, newer_version],
    "stray": [stray],
    "misplaced": [misplaced],
    "orphan": [orphan],
}
CASES = [(kind, damage) for kind, damages in DAMAGE.items() for damage in damages]


@pytest.mark.parametrize("kind, damage", CASES, ids=[d.__name__ for _, d in CASES])
def test_fsck_names_the_problem_and_repair_moves_it_aside(tmp_path, capsys, kind, damage):
    store = healthy_store(tmp_path / "store")
    bad = damage(store)
    before = sha(bad)

    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_PROBLEMS
    named = [line for line in lines if line.startswith(f"{kind}: {bad}:")]
    assert len(named) == 1, lines
    if kind == "corrupt" and "trials" in bad:
        # with its row unreadable, trial a's file becomes an orphan too: also named
        assert sum(line.startswith("orphan:") for line in lines) == 1

    code, lines = run_fsck(capsys, store.root, "--repair")
    assert code == fsck.EXIT_PROBLEMS
    moved = [line for line in lines if line.startswith(f"moved {bad} -> ")]
    assert len(moved) == 1, lines
    target = moved[0].split(" -> ")[1]
    rel = os.path.relpath(bad, store.root)
    assert target.startswith(os.path.join(store.root, QUARANTINE, "")) and target.endswith(rel)
    assert sha(target) == before and not os.path.exists(bad)  # moved, byte for byte

    pd.read_parquet(os.path.join(store.root, "steps"))
    store.read_steps()
    assert run_fsck(capsys, store.root)[0] == fsck.EXIT_CLEAN


@pytest.mark.parametrize("damage", [truncated, zero_byte, stray, not_parquet])
def test_these_problems_really_break_pandas(tmp_path, damage):
    """So the checks above matter: each of these alone makes the directory unreadable."""
    store = healthy_store(tmp_path)
    damage(store)
    with pytest.raises(Exception):
        pd.read_parquet(os.path.join(store.root, "steps"))


def test_healthy_store_is_clean(tmp_path, capsys):
    store = healthy_store(tmp_path)
    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_CLEAN and lines == [f"clean: 2 chunks, 2 trials checked in {store.root}"]


def test_a_file_older_than_a_column_is_not_drift(tmp_path, capsys):
    # input_norm joined in schema version 2: a version-1 file lacks it and reads as null there;
    # a version-2 file without it has lost a column.
    store = healthy_store(tmp_path)
    published = store.published_path("a")
    old = pq.read_table(published).drop_columns(["input_norm"])
    pq.write_table(old.replace_schema_metadata({schema.METADATA_KEY: b"1"}), published)
    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_CLEAN, lines
    # psplab's reader gives the schema explicitly: the old rows read input_norm as null
    rows = store.read_steps(trial_id="a")
    assert len(rows) == old.num_rows and rows["input_norm"].isna().all()

    pq.write_table(old.replace_schema_metadata({schema.METADATA_KEY: b"2"}), published)
    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_PROBLEMS and "input_norm" in " ".join(lines)


def test_a_republished_trial_is_clean(tmp_path, capsys):
    store = healthy_store(tmp_path)
    store.write_chunk("a", 1, faults.synthetic_chunk("a", 1, 1))  # a restore re-ran task 1
    store.publish("a")
    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_CLEAN, lines


def test_a_measurement_visible_twice_with_different_attempts_is_an_overlap(tmp_path, capsys):
    """What plain readers see twice (here a file of the older layout kept attempt 0 of task 1
    beside the published attempt 1) is a problem fsck names with its fix; `psp compact` fixes
    it, keeping the latest attempt."""
    store = healthy_store(tmp_path)
    store.write_chunk("a", 1, faults.synthetic_chunk("a", 1, 1))
    store.publish("a")
    old = chunk(store, "a", 11)
    pq.write_table(faults.synthetic_chunk("a", 1, 0), old)
    code, lines = run_fsck(capsys, store.root, "--repair")
    assert code == fsck.EXIT_PROBLEMS
    overlap = [line for line in lines if line.startswith("overlap: ")]
    assert len(overlap) == 1 and "steps/a/task-000011.parquet, steps/a/trial.parquet" in overlap[0]
    assert f"psp compact {store.root} --trial a" in overlap[0]
    assert any(line.startswith("left in place:") for line in lines) and os.path.exists(old)
    assert cli.main(["compact", store.root, "--trial", "a"]) == 0
    assert run_fsck(capsys, store.root)[0] == fsck.EXIT_CLEAN
    df = pd.read_parquet(os.path.join(store.root, "steps"))
    assert not df.duplicated(list(schema.KEY_COLUMNS)).any()
    assert set(df[(df.trial_id == "a") & (df.task == 1)].attempt) == {1}


def test_a_redundant_duplicate_is_moved_and_its_twin_kept(tmp_path, capsys):
    store = healthy_store(tmp_path)
    copy = chunk(store, "a", 12)
    shutil.copy(store.published_path("a"), copy)
    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_PROBLEMS
    dupes = [line for line in lines if line.startswith("duplicate:")]
    assert len(dupes) == 2 and any(line.startswith(f"duplicate: {copy}:") for line in dupes)

    code, lines = run_fsck(capsys, store.root, "--repair")
    assert any(line.startswith(f"moved {copy} -> ") for line in lines), lines
    assert os.path.exists(store.published_path("a"))
    assert run_fsck(capsys, store.root)[0] == fsck.EXIT_CLEAN


def test_overlapping_duplicates_are_left_for_a_person(tmp_path, capsys):
    store = healthy_store(tmp_path)
    # half of task 1 again, plus rows of its own: neither file can go without losing rows
    task1 = faults.synthetic_chunk("a", 1, 0)
    both = pa.concat_tables([task1.slice(0, 5), faults.synthetic_chunk("a", 13, 0)])
    pq.write_table(both, chunk(store, "a", 13))
    code, lines = run_fsck(capsys, store.root, "--repair")
    assert code == fsck.EXIT_PROBLEMS
    assert any(line.startswith("left in place:") for line in lines), lines
    assert os.path.exists(chunk(store, "a", 13)) and os.path.exists(store.published_path("a"))
    # The reader still returns each measurement once.
    df = store.read_steps()
    assert not df.duplicated(list(schema.KEY_COLUMNS)).any()


def test_trial_without_chunks_is_only_a_warning(tmp_path, capsys):
    store = healthy_store(tmp_path)
    store.write_trial({"trial_id": "early", "attempt": 0, "status": "running"})
    code, lines = run_fsck(capsys, store.root)
    assert code == fsck.EXIT_CLEAN
    assert any(line.startswith("warning: trials/early.parquet") for line in lines)


def test_corrupt_manifest_is_moved_and_rewritten(tmp_path, capsys):
    store = healthy_store(tmp_path)
    manifest = os.path.join(store.root, MANIFEST)
    open(manifest, "w").write("{not json")
    code, lines = run_fsck(capsys, store.root, "--repair")
    assert code == fsck.EXIT_PROBLEMS and lines[0].startswith(f"corrupt: {manifest}:")
    assert json.load(open(manifest)) == {"schema_version": schema.SCHEMA_VERSION}
    assert run_fsck(capsys, store.root)[0] == fsck.EXIT_CLEAN


def test_unusable_stores_exit_2_with_one_line(tmp_path, capsys):
    store = healthy_store(tmp_path / "store")
    json.dump({"schema_version": 99}, open(os.path.join(store.root, MANIFEST), "w"))
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, named in [(store.root, MANIFEST), (tmp_path / "missing", "missing"),
                          (empty, "not a psplab store")]:
        assert cli.main(["fsck", str(target)]) == fsck.EXIT_UNUSABLE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err


def test_repair_never_deletes(tmp_path, capsys):
    store = healthy_store(tmp_path)
    for damage in (truncated, zero_byte, partial, stray, orphan, newer_version):
        damage(store)
    files_before = {}
    for directory, _, names in os.walk(store.root):
        for name in names:
            files_before[os.path.join(directory, name)] = sha(os.path.join(directory, name))
    run_fsck(capsys, store.root, "--repair")
    files_after = {sha(os.path.join(d, n)) for d, _, names in os.walk(store.root) for n in names}
    assert set(files_before.values()) <= files_after
    assert run_fsck(capsys, store.root)[0] == fsck.EXIT_CLEAN


def test_module_import_is_light_and_entry_point_works(tmp_path):
    code = ("import sys, orchestrator.fsck; "
            "print(sorted(m for m in ('torch', 'ray', 'pandas', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    store = healthy_store(tmp_path)
    zero_byte(store)
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "fsck", store.root],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "zero-byte: " in result.stdout, result
