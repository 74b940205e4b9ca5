"""Sweeps whose storage is S3 (moto's server on 127.0.0.1, see conftest's ``s3``): the results
store, Tune's experiment state and the checkpoints all go there, as on a cluster. Launch and
every command after it; a trial worker and then the driver SIGKILLed mid-sweep; the server
stopped mid-sweep. Each ends with every measurement stored exactly once, read from S3 by pandas
alone (and by DuckDB and polars in the first test).

These replace the local-filesystem driver-kill test: S3 is the stricter path (no rename, every
write a PUT), and the local one is still exercised by every other sweep test.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from analysis import load
from orchestrator import cli
from test_chaos import start_driver, wait_for  # a driver in its own session; polling it
from test_sweep_cluster import write_spec as write_tiny_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "sweeps" / "demo.yaml")


def session_pids(sid: int) -> list[int]:
    """Processes still in the driver's session (Ray's agents outlive a SIGKILLed driver)."""
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


def trial_workers(sid: int) -> list[int]:
    """The driver's Ray workers that run a trial: Ray titles them after Tune's function actor."""
    workers = []
    for pid in session_pids(sid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ImplicitFunc"):
            workers.append(pid)
    return workers


def progress(s3, name: str) -> tuple[int, int]:
    """(chunks in flight, trials published) of sweep ``name`` on S3."""
    keys = s3.keys(f"sweeps/{name}/results")
    return (sum("/_inflight/" in k for k in keys),
            sum(k.endswith("/trial.parquet") for k in keys))


def inflight_by_trial(s3, name: str) -> dict[str, int]:
    chunks: dict[str, int] = {}
    for key in s3.keys(f"sweeps/{name}/results/_inflight"):
        trial = key.split("/")[-2]
        chunks[trial] = chunks.get(trial, 0) + 1
    return chunks


def write_spec(tmp_path: Path, name: str, seeds: list[int], tasks: int, max_failures: int) -> str:
    """A tiny sweep of binary nets, 100 steps per task, one trial per seed."""
    path = write_tiny_spec(tmp_path, name, seeds=seeds, tasks=tasks, spt=100, eval_every=50)
    path.write_text(path.read_text().replace("max_failures: 3", f"max_failures: {max_failures}"))
    return str(path)


@pytest.mark.timeout(600)
def test_demo_spec_on_s3_end_to_end(tmp_path, s3, psp, exactly_once, capsys):
    storage = s3.uri("sweeps")
    result = psp("sweep", "launch", DEMO, "--smoke", "--storage", storage, "--name", "demo",
                 "--quiet", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Ray's token authentication stays on; its warning about that is not repeated on every launch.
    assert "Token authentication" not in result.stdout + result.stderr
    store = s3.uri("sweeps/demo/results")
    assert f"results:  {store}" in result.stdout
    assert f"psp results {store}" in result.stdout and f"psp plots {store}" in result.stdout

    steps, trials = exactly_once(store, n_trials=3)
    assert set(trials.psp) == {"none", "binary", "complex"} and set(trials.units) == {32}
    assert (trials.status == "completed").all() and (trials.steps_done == 150).all()
    assert (trials.attempt == 0).all() and trials.restored_from_task.isna().all()
    assert trials.end_time.notna().all() and (trials.end_time >= trials.start_time).all()
    assert trials.git_sha.notna().all() and (trials.device == "cpu").all()
    assert (steps.sweep == "demo").all() and (steps.attempt == 0).all()
    # All on S3: Tune's experiment state, a checkpoint at every task boundary (2 of the 3 kept
    # per trial), and the results store: one published file per trial, nothing in flight.
    keys = s3.keys("sweeps/demo")
    assert "sweeps/demo/tuner.pkl" in keys and "sweeps/demo/psplab/sweep.json" in keys
    assert any(re.fullmatch(r"sweeps/demo/experiment_state-.*\.json", k) for k in keys)
    checkpoints = [k for k in keys if re.fullmatch(r"sweeps/demo/psplab_[^/]+/checkpoint_\d+/trial\.pt", k)]
    assert len(checkpoints) == 3 * 2, checkpoints
    results = [k.removeprefix("sweeps/demo/results/") for k in keys if "/results/" in k]
    assert sorted(k.split("/")[0] for k in results) == ["_psplab.json"] + ["steps"] * 3 + ["trials"] * 3
    assert all(re.fullmatch(r"steps/[^/]+/trial\.parquet", k) for k in results if k.startswith("steps/"))

    # Every command a researcher runs next, on the s3:// URIs.
    assert cli.main(["sweep", "status", "demo", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "TERMINATED 3" in out and out.count("150/150 100%") == 3
    assert cli.main(["results", store]) == 0 and "3 trial(s)" in capsys.readouterr().out
    assert cli.main(["plots", store, "--out", str(tmp_path / "figures"), "--n-boot", "20"]) == 0
    assert (tmp_path / "figures" / "index.md").is_file()
    assert cli.main(["fsck", store]) == 0 and "clean: 3 chunks, 3 trials" in capsys.readouterr().out
    assert cli.main(["compact", store]) == 0
    assert "compacted 3 trial(s): 3 file(s) -> 3" in capsys.readouterr().out

    # DuckDB and polars straight from S3 at the local endpoint: analysis.load's rows, once.
    loaded = load(store)
    glob = f"s3://{s3.bucket}/sweeps/demo/results/steps/*/*.parquet"
    count, distinct = s3.duckdb().execute(
        f"SELECT count(*), count(DISTINCT (trial_id, step, split, eval_task)) "
        f"FROM read_parquet('{glob}')").fetchall()[0]
    assert count == distinct == len(loaded) == len(steps)
    import polars as pl

    assert pl.read_parquet(glob, storage_options=s3.polars_options).height == len(loaded)

    # Launching onto the same name refuses and touches nothing; --resume on a finished sweep
    # (what `make demo` does the second time) re-runs nothing.
    fs, bucket = s3.filesystem()

    def stored() -> list[tuple[str, int]]:
        import pyarrow.fs as pafs

        infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/sweeps/demo/results", recursive=True))
        return sorted((i.path, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)

    before = stored()
    again = psp("sweep", "launch", DEMO, "--smoke", "--storage", storage, "--name", "demo",
                timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr and "psp sweep resume" in again.stderr
    resumed = psp("sweep", "launch", DEMO, "--smoke", "--storage", storage, "--name", "demo",
                  "--resume", "--quiet", timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert stored() == before


@pytest.mark.timeout(600)
def test_worker_then_driver_killed_on_s3_then_resume_stores_every_row_once(tmp_path, s3, psp,
                                                                          exactly_once, capsys):
    """A trial's worker SIGKILLed (Tune restarts the trial from its S3 checkpoint), then the
    driver SIGKILLed with its embedded Ray; `psp sweep resume` finishes the sweep."""
    name = "s3kill"
    spec = write_spec(tmp_path, name, seeds=[0, 1, 2], tasks=4, max_failures=3)
    storage = s3.uri("sweeps")
    driver = start_driver("sweep", "launch", spec, "--storage", storage, "--quiet")
    try:
        # Two chunks of one trial: its first checkpoint is on S3 (reported after chunk 0).
        wait_for(lambda: max(inflight_by_trial(s3, name).values(), default=0) >= 2, 240,
                 "a trial's second chunk", driver)
        for victim in wait_for(lambda: trial_workers(driver.pid), 60, "a trial worker", driver):
            os.kill(victim, signal.SIGKILL)
        inflight = progress(s3, name)[0]
        wait_for(lambda: sum(progress(s3, name)) >= inflight + 2, 240,
                 "progress after the worker kill", driver)
        assert progress(s3, name)[1] < 3, "the sweep finished before the driver kill"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
    finally:
        kill_session(driver.pid)

    assert cli.main(["sweep", "status", name, "--storage", storage]) == 0
    assert "running" in capsys.readouterr().out
    resumed = psp("sweep", "resume", name, "--storage", storage, "--quiet", timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps, trials = exactly_once(s3.uri(f"sweeps/{name}/results"), n_trials=3)
    print(trials[["trial_id", "status", "attempt", "restarts", "restored_from_task"]].to_string())
    assert (trials.status == "completed").all()
    # The killed workers' trials were restarted by Tune, and the trials running at the driver
    # kill by the resume, at least one from a task checkpoint on S3.
    assert trials.restarts.sum() >= 2 and trials.restored_from_task.notna().any()
    assert not any("_inflight" in k for k in s3.keys(f"sweeps/{name}/results"))


@pytest.mark.timeout(600)
def test_s3_down_mid_sweep_errors_naming_the_object_then_resume_completes(tmp_path, s3, psp,
                                                                        exactly_once):
    """The server stops while trials run: each write is retried, then the trial errors naming
    the object it could not write. With the server back, `psp sweep resume` completes the
    sweep with nothing lost or doubled."""
    name = "s3down"
    spec = write_spec(tmp_path, name, seeds=[0, 1], tasks=3, max_failures=0)
    storage = s3.uri("sweeps", connect_timeout="1", request_timeout="2", retries="2")
    driver = start_driver("sweep", "launch", spec, "--storage", storage, "--quiet")
    try:
        wait_for(lambda: progress(s3, name)[0] >= 1, 240, "a chunk in flight", driver)
        s3.stop()
        out, err = driver.communicate(timeout=240)
    finally:
        kill_session(driver.pid)
    output = out + err
    failed = re.search(r"(sweeps/s3down/results/\S+\.parquet): write failed after 4 tries", output)
    assert failed, output[-4000:]
    assert driver.returncode != 0

    s3.start()
    resumed = psp("sweep", "resume", name, "--storage", storage, "--quiet", timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps, trials = exactly_once(s3.uri(f"sweeps/{name}/results"), n_trials=2)
    assert (trials.status == "completed").all()
