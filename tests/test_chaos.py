"""Chaos: sweeps on a real multi-node Ray lose worker nodes, trial processes and their driver at
seeded random moments, and still end with every trial finished and every measurement stored
exactly once; restarts are counted in the trials table and restarts from scratch are reported.

Kills are triggered by the store's progress (so many more chunks written), not by the clock, so
the schedule means the same on a loaded machine as on an idle one; a seeded random pause after
each trigger makes a kill land inside a task rather than on its boundary.

Finding a trial's worker process: Tune runs each trial in a Ray worker process whose working
directory it sets to ``.../<experiment>/working_dirs/<trainable>_<trial id>_...`` (Ray's
``RAY_CHDIR_TO_TRIAL_DIR``, on by default), and Ray workers are children of their node's raylet.
So ``/proc/*/cwd`` names the trial and the parent chain names the node, for this test's cluster
only (other Ray clusters on the machine have other raylets). A reused actor keeps the directory
of its last trial, so a process only counts while its trial's row in the store says ``running``.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TRAINABLE = "psplab"  # orchestrator.launch names Tune's trainable (and so its trial dirs) so
TASKS = 4
SPEC = """
name: {name}
dataset: mnist5k
steps_per_task: 150
eval_every: 50
grid:
  seed: {seeds}
fixed:
  psp: binary
  units: 48
  tasks: {tasks}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 2
max_failures: 10
checkpoint_keep: 2
"""
SCRATCH_LINE = re.compile(r"^restarted from scratch \(no checkpoint to resume from\): "
                          r"(?:none|(\d+) trial\(s\): (.+))$", re.MULTILINE)
RESTARTS_LINE = re.compile(r"^restarts: (?:none|(\d+) in (\d+) trial\(s\))$", re.MULTILINE)


# ---- helpers -----------------------------------------------------------------------------------
def write_spec(tmp_path: Path, name: str, seeds: list[int]) -> Path:
    """A sweep of one trial per seed, each a few seconds of training."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, seeds=seeds, tasks=TASKS))
    return path


def start_driver(*args: str) -> subprocess.Popen:
    """`psp ARGS` in its own session, so killing its process group kills nothing of ours."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


def stop_driver(driver: subprocess.Popen) -> tuple[str, str]:
    """SIGKILL the driver (a no-op if it already exited); returns its output."""
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGKILL)
    return driver.communicate()


def wait_for(condition, timeout: float, what: str, driver: subprocess.Popen,
             finished_ok: bool = False):
    """Poll ``condition`` until it returns something truthy; fail if the driver exits first,
    unless ``finished_ok`` and it exited cleanly (then None: the sweep ran out of work)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if driver.poll() is not None:
            if finished_ok and driver.returncode == 0:
                return None
            out, err = driver.communicate()
            pytest.fail(f"driver exited ({driver.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def chunks_by_trial(store: Path) -> dict[str, int]:
    """Distinct tasks stored per trial, in flight or published. A retried task replaces its
    chunk, and publishing moves tasks into the trial's file (which is written before its
    chunks go, and read after they were listed), so the total only grows when new work is
    done."""
    tasks: dict[str, set[int]] = {}
    for path in (store / "_inflight").glob("*/task-*.parquet"):
        tasks.setdefault(path.parent.name, set()).add(int(path.stem.removeprefix("task-")))
    for path in (store / "steps").glob("*/trial.parquet"):
        try:
            tasks.setdefault(path.parent.name, set()).update(
                pq.read_table(path, columns=["task"]).column("task").to_pylist())
        except (OSError, ValueError):  # replaced between the listing and the read
            continue
    return {trial: len(done) for trial, done in tasks.items()}


def trial_rows(store: Path) -> dict[str, dict]:
    """Each trial's row as the store has it now. Files are replaced whole by a rename, so the
    hidden ``.tmp-…`` files being written are skipped, as every reader of the store does."""
    rows = {}
    for path in (store / "trials").glob("*.parquet"):
        if path.name.startswith((".", "_")):
            continue
        try:
            row = pq.read_table(path).to_pylist()[0]
        except (OSError, ValueError, IndexError):  # replaced between the listing and the read
            continue
        rows[row["trial_id"]] = row
    return rows


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces


def on_node(pid: int, raylets: dict[int, object]):
    """The cluster node whose raylet started ``pid`` (directly or not), or None."""
    while pid and pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = parent(pid)
    return None


def wait_dead(pid: int, timeout: float = 30) -> None:
    """Until ``pid`` is gone or a zombie: after that it writes nothing more to the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} still alive {timeout:.0f} s after SIGKILL")


@dataclass
class Victim:
    pid: int
    trial_id: str
    attempt: int      # the attempt the trials row says is running: a kill must end it
    chunks: int       # the trial's chunks once its process is dead; 0: it had no checkpoint
    node: object
    # The attempt ended completed anyway: a node's workers outlive its raylet for a moment,
    # and a short trial can finish in it. Such a kill cut nothing short: no restart is owed.
    finished: bool = False


def running_trials(cluster, experiment: str, store: Path) -> list[Victim]:
    """Worker processes of this cluster running a trial of ``experiment`` that has at least
    one whole task left (so a kill surely lands mid-run), ordered by trial id."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    rows, chunks = trial_rows(store), chunks_by_trial(store)
    victims = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, a zombie, or not ours
            continue
        if f"/{experiment}/working_dirs/{TRAINABLE}_" not in cwd:
            continue
        trial_dir = os.path.basename(cwd)
        trial_id = next((t for t in rows if trial_dir.startswith(f"{TRAINABLE}_{t}_")), None)
        node = on_node(int(entry.name), raylets)
        if trial_id is None or node is None or rows[trial_id]["status"] != "running":
            continue
        if chunks.get(trial_id, 0) <= TASKS - 2:
            victims.append(Victim(int(entry.name), trial_id, int(rows[trial_id]["attempt"]),
                                  chunks.get(trial_id, 0), node))
    return sorted(victims, key=lambda v: v.trial_id)


def tune_trials(experiment: Path) -> dict[str, dict]:
    """Tune's own view from its latest experiment snapshot: status and failure count per trial.
    Latest by the timestamp in the name, as Tune picks it (a resume rewrites the older ones)."""
    latest = max(experiment.glob("experiment_state-*.json"))
    state = json.loads(latest.read_text())
    trials = {}
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        trials[trial["trial_id"]] = {"status": trial["status"],
                                     "failures": meta.get("num_failures", 0)}
    return trials


def restarted_from_scratch(store: Path, trials: pd.DataFrame) -> set[str]:
    """From the store alone: trials some attempt ≥ 1 of which started without a checkpoint,
    i.e. redid task 0 (checkpoints are taken at task ends) or is the latest and restored none."""
    steps = pd.read_parquet(store / "steps", columns=["trial_id", "task", "attempt"])
    redid_task0 = set(steps[(steps.task == 0) & (steps.attempt >= 1)].trial_id)
    latest = set(trials[(trials.attempt >= 1) & trials.restored_from_task.isna()].trial_id)
    return redid_task0 | latest


def check_restart_report(output: str, store: Path, trials: pd.DataFrame) -> set[str]:
    """The driver's or `psp sweep status`'s restart lines agree with the trials table; returns
    the trials it names as restarted from scratch."""
    restarted = trials[trials.restarts > 0]
    counts = RESTARTS_LINE.search(output)
    assert counts, f"no 'restarts:' line in:\n{output[-3000:]}"
    if restarted.empty:
        assert counts.group(1) is None, counts.group(0)
        return set()
    assert (int(counts.group(1)), int(counts.group(2))) == (restarted.restarts.sum(), len(restarted)), \
        (counts.group(0), trials[["trial_id", "attempt", "restarts", "restored_from_task"]])
    scratch = SCRATCH_LINE.search(output)
    assert scratch, f"no 'restarted from scratch' line in:\n{output[-3000:]}"
    named = set() if scratch.group(1) is None else set(scratch.group(2).split(", "))
    assert scratch.group(1) is None or int(scratch.group(1)) == len(named)
    assert named == restarted_from_scratch(store, trials), scratch.group(0)
    return named


# ---- tests -------------------------------------------------------------------------------------
@pytest.mark.timeout(420)
def test_random_node_and_worker_kills(tmp_path, ray_cluster_nodes, exactly_once):
    """3 worker nodes removed without warning (each replaced) and 2 trial processes SIGKILLed,
    in a seeded random order at seeded random points of a 10-trial sweep. On a fast machine
    the sweep may run out of trials with a task or two left to cut before the last events:
    that is accepted once both kinds of kill have landed (the CI machine once finished 8
    trials after three)."""
    cluster, name, seed = ray_cluster_nodes, "chaos-nodes", 6
    n_trials = 10
    rng = random.Random(seed)
    spec = write_spec(tmp_path, name, seeds=list(range(n_trials)))
    store = tmp_path / "sweeps" / name / "results"
    events = ["node"] * 3 + ["sigkill"] * 2
    rng.shuffle(events)
    hits: list[tuple[str, Victim]] = []
    driver = start_driver("sweep", "launch", str(spec), "--address", cluster.address,
                          "--storage", str(tmp_path / "sweeps"), "--quiet")
    try:
        for kind in events:
            target = sum(chunks_by_trial(store).values()) + rng.randint(1, 3)
            both_landed = {k for k, _ in hits} == {"node", "sigkill"}
            if not wait_for(lambda: sum(chunks_by_trial(store).values()) >= target, 240,
                            f"{target} chunks before a {kind} kill", driver, both_landed):
                break
            time.sleep(rng.uniform(0, 1.5))
            victims = wait_for(lambda: running_trials(cluster, name, store), 120,
                               f"a running trial to {kind}", driver, both_landed)
            if not victims:
                break
            if kind == "sigkill":
                hit = [rng.choice(victims)]
                os.kill(hit[0].pid, signal.SIGKILL)
            else:
                nodes = sorted({id(v.node): v.node for v in victims}.values(), key=lambda n: n.node_id)
                node = rng.choice(nodes)
                cluster.remove_node(node, allow_graceful=False)
                cluster.add_node(num_cpus=1)  # preemptible capacity comes back
                hit = [v for v in victims if v.node is node]
            for victim in hit:  # its workers outlive the raylet for a moment
                wait_dead(victim.pid, timeout=60)
            chunks = chunks_by_trial(store)  # a chunk may have landed between the look and the kill
            rows = trial_rows(store)
            for victim in hit:
                victim.chunks = chunks.get(victim.trial_id, 0)
                row = rows.get(victim.trial_id, {})
                victim.finished = (row.get("status") == "completed"
                                   and row.get("attempt") == victim.attempt)
            hits += [(kind, victim) for victim in hit]
            print(f"{time.strftime('%X')} {kind}: {[(k, v.trial_id, v.attempt, v.chunks, v.finished) for k, v in hits]}")
        out, err = driver.communicate(timeout=300)
    finally:
        stop_driver(driver)
    assert driver.returncode == 0, out[-3000:] + err[-3000:]

    steps, trials = exactly_once(store, n_trials=n_trials)
    print(trials[["trial_id", "status", "attempt", "restarts", "restored_from_task"]].to_string())
    print(out[-600:])
    tune = tune_trials(tmp_path / "sweeps" / name)
    assert {t["status"] for t in tune.values()} == {"TERMINATED"} and len(tune) == n_trials, tune
    assert (trials.status == "completed").all()
    by_id = trials.set_index("trial_id")
    cut_short = [(kind, victim) for kind, victim in hits if not victim.finished]
    assert cut_short, "every kill came too late to cut a trial short"
    for kind, victim in cut_short:
        assert by_id.restarts[victim.trial_id] > victim.attempt, (kind, victim, by_id.loc[victim.trial_id])
    # Each kill that cut an attempt short counts in the store's restarts, which never exceed
    # Tune's own failure count.
    assert trials.restarts.sum() >= len({(v.trial_id, v.attempt) for _, v in cut_short})
    for trial in trials.itertuples():
        assert trial.restarts <= tune[trial.trial_id]["failures"], (trial, tune[trial.trial_id])
    scratch = check_restart_report(out, store, trials)
    assert {v.trial_id for _, v in cut_short if v.chunks == 0} <= scratch


@pytest.mark.timeout(480)
def test_driver_killed_twice_then_resumed(tmp_path, ray_cluster, psp, exactly_once):
    """`psp sweep launch` SIGKILLed at a seeded random point, `psp sweep resume` SIGKILLed at
    another, then `psp sweep resume` finishes the sweep; its report names the trials that had
    to start again from scratch."""
    name, seed = "chaos-driver", 3
    rng = random.Random(seed)
    spec = write_spec(tmp_path, name, seeds=list(range(6)))
    storage = tmp_path / "sweeps"
    store = storage / name / "results"
    common = ("--address", ray_cluster.address, "--storage", str(storage), "--quiet")
    commands = [("sweep", "launch", str(spec), *common), ("sweep", "resume", name, *common)]
    at_kill: list[dict[str, tuple[str, int, int]]] = []
    for command in commands:
        before = at_kill[-1] if at_kill else {}
        target = sum(chunks_by_trial(store).values()) + rng.randint(0, 3)

        def this_driver_runs_a_trial() -> bool:
            """Its trial wrote a new attempt's row, and the store holds ``target`` chunks."""
            return sum(chunks_by_trial(store).values()) >= target and any(
                r["status"] == "running" and before.get(t, (None, -1))[1] < r["attempt"]
                for t, r in trial_rows(store).items())

        driver = start_driver(*command)
        try:
            wait_for(this_driver_runs_a_trial, 240, f"a trial and {target} chunks", driver)
            time.sleep(rng.uniform(0, 1.0))
        finally:
            stop_driver(driver)
        chunks = chunks_by_trial(store)
        at_kill.append({t: (r["status"], int(r["attempt"]), chunks.get(t, 0))
                        for t, r in trial_rows(store).items()})
        print(f"{time.strftime('%X')} killed `{command[1]}`: {at_kill[-1]}")

    resumed = psp("sweep", "resume", name, *common, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps, trials = exactly_once(store, n_trials=6)
    print(trials[["trial_id", "status", "attempt", "restarts", "restored_from_task"]].to_string())
    print(resumed.stdout[-600:])
    tune = tune_trials(storage / name)
    assert {t["status"] for t in tune.values()} == {"TERMINATED"} and len(tune) == 6, tune
    assert (trials.status == "completed").all()
    by_id = trials.set_index("trial_id")
    running = {(t, attempt) for kill in at_kill for t, (status, attempt, _) in kill.items()
               if status == "running"}
    assert running, "no trial was running at either kill"
    for trial_id, attempt in running:  # a run cut short by its driver is run again, counted
        assert by_id.restarts[trial_id] > attempt, by_id.loc[trial_id]
    scratch = check_restart_report(resumed.stdout, store, trials)
    # A trial running without a single chunk had no checkpoint: it can only start over.
    assert {t for kill in at_kill for t, (status, _, n) in kill.items()
            if status == "running" and n == 0} <= scratch

    status = psp("sweep", "status", name, "--storage", str(storage), timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert check_restart_report(status.stdout, store, trials) == scratch


def named_checkpoints(experiment: Path) -> dict[str, tuple[str, str, str | None]]:
    """(status, trial dir, the checkpoint a restore would use) per trial in Tune's latest
    snapshot; empty while there is none or it is being rewritten."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"))
    try:
        state = json.loads(snapshots[-1].read_text()) if snapshots else {}
    except (OSError, ValueError):
        return {}
    named = {}
    for trial_json, meta_json in state.get("trial_data", []):
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        named[trial["trial_id"]] = (trial["status"], trial["relative_logdir"],
                                    (meta.get("last_result") or {}).get("checkpoint_dir_name"))
    return named


@pytest.mark.timeout(480)
def test_resume_mends_a_snapshot_that_names_a_deleted_checkpoint(tmp_path, ray_cluster, psp,
                                                                 exactly_once):
    """What `test_driver_killed_twice_then_resumed` hit once on CI: Tune deletes a trial's old
    checkpoints (checkpoint_keep) as soon as a newer one arrives but saves its snapshot later,
    so a killed driver can leave a snapshot naming a deleted checkpoint, and `Tuner.restore`
    failed that trial on every retry. Made on purpose here: the driver is killed while its
    snapshot names an early checkpoint of a running trial, which is then moved to the next
    name, as Tune's deletion leaves it. The resume must finish every trial, each row once."""
    name = "stale-snapshot"
    spec = write_spec(tmp_path, name, seeds=[0, 1])
    storage = tmp_path / "sweeps"
    experiment, store = storage / name, storage / name / "results"
    common = ("--address", ray_cluster.address, "--storage", str(storage), "--quiet")
    early = {f"checkpoint_{k:06d}" for k in range(TASKS - 1)}

    def a_running_trial_named_early() -> tuple[str, Path] | None:
        for trial_id, (status, directory, checkpoint) in named_checkpoints(experiment).items():
            if status == "RUNNING" and checkpoint in early:
                return trial_id, experiment / directory / checkpoint
        return None

    driver = start_driver("sweep", "launch", str(spec), *common)
    try:
        trial_id, named = wait_for(a_running_trial_named_early, 240, "a snapshot naming an "
                                   "early checkpoint of a running trial", driver)
    finally:
        stop_driver(driver)
    newer = sorted(p for p in named.parent.glob("checkpoint_*") if p.name > named.name)
    if newer:
        shutil.rmtree(named)
    else:
        named.rename(named.parent / f"checkpoint_{int(named.name.split('_')[1]) + 1:06d}")
    assert not named.exists() and any(named.parent.glob("checkpoint_*"))

    resumed = psp("sweep", "resume", name, *common, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"trial {trial_id}: Tune's snapshot names {named.name}, deleted" in resumed.stdout
    steps, trials = exactly_once(store, n_trials=2)
    assert (trials.status == "completed").all()
    assert {t["status"] for t in tune_trials(experiment).values()} == {"TERMINATED"}
