"""Sweeps on a real multi-node Ray (head with no CPUs + two 1-CPU worker nodes, one machine).

The driver runs in a subprocess (`psp sweep launch --address ...`), as it would on a cluster's
head; this process holds the cluster and kills nodes under it.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TINY = """
name: {name}
dataset: mnist5k
steps_per_task: {spt}
eval_every: {eval_every}
grid:
  seed: {seeds}
fixed:
  psp: binary
  units: 32
  tasks: {tasks}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 2
max_failures: 3
checkpoint_keep: 2
"""


def write_spec(tmp_path: Path, name: str, *, seeds, tasks=3, spt=50, eval_every=25) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(name=name, seeds=list(seeds), tasks=tasks, spt=spt,
                                eval_every=eval_every))
    return path


def tune_node_ids(experiment: Path) -> set[str]:
    """The Ray node each trial last reported from, per Tune's own experiment snapshot."""
    state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    return {json.loads(meta)["last_result"].get("node_id") for _, meta in state["trial_data"]}


def test_sweep_on_a_multi_node_cluster_stores_every_row_once(tmp_path, ray_cluster, psp, exactly_once):
    spec = write_spec(tmp_path, "multi", seeds=[0, 1, 2, 3])
    result = psp("sweep", "launch", str(spec), "--address", ray_cluster.address,
                 "--storage", str(tmp_path / "sweeps"), "--quiet", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps, trials = exactly_once(tmp_path / "sweeps" / "multi" / "results", n_trials=4)
    assert (trials.status == "completed").all() and (trials.attempt == 0).all()
    # Four 1-CPU trials on two 1-CPU worker nodes (the head has no CPUs): both nodes worked.
    nodes = tune_node_ids(tmp_path / "sweeps" / "multi")
    assert len(nodes) == 2 and None not in nodes
    assert ray_cluster.head_node.node_id not in nodes


def wait_for(condition, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"driver exited ({proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def chunks(store: Path, task: int) -> list[Path]:
    """Chunks of ``task`` that running trials hold in flight (published when they end)."""
    return list((store / "_inflight").glob(f"*/task-{task:06d}.parquet"))


def start_driver(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


@pytest.mark.timeout(600)
def test_killed_worker_node_resumes_from_its_task_checkpoint(tmp_path, ray_cluster_nodes, exactly_once):
    cluster = ray_cluster_nodes
    spec = write_spec(tmp_path, "nodekill", seeds=[0, 1], tasks=8, spt=300, eval_every=100)
    store = tmp_path / "sweeps" / "nodekill" / "results"
    driver = start_driver("sweep", "launch", str(spec), "--address", cluster.address,
                          "--storage", str(tmp_path / "sweeps"), "--quiet")
    try:
        # Both trials (one per node) are past their second task: each has a checkpoint in Tune
        # (a task's report returns before the next task's chunk is written).
        wait_for(lambda: len(chunks(store, 1)) == 2, 300, "the second task of both trials", driver)
        victim = sorted(cluster.worker_nodes, key=lambda node: node.node_id)[0]
        cluster.remove_node(victim, allow_graceful=False)
        cluster.add_node(num_cpus=1)  # the replacement the restored trial will run on
        out, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.communicate()
    assert driver.returncode == 0, out[-3000:] + err[-3000:]

    steps, trials = exactly_once(store, n_trials=2)
    print(trials[["trial_id", "status", "attempt", "restarts", "restored_from_task"]].to_string())
    assert (trials.status == "completed").all()
    restored = trials[trials.restored_from_task.notna()]
    assert len(restored) == 1, trials[["trial_id", "attempt", "restored_from_task"]]
    trial = restored.iloc[0]
    first_task = int(trial.restored_from_task)
    assert trial.attempt >= 1 and first_task >= 1  # it resumed, from a task checkpoint
    mine = steps[steps.trial_id == trial.trial_id]
    assert (mine[mine.task < first_task].attempt == 0).all()  # done before: not redone
    assert (mine[mine.task >= first_task].attempt >= 1).all()  # redone after the kill
    other = trials[trials.trial_id != trial.trial_id].iloc[0]
    assert other.attempt == 0 and (steps[steps.trial_id == other.trial_id].attempt == 0).all()
