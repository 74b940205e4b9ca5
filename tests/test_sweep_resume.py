"""A driver killed mid-sweep (SIGKILL, embedded Ray and all): `psp sweep resume` finishes the
sweep with nothing lost and nothing duplicated."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPEC = """
name: driverkill
dataset: mnist5k
steps_per_task: 300
eval_every: 100
grid:
  seed: [0, 1, 2]
fixed:
  psp: binary
  units: 32
  tasks: 6
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
max_failures: 2
checkpoint_keep: 2
"""


def session_pids(sid: int) -> list[int]:
    """Processes still in the driver's session: the embedded Ray it started (agents outlive
    their raylet when the driver is SIGKILLed)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_driver_then_resume_completes_exactly_once(tmp_path, psp, exactly_once):
    spec = tmp_path / "driverkill.yaml"
    spec.write_text(SPEC)
    storage = tmp_path / "sweeps"
    store = storage / "driverkill" / "results"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", "launch", str(spec),
         "--storage", str(storage), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((store / "steps").glob("*/task-000001.parquet"))) < 2:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no chunks after 300 s"
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
        driver.communicate()
    finally:
        kill_session(driver.pid)
    before = exactly_once_partial(store)

    status = psp("sweep", "status", "driverkill", "--storage", str(storage), timeout=60)
    assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr

    resumed = psp("sweep", "resume", "driverkill", "--storage", str(storage), "--quiet", timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps, trials = exactly_once(store, n_trials=3)
    print(f"at the kill: {before}")
    print(trials[["trial_id", "status", "attempt", "restored_from_task", "steps_done"]].to_string())
    assert (trials.status == "completed").all()
    # The two trials running at the kill were started again (attempt 1); the third had not started.
    assert sorted(trials.attempt) == [0, 1, 1]
    for trial in trials[trials.attempt == 1].itertuples():
        mine = steps[steps.trial_id == trial.trial_id]
        first = 0 if pd_isna(trial.restored_from_task) else int(trial.restored_from_task)
        assert (mine[mine.task < first].attempt == 0).all()
        assert (mine[mine.task >= first].attempt == 1).all()


def exactly_once_partial(store: Path) -> dict:
    """What the store held when the driver died: chunks per trial."""
    return {d.name: len(list(d.glob("task-*.parquet"))) for d in sorted((store / "steps").iterdir())}


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))
