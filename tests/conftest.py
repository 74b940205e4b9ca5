"""Shared fixtures. Ray ones start Ray only when a test asks for them (`ray.init` takes ~5 s).

- ``ray_local``: this process connected to a fresh 2-CPU local Ray (session-wide). Never
  attaches to a cluster another process started on this machine (``address="local"``).
- ``ray_cluster``: a real multi-node Ray on this machine (`ray.cluster_utils.Cluster`): a head
  with no CPUs, so every task runs on a worker node, plus two 1-CPU worker nodes; the head also
  serves Ray Client on ``ray_cluster.client_port``. One per session: a second `Cluster` in the
  same process resets Ray's process-wide address and KV state when it shuts down. This process
  does *not* connect to it; drivers (`psp sweep launch --address ...`) run in subprocesses, so
  a test can kill nodes and drivers like real failures. Tests that remove nodes must leave two
  live worker nodes behind: use ``ray_cluster_nodes``, which adds them back.
- ``psp``: run the `psp` command line in a subprocess with a timeout.

Ray processes started for a fixture are stopped by it; the two cannot be used in one session
together with an in-process driver of the cluster (one `ray.init` per process).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    os.environ.update(RAY_ENV)
    import ray

    auth_mode = os.environ.get("RAY_AUTH_MODE")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # A new local Ray turns token auth on by setting RAY_AUTH_MODE=token in os.environ. Left
    # there, every driver a later test starts inherits it and refuses the unauthenticated
    # calls of ``ray_cluster``'s raylets, so its trials die unscheduled (seen on CI).
    _restore_env("RAY_AUTH_MODE", auth_mode)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ.update(RAY_ENV)
    from ray.cluster_utils import Cluster

    client_port = free_port()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "ray_client_server_port": client_port})
    cluster.client_port = client_port
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def ray_cluster_nodes(ray_cluster):
    """``ray_cluster`` for a test that kills worker nodes: two live workers are back after it."""
    yield ray_cluster
    for _ in range(2 - len(ray_cluster.worker_nodes)):
        ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()


def run_psp(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **RAY_ENV, **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture
def psp():
    return run_psp


def expected_measurements(cfg) -> set[tuple[int, str, int | None]]:
    """(step, split, eval_task) of every row a trial that completes writes, from the schedule
    the README documents — written out here, never asked of trainables.loop, so that a loop
    that drops a measurement cannot agree with itself: a train row per step; a test of task 0
    and of the task being trained every eval_every steps; a test of every task seen so far at
    each task boundary and every eval_all_every steps. Step s (1-based) trains task
    (s − 1) // steps_per_task."""
    spt, last = cfg.steps_per_task, cfg.total_steps
    rows = {(step, "train", None) for step in range(1, last + 1)}
    periodic = range(cfg.eval_every, last + 1, cfg.eval_every) if cfg.eval_every else ()
    rows |= {(step, "test", e) for step in periodic for e in (0, (step - 1) // spt)}
    every_seen = set(range(spt, last + 1, spt))
    if cfg.eval_all_every:
        every_seen |= set(range(cfg.eval_all_every, last + 1, cfg.eval_all_every))
    rows |= {(step, "test", e) for step in every_seen for e in range((step - 1) // spt + 1)}
    return rows


def check_exactly_once(store_root, n_trials: int):
    """Every (trial, step, split, eval_task) of ``expected_measurements`` is in the store exactly
    once, and nothing else, read with pandas alone; one trial per grid point. Returns (steps,
    trials) frames."""
    import json
    from pathlib import Path

    import pandas as pd

    from trainables.config import TrialConfig
    from trainables.schema import PARAM_FIELDS

    steps = pd.read_parquet(Path(store_root) / "steps")
    trials = pd.read_parquet(Path(store_root) / "trials")
    assert len(trials) == n_trials and trials.trial_id.is_unique, trials[["trial_id", "status"]]
    assert not trials.duplicated([c for c in PARAM_FIELDS if c in trials]).any(), "a grid point ran twice"
    assert set(steps.trial_id) == set(trials.trial_id)
    keys = ["trial_id", "step", "split", "eval_task"]
    duplicated = steps[steps.duplicated(keys, keep=False)]
    assert duplicated.empty, duplicated[keys + ["attempt"]].head(20)
    for trial in trials.itertuples():
        expected = expected_measurements(TrialConfig(**json.loads(trial.config_json)))
        mine = steps[steps.trial_id == trial.trial_id]
        actual = {(int(s), split, None if pd.isna(e) else int(e))
                  for s, split, e in zip(mine.step, mine.split, mine.eval_task)}
        assert actual == expected, (trial.trial_id, sorted(expected - actual)[:5], sorted(actual - expected)[:5])
    return steps, trials


@pytest.fixture
def exactly_once():
    return check_exactly_once


@pytest.fixture
def measurements():
    """``expected_measurements``: the rows a trial's config says it writes."""
    return expected_measurements
