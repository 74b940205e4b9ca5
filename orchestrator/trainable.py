"""The Ray Tune trainable: one plain function around `trainables.loop.train`.

Why it looks the way it does:
- Per-step data never goes through Tune. Each task's rows go straight to the results store as
  one Parquet chunk (named by trial and task, so a retried task replaces its file); Tune only
  gets one small summary per task, because every `tune.report` blocks the trial for a few ms.
- A checkpoint is taken at every task boundary (model, optimizer, RNG states, next task,
  attempt) and handed to Tune with that task's report; after a node or driver failure Tune
  restarts the function with `tune.get_checkpoint()` set and training resumes at the next task.
- `attempt` counts the starts of a trial (0 on the first) and is written into every row, so
  readers can keep the latest measurement if a chunk was ever written twice.
- A diverged trial is a result, not a failure: it returns normally (no retry) and its trials
  row says ``diverged``. Any other exception marks the row ``error`` and re-raises, so Tune
  retries it up to ``max_failures`` times.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import tempfile
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch
from ray import tune

from orchestrator.provenance import provenance
from orchestrator.store import Store
from trainables import schema
from trainables.config import TrialConfig
from trainables.loop import train

CHECKPOINT_FILE = "trial.pt"


def run_trial(config: dict[str, Any], *, sweep: str, store_uri: str) -> None:
    """Train one grid point of sweep ``sweep``, writing its rows to the store at ``store_uri``."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" per task
    context = tune.get_context()
    trial_id = context.get_trial_id()
    store = Store(store_uri)
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    cfg = TrialConfig(**{**config, "threads": config.get("threads") or max(1, int(cpus))})
    params = cfg.identity()

    resume = load_checkpoint(tune.get_checkpoint())
    previous = read_trial_row(store, trial_id)
    attempt = max(-1 if previous is None else previous["attempt"],
                  -1 if resume is None else resume["attempt"]) + 1
    row = {
        "sweep": sweep, "trial_id": trial_id, "attempt": attempt,
        **schema.param_row(cfg.model_dump()),
        "status": "running", "steps_done": resume["steps_done"] if resume else 0,
        "restarts": attempt, "restored_from_task": resume["next_task"] if resume else None,
        "start_time": previous["start_time"] if previous is not None else _now(),
        "device": None, **provenance(),
    }
    store.write_trial(row)
    if resume is not None:
        set_rng_state(resume["rng"])

    last_test: dict[int, float] = {}

    def sink(task: int, rows: list[dict]) -> None:
        store.write_chunk(trial_id, task, schema.steps_table(
            rows, params, sweep=sweep, trial_id=trial_id, attempt=attempt))
        final_step = max(r["step"] for r in rows) if rows else None
        last_test.clear()
        last_test.update({r["eval_task"]: r["accuracy"] for r in rows
                          if r["split"] == "test" and r["step"] == final_step})

    def on_task_end(task: int, state: dict[str, Any]) -> None:
        store.write_trial({**row, "steps_done": state["steps_done"]})
        # Tune's progress table shows the first four metrics.
        metrics = {"tasks_done": task + 1, "steps_done": state["steps_done"],
                   "acc_task0": last_test.get(0), "acc_current": last_test.get(task),
                   "attempt": attempt, "node_id": ray.get_runtime_context().get_node_id()}
        with tempfile.TemporaryDirectory(prefix="psplab-checkpoint-") as directory:
            torch.save({**state, "attempt": attempt, "rng": rng_state()},
                       os.path.join(directory, CHECKPOINT_FILE))
            # report() copies the checkpoint to the sweep's storage before returning.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        summary = train(cfg, sink, resume=resume, on_task_end=on_task_end)
    except Exception as exc:
        with contextlib.suppress(Exception):  # never hide the trial's error behind the store's
            store.write_trial({**row, "status": "error", "end_time": _now(),
                               "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]})
        raise
    store.write_trial({**row, "status": summary.status, "steps_done": summary.steps_done,
                       "end_time": _now(), "device": summary.device})
    if summary.status == "diverged":
        tune.report({"steps_done": summary.steps_done, "diverged_at_step": summary.diverged_at_step,
                     "attempt": attempt})


def load_checkpoint(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The training state saved at the last task boundary, or None for a fresh start."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu",
                          weights_only=False)


def read_trial_row(store: Store, trial_id: str) -> dict[str, Any] | None:
    """This trial's row from an earlier start (how many attempts so far, when it began)."""
    path = store.path("trials", f"{trial_id}.parquet")
    if store.fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    rows = pq.read_table(path, filesystem=store.fs).to_pylist()
    return rows[0] if rows else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNGs. The loop draws batches and contexts from (seed, task)-keyed
    generators, so this only matters for code that uses the global RNGs."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
