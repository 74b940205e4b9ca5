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
- ``s3``: an S3 API on 127.0.0.1 (moto's server, in this process; session-wide) and a fresh
  bucket per test: ``s3.uri("sweeps")`` is an ``s3://`` URI that psplab, Ray Tune and pyarrow
  reach through ``endpoint_override``. Dummy credentials are set in the environment (and so
  reach every process a test starts), the instance-metadata lookup is off, and the region is
  in every URI, so nothing asks any address but 127.0.0.1. ``s3.stop()``/``s3.start()`` take
  the server down and bring it back on the same port with its objects.

Ray processes started for a fixture are stopped by it; the two cannot be used in one session
together with an in-process driver of the cluster (one `ray.init` per process).
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid

import pytest

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
# Dummy credentials for moto; no metadata service, no shared config: nothing to look up.
S3_ENV = {"AWS_ACCESS_KEY_ID": "psplab-test", "AWS_SECRET_ACCESS_KEY": "psplab-test",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
          "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


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


class S3Server:
    """moto's S3 server on 127.0.0.1 in this process. Its objects live in this process's moto
    backend, so they outlive a stop()/start() of the server."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server_class = ThreadedMotoServer
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.bucket = ""
        self._server = None
        self.start()

    def start(self) -> None:
        self._server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        # werkzeug sends a response's headers and body in separate writes; with Nagle on, each
        # of the three requests of a pyarrow upload then waits for a delayed ACK (~2x slower).
        self._server._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def new_bucket(self) -> str:
        import boto3

        self.bucket = f"psplab-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=f"http://{self.endpoint}").create_bucket(Bucket=self.bucket)
        return self.bucket

    @property
    def options(self) -> str:
        return f"region=us-east-1&endpoint_override={self.endpoint}&scheme=http"

    def uri(self, path: str = "", **query: str) -> str:
        """``s3://BUCKET/path?…`` reaching this server (extra ``query`` options appended)."""
        extra = "".join(f"&{key}={value}" for key, value in query.items())
        return f"s3://{self.bucket}/{path.strip('/')}?{self.options}{extra}"

    def filesystem(self):
        """pyarrow's S3 filesystem on this server, and the bucket's path in it."""
        import pyarrow.fs as pafs

        return pafs.FileSystem.from_uri(self.uri())

    def duckdb(self):
        """A DuckDB connection that reads this server's s3:// URLs. The httpfs extension comes
        from its PyPI package (DuckDB would download it at run time) and nothing autoloads."""
        import glob

        import duckdb
        import duckdb_extension_httpfs

        con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                     "autoload_known_extensions": False})
        package = os.path.dirname(duckdb_extension_httpfs.__file__)
        con.execute(f"LOAD '{glob.glob(f'{package}/extensions/*/httpfs.duckdb_extension')[0]}'")
        con.execute(f"CREATE SECRET (TYPE s3, KEY_ID '{S3_ENV['AWS_ACCESS_KEY_ID']}', "
                    f"SECRET '{S3_ENV['AWS_SECRET_ACCESS_KEY']}', REGION 'us-east-1', "
                    f"ENDPOINT '{self.endpoint}', URL_STYLE 'path', USE_SSL false)")
        return con

    @property
    def polars_options(self) -> dict[str, str]:
        """polars' ``storage_options`` for this server."""
        return {"aws_endpoint_url": f"http://{self.endpoint}", "aws_allow_http": "true",
                "aws_region": "us-east-1", "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"]}

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` of this test's bucket."""
        import pyarrow.fs as pafs

        fs, bucket = self.filesystem()
        infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/{prefix}".rstrip("/"),
                                                   recursive=True, allow_not_found=True))
        return sorted(i.path.removeprefix(f"{self.bucket}/") for i in infos
                      if i.type == pafs.FileType.File)


@pytest.fixture(scope="session")
def s3_server():
    saved = {key: os.environ.get(key) for key in S3_ENV}
    os.environ.update(S3_ENV)
    server = S3Server()
    yield server
    server.stop()
    for key, value in saved.items():
        _restore_env(key, value)


@pytest.fixture
def s3(s3_server):
    """The session's S3 server with a fresh bucket for this test; running again afterwards."""
    s3_server.new_bucket()
    yield s3_server
    if s3_server._server is None:
        s3_server.start()


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


def plain_read(store_root, table: str):
    """``table`` (steps or trials) of a local or s3:// store, read by pandas and pyarrow alone."""
    from pathlib import Path

    import pandas as pd
    import pyarrow.fs as pafs

    if "://" not in str(store_root):
        return pd.read_parquet(Path(store_root) / table)
    fs, path = pafs.FileSystem.from_uri(str(store_root))
    return pd.read_parquet(f"{path}/{table}", filesystem=fs)


def check_exactly_once(store_root, n_trials: int):
    """Every (trial, step, split, eval_task) of ``expected_measurements`` is in the store exactly
    once, and nothing else, read with pandas alone (a local path or an s3:// URI); one trial per
    grid point. Returns (steps, trials) frames."""
    import json

    import pandas as pd

    from trainables.config import TrialConfig
    from trainables.schema import PARAM_FIELDS

    steps, trials = (plain_read(store_root, table) for table in ("steps", "trials"))
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
