"""Benchmark 4: the cost of Ray Tune. The same 8 trials (3 tasks × 200 steps, width 128) run
through `psp sweep launch` (cold: a fresh process that starts and stops an embedded 2-CPU Ray),
through `launch(address=…)` on a 2-CPU Ray started once beforehand (a running cluster), and
called directly by a pool of two worker processes (one thread each, as Tune runs them), all
writing to a results store."""
from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Check, Report, interleave

SPEC = """
name: bench
dataset: mnist5k
steps_per_task: {steps}
eval_every: 100
grid:
  seed: {seeds}
fixed:
  psp: binary
  units: 128
  tasks: 3
resources: {{cpu: 1, gpu: 0}}
max_failures: 0
"""


def _warm(_: int) -> int:
    import torch  # noqa: F401 - the import is the warm-up

    import trainables.loop  # noqa: F401
    return os.getpid()


def _direct_trial(args: tuple[dict, str, str]) -> str:
    """One trial as the trainable runs it, minus Tune: train + per-task chunks + trial rows."""
    config, store_uri, trial_id = args
    from orchestrator.store import Store
    from trainables import schema
    from trainables.config import TrialConfig
    from trainables.loop import train

    cfg = TrialConfig(**{**config, "threads": 1})
    store = Store(store_uri)
    params = cfg.identity()
    row = {"sweep": "direct", "trial_id": trial_id, "attempt": 0,
           **schema.param_row(cfg.model_dump()), "status": "running", "steps_done": 0}
    store.write_trial(row)

    def sink(task: int, rows: list[dict]) -> None:
        store.write_chunk(trial_id, task, schema.steps_table(
            rows, params, sweep="direct", trial_id=trial_id, attempt=0))

    def on_task_end(task: int, state: dict) -> None:
        store.write_trial({**row, "steps_done": state["steps_done"]})

    summary = train(cfg, sink, on_task_end=on_task_end)
    store.publish(trial_id)
    store.write_trial({**row, "status": summary.status, "steps_done": summary.steps_done})
    return summary.status


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _running_ray(env: dict[str, str]):
    """A 2-CPU Ray started once by `ray start --head --block`, as a cluster would be: yields
    (address, seconds it took to answer). Stopped by ending that one process group, not by
    `ray stop`, which would also stop any other Ray on this machine."""
    from orchestrator.launch import check_reachable
    from orchestrator.cli import UserError

    port = _free_port()
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    start = time.perf_counter()
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        while True:
            try:
                check_reachable(address, timeout=1.0)
                break
            except UserError:
                if head.poll() is not None or time.perf_counter() - start > 120:
                    raise RuntimeError(f"`ray start --head` did not come up (rc {head.poll()})")
                time.sleep(0.2)
        yield address, time.perf_counter() - start
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # --block stops its own daemons on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def tune_overhead(report: Report, *, quick: bool, device: str) -> None:
    """The same trials three ways, interleaved: called directly by a pool of two warm worker
    processes; through `psp sweep launch` as a user runs it, a fresh process that starts an
    embedded Ray and stops it (cold: the target); and through `launch(address=…)` on a Ray
    started once outside the timed region (the cluster case). Cluster launches of 2 and of 8
    trials separate a launch's fixed cost from the cost each further trial adds."""
    from orchestrator.launch import RAY_ENV, launch
    from orchestrator.spec import parse_spec
    from orchestrator.store import Store

    small, large, steps = (2, 4, 100) if quick else (2, 8, 200)
    texts = {n: SPEC.format(steps=steps, seeds=list(range(n))) for n in (small, large)}
    specs = {n: parse_spec(text) for n, text in texts.items()}
    root = Path(tempfile.mkdtemp(prefix="psplab-bench-tune-"))
    spec_file = root / f"spec-{large}.yaml"
    spec_file.write_text(texts[large])
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, **RAY_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    # The benchmark's own head and this driver skip Ray's token authentication: the token
    # file in ~/.ray may belong to another Ray on this machine. The cold launch keeps Ray's
    # default, as a user gets it.
    cluster_env = {**env, "RAY_AUTH_MODE": "disabled"}
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    pool = mp.get_context("spawn").Pool(2)
    counter = iter(range(100_000))
    try:
        pool.map(_warm, range(2))
        with _running_ray(cluster_env) as (address, ray_start):

            def on_cluster(n: int) -> None:
                with contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    code = launch(specs[n], name=f"bench-{next(counter)}",
                                  storage=str(root / "tune"), address=address, verbose=0)
                if code != 0:
                    raise RuntimeError(f"launch(address=…) returned {code}")

            def cold(n: int) -> None:
                done = subprocess.run(
                    [sys.executable, "-c", "import sys; from orchestrator.cli import main; "
                     "sys.exit(main())", "sweep", "launch", str(spec_file), "--quiet",
                     "--storage", str(root / "cold"), "--name", f"bench-{next(counter)}"],
                    cwd=repo, env={k: v for k, v in env.items()
                                   if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")},
                    capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"psp sweep launch returned {done.returncode}: "
                                       f"{done.stderr.strip()[-500:]}")

            def direct(n: int) -> None:
                store_uri = str(root / "direct" / f"run-{next(counter)}")
                Store(store_uri).initialise()
                jobs = [(c, store_uri, f"t{i}") for i, c in enumerate(specs[n].trials())]
                statuses = pool.map(_direct_trial, jobs, chunksize=1)
                assert all(s == "completed" for s in statuses), statuses

            t = interleave({f"direct {large}": lambda: direct(large),
                            f"cold {large}": lambda: cold(large),
                            f"cluster {large}": lambda: on_cluster(large),
                            f"direct {small}": lambda: direct(small),
                            f"cluster {small}": lambda: on_cluster(small)},
                           rounds=2 if quick else 5, warmup=1)
    finally:
        pool.terminate()
        shutil.rmtree(root, ignore_errors=True)
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth
    extra = {n: [a - b for a, b in zip(t.seconds[f"cluster {n}"], t.seconds[f"direct {n}"])]
             for n in (small, large)}
    # Per further trial, in slot-seconds (2 trials run at a time): the slope of extra wall time.
    per_trial = statistics.median((b - a) * 2 / (large - small)
                                  for a, b in zip(extra[small], extra[large]))
    per_launch = statistics.median(extra[small]) - per_trial * small / 2
    cold_extra = statistics.median(a - b for a, b in zip(t.seconds[f"cold {large}"],
                                                         t.seconds[f"cluster {large}"]))
    cold_ratio = t.ratio(f"direct {large}", f"cold {large}")
    cluster_ratio = t.ratio(f"direct {large}", f"cluster {large}")
    detail = (f"3 tasks × {steps} steps, width 128, 2 trials at a time; " + t.describe()
              + f"; on the running Ray a launch's own cost ≈ {per_launch:.1f} s wall (each launch "
                f"is a new Ray job: its trainable actors start fresh workers that import torch); "
                f"a cold launch costs {cold_extra:.1f} s more (Python and Ray imports in "
                f"the driver, starting and stopping Ray); `ray start --head` took "
                f"{ray_start:.1f} s, once, not counted")
    why = (f"a cold launch costs ≈ {per_launch + cold_extra:.1f} s whatever its size, "
           f"{cold_extra:.1f} s of it importing Ray in the driver and starting and stopping Ray, "
           f"the rest two fresh trainable actors that boot a Ray worker and import torch; "
           f"{large} trials of ~{2 * statistics.median(t.seconds[f'direct {large}']) / large:.1f}"
           f" s cannot amortise it")
    report.add(Check("4 Tune overhead",
                     f"direct ÷ psp sweep launch (cold: starts its own Ray), wall, {large} trials",
                     cold_ratio, 0.90, True, detail=detail, why=why))
    report.add(Check("4 Tune overhead",
                     f"direct ÷ launch --address (Ray already running), wall, {large} trials",
                     cluster_ratio, 0.90, True,
                     why=f"even on a running Ray every launch starts fresh trainable actors "
                         f"(≈ {per_launch:.1f} s: Ray worker start, torch import)"))
    report.add(Check("4 Tune overhead", "overhead per further trial (slot-seconds), s",
                     per_trial, 0.25, False, fmt="{:.2f}",
                     detail=f"slope of (launch --address − direct) wall between {small} and "
                            f"{large} trials, × 2 slots",
                     why="a task-boundary checkpoint (torch.save + copy into the experiment) "
                         "and a blocking report per task"))
