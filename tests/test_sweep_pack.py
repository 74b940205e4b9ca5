"""Packed sweeps (`pack:` in a sweep spec): grid points trained as one batched model per Tune
trial, each still a trial of its own in the store — the same rows, bit for bit on CPU, as the
unpacked sweep, with its own trials row, attempts and divergence."""
import io
import re

import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.launch import PACK_KEY, expand_packs, grid_packs, member_trial_id
from orchestrator.spec import parse_spec

SPEC = """
name: {name}
dataset: mnist5k
steps_per_task: 50
eval_every: 25
grid:
  psp: [none, binary]
  seed: [0, 1]
fixed: {{units: 32, tasks: 2}}
resources: {{cpu: 1, gpu: 0}}
pack: {pack}
"""
KEYS = ["psp", "seed", "step", "split", "eval_task"]


def test_grid_points_are_grouped_by_shape():
    grid = {"psp": ["none", "binary", "complex"], "seed": [0, 1]}
    fixed = {"units": 32, "tasks": 2, "steps_per_task": 50, "eval_every": 25}
    assert grid_packs(grid, fixed, "off", gpu=0) is None and grid_packs(grid, fixed, 1, gpu=0) is None
    packs = grid_packs(grid, fixed, 3, gpu=0)
    # {none, binary} share a shape (4 points: 3 + 1); complex has its own (2 points)
    assert [[(m["psp"], m["seed"]) for m in pack] for pack in packs] == [
        [("none", 0), ("none", 1), ("binary", 0)], [("binary", 1)], [("complex", 0), ("complex", 1)]]
    # auto: the trials' device decides (GPU: 32 per pack), and width 2048 on CPU does not pack
    assert len(grid_packs(grid, fixed, "auto", gpu=0.25)) == 2
    assert len(grid_packs(grid, {**fixed, "units": 2048}, "auto", gpu=0)) == 6
    # configs packing cannot train (a penalty) stay one per Tune trial
    ewc = {**fixed, "penalty": "ewc", "penalty_strength": 1.0}
    assert grid_packs(grid, ewc, 4, gpu=0) == [[{"psp": p, "seed": s}] for p in grid["psp"] for s in (0, 1)]


def test_status_sees_the_members_of_a_pack():
    tune_trials = {
        "ab_00000": {"status": "RUNNING", "config": {"units": 32, PACK_KEY: [{"seed": 0}, {"seed": 1}]}},
        "ab_00001": {"status": "PENDING", "config": {"units": 32, "seed": 2}},
    }
    expanded = expand_packs(tune_trials)
    assert list(expanded) == ["ab_00000_p0", "ab_00000_p1", "ab_00001"]
    assert expanded["ab_00000_p1"] == {"status": "RUNNING", "config": {"units": 32, "seed": 1}}
    assert member_trial_id("ab_00000", 1) == "ab_00000_p1"


def test_the_spec_setting_reaches_the_sweep_record():
    assert parse_spec(SPEC.format(name="x", pack="off")).pack == "off"
    assert parse_spec(SPEC.format(name="x", pack="auto")).pack == "auto"
    assert parse_spec(SPEC.format(name="x", pack=4)).pack == 4
    assert parse_spec("grid: {seed: [0]}").pack == "off"  # the default


# ---- a pack that diverges, crashes and resumes, without Ray --------------------------------
class Crash(Exception):
    pass


def train_pack_until(config, store, crash_at: int | None, saved: list, checkpoint=None):
    """train_pack with a report that keeps each checkpoint, saved and loaded as Tune would,
    and dies in the report of task ``crash_at`` before that task's checkpoint is kept."""
    from orchestrator.trainable import train_pack

    def report(metrics, state):
        if state is None:
            return
        if metrics["tasks_done"] - 1 == crash_at:
            raise Crash(f"killed at task {crash_at}")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))

    return train_pack(config, sweep="s", store=store, pack_id="pk_00000", cpus=1,
                      checkpoint=checkpoint, report=report)


def measurements(rows: list[dict]) -> dict:
    """(step, split, eval_task) → (loss, accuracy) as float32, as the store holds them."""
    return {(int(r["step"]), r["split"], None if pd.isna(r["eval_task"]) else int(r["eval_task"])):
            tuple(np.float32(r[k]).tobytes() for k in ("loss", "accuracy")) for r in rows}


@pytest.mark.parametrize("crash_at", [1, 4], ids=["before-divergence", "after-divergence"])
def test_a_pack_resumes_its_running_members_and_keeps_the_diverged_ones(tmp_path, crash_at):
    """Member 0 diverges in task 2, member 1 in task 3, member 2 never. A crash in task 1
    resumes all three from task 1 as a pack; a crash in task 4 resumes member 2 alone (through
    the plain loop) and leaves the two diverged members final, at their first attempt."""
    from orchestrator.store import Store
    from trainables.config import TrialConfig
    from trainables.loop import train

    store = Store(str(tmp_path / "results"))
    store.initialise()
    # SGD at lr 1: binary seed 2 diverges at step 104 (task 2), seed 10 at step 123 (task 3)
    shared = dict(units=32, tasks=5, steps_per_task=40, eval_every=20, optimizer="sgd", lr=1.0)
    members = [{"psp": "binary", "seed": 2}, {"psp": "binary", "seed": 10}, {"psp": "none", "seed": 0}]
    config = {**shared, PACK_KEY: members}
    ids = [member_trial_id("pk_00000", k) for k in range(3)]

    saved = []
    with pytest.raises(Crash):
        train_pack_until(config, store, crash_at, saved)
    crashed = store.read_trials().set_index("trial_id")
    # the crashed attempt: running members say error, the diverged ones stay diverged
    assert list(crashed.loc[ids, "status"]) == (["error"] * 3 if crash_at == 1
                                                else ["diverged", "diverged", "error"])
    assert crashed.loc[ids[2], "error"] == f"Crash: killed at task {crash_at}"
    assert len(saved) == crash_at and saved[-1]["stopped"] == ([] if crash_at == 1 else [0, 1])

    summaries = train_pack_until(config, store, None, [], checkpoint=saved[-1])
    assert [s.status for s in summaries] == (["diverged", "diverged", "completed"]
                                             if crash_at == 1 else ["completed"])

    trials = store.read_trials().set_index("trial_id")
    assert list(trials.loc[ids, "status"]) == ["diverged", "diverged", "completed"]
    resumed = [0, 1, 2] if crash_at == 1 else [2]
    for k, trial_id in enumerate(ids):
        row = trials.loc[trial_id]
        assert (row.attempt, row.restarts) == ((1, 1) if k in resumed else (0, 0))
        if k in resumed:
            assert row.restored_from_task == crash_at and pd.isna(row.error)
    raw = pd.read_parquet(tmp_path / "results" / "steps")
    assert not raw.duplicated(["trial_id", "step", "split", "eval_task"]).any()

    steps = store.read_steps()
    for k, member in enumerate(members):
        rows = []
        alone = train(TrialConfig(**shared, **member, threads=1), lambda t, r: rows.extend(r))
        assert trials.loc[ids[k], "steps_done"] == alone.steps_done
        mine = steps[steps.trial_id == ids[k]].to_dict("records")
        assert measurements(mine) == measurements(rows)  # bit for bit, NaN included


# ---- end to end on an embedded Ray ---------------------------------------------------------
def launch_spec(tmp_path, name: str, pack) -> pd.DataFrame:
    from orchestrator.launch import launch

    spec = parse_spec(SPEC.format(name=name, pack=pack))
    assert launch(spec, storage=str(tmp_path), verbose=0) == 0
    return tmp_path / name / "results"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_packed_sweep_stores_what_the_unpacked_sweep_stores(tmp_path, ray_local, exactly_once,
                                                              capsys):
    from orchestrator.launch import sweep_status

    # pack 3: one pack of three plus a pack of one (trained by the plain loop)
    packed_store = launch_spec(tmp_path, "packed", 3)
    assert "sweep packed: 2 packs holding 4 trials, 2 finished, 0 failed" in capsys.readouterr().out
    unpacked_store = launch_spec(tmp_path, "unpacked", "off")
    assert "sweep unpacked: 4 trials, 4 finished, 0 failed" in capsys.readouterr().out
    packed_steps, packed_trials = exactly_once(packed_store, n_trials=4)
    steps, trials = exactly_once(unpacked_store, n_trials=4)

    assert packed_trials.trial_id.str.fullmatch(r".+_p[0-2]").all()
    assert (packed_trials.status == "completed").all() and (packed_trials.attempt == 0).all()
    assert (packed_trials.steps_done == 100).all() and (packed_trials.restarts == 0).all()
    columns = ["psp", "seed", "units", "tasks", "status", "steps_done", "attempt"]
    assert (packed_trials[columns].sort_values(["psp", "seed"]).reset_index(drop=True)
            .equals(trials[columns].sort_values(["psp", "seed"]).reset_index(drop=True)))

    a = packed_steps.sort_values(KEYS, na_position="first").reset_index(drop=True)
    b = steps.sort_values(KEYS, na_position="first").reset_index(drop=True)
    values = KEYS + ["task", "context", "loss", "accuracy", "n_examples", "attempt"]
    pd.testing.assert_frame_equal(a[values], b[values])  # exact: the same float32 values
    assert len(list((tmp_path / "packed").glob("psplab_*/checkpoint_*/trial.pt"))) == 2 * 2

    status = sweep_status("packed", str(tmp_path))
    assert "4 of 4 trials started" in status and "TERMINATED 4" in status, status
    assert status.count("100/100 100%") == 4 and "_p2" in status
    assert re.search(r"^\w+_p2 +TERMINATED +completed ", status, re.M), status


KILL_SPEC = """
name: packkill
dataset: mnist5k
steps_per_task: 300
eval_every: 100
grid:
  psp: [none, binary]
  seed: [0, 1]
fixed: {units: 32, tasks: 4}
resources: {cpu: 1, gpu: 0}
max_failures: 2
pack: 4
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_pack_worker_resumes_every_member_from_the_pack_checkpoint(tmp_path, exactly_once):
    """SIGKILL the process training a pack after its second task: Tune restarts the pack from
    its last checkpoint; every member ends completed, attempt 1, each measurement once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    spec = tmp_path / "packkill.yaml"
    spec.write_text(KILL_SPEC)
    storage = tmp_path / "sweeps"
    store = storage / "packkill" / "results"
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", "launch", str(spec),
         "--storage", str(storage), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)

    def pack_workers() -> list[int]:
        """The Tune trial process, found only among the processes of this driver's session."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getsid(int(entry.name)) == driver.pid and \
                        b"ImplicitFunc" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
        return found

    try:
        deadline = time.monotonic() + 300
        while len(list((store / "_inflight").glob("*/task-000001.parquet"))) < 4:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no task-1 chunks after 300 s"
            time.sleep(0.05)
        workers = pack_workers()
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        out, err = driver.communicate(timeout=400)
        assert driver.returncode == 0, out[-3000:] + err[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    steps, trials = exactly_once(store, n_trials=4)
    assert (trials.status == "completed").all() and (trials.attempt == 1).all()
    assert (trials.restarts == 1).all() and trials.restored_from_task.nunique() == 1
    first = int(trials.restored_from_task.iloc[0])
    assert first >= 1  # the pack restarted from a checkpoint, not from scratch
    assert (steps[steps.task < first].attempt == 0).all() and (steps[steps.task >= first].attempt == 1).all()
