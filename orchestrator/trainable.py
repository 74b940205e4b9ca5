"""The Ray Tune trainables: plain functions around `trainables.loop.train` (one trial) and
`trainables.packed.train_packed` (a pack: several grid points trained as one batched model).

Why they look the way they do:
- Per-step data never goes through Tune. Each task's rows go straight to the results store as
  one in-flight Parquet chunk (named by trial and task, so a retried task replaces its file),
  and the trial publishes them as its one visible file when the attempt ends (see
  orchestrator/store.py); Tune only gets one small summary per task, because every
  `tune.report` blocks the trial for a few ms.
- A checkpoint is taken at every task boundary (model, optimizer, RNG states, next task,
  attempt) and handed to Tune with that task's report; after a node or driver failure Tune
  restarts the function with `tune.get_checkpoint()` set and training resumes at the next task.
- `attempt` counts the starts of a trial (0 on the first) and is written into every row, so
  readers can keep the latest measurement if a chunk was ever written twice.
- A diverged trial is a result, not a failure: it returns normally (no retry) and its trials
  row says ``diverged``. Any other exception marks the row ``error`` and re-raises, so Tune
  retries it up to ``max_failures`` times.
- A pack is one Tune trial but P trials in the store: member k is ``<tune trial id>_p<k>``
  with its own trials row, chunks and attempt, so readers cannot tell a packed sweep from an
  unpacked one. Its checkpoint holds every running member's state; a member that diverged is
  final at once (its row says so) and is left out when the pack resumes.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch
from ray import tune

from orchestrator.launch import PACK_KEY, member_trial_id
from orchestrator.provenance import provenance
from orchestrator.store import Store
from trainables import schema
from trainables.config import TrialConfig
from trainables.loop import TrialSummary, train

CHECKPOINT_FILE = "trial.pt"
# report(metrics, state): hand Tune one task's summary and, unless None, the state to resume from.
Report = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


class TrialRecord:
    """One trial's side of the store: its ``trials`` row (status, progress, attempt, restarts)
    and its per-task chunks. Constructing it starts an attempt: the row says ``running``."""

    def __init__(self, store: Store, *, sweep: str, trial_id: str, cfg: TrialConfig,
                 resume: dict[str, Any] | None, checkpoint_attempt: int):
        previous = read_trial_row(store, trial_id)
        self.store, self.sweep, self.trial_id = store, sweep, trial_id
        self.params = cfg.identity()
        # A trial restarted without its checkpoint (lost, or never written) still counts up.
        self.attempt = max(-1 if previous is None else previous["attempt"], checkpoint_attempt) + 1
        self.row = {
            "sweep": sweep, "trial_id": trial_id, "attempt": self.attempt,
            **schema.param_row(cfg.model_dump()),
            "status": "running", "steps_done": resume["steps_done"] if resume else 0,
            "restarts": self.attempt, "restored_from_task": resume["next_task"] if resume else None,
            "start_time": previous["start_time"] if previous is not None else _now(),
            "device": None, **provenance(),
        }
        self.last_test: dict[int, float] = {}  # eval task → accuracy at the last chunk's end
        store.write_trial(self.row)

    def sink(self, task: int, rows: list[dict]) -> None:
        self.store.write_chunk(self.trial_id, task, schema.steps_table(
            rows, self.params, sweep=self.sweep, trial_id=self.trial_id, attempt=self.attempt))
        final_step = max(r["step"] for r in rows) if rows else None
        self.last_test = {r["eval_task"]: r["accuracy"] for r in rows
                          if r["split"] == "test" and r["step"] == final_step}

    def progress(self, steps_done: int) -> None:
        self.store.write_trial({**self.row, "steps_done": steps_done})

    def finish(self, summary: TrialSummary) -> None:
        # Published before the row says so: a final status means the rows are visible.
        self.store.publish(self.trial_id)
        self.store.write_trial({**self.row, "status": summary.status, "end_time": _now(),
                                "steps_done": summary.steps_done, "device": summary.device})

    def fail(self, exc: BaseException) -> None:
        # Never hide the trial's error behind the store's. Rows that cannot be published now
        # stay in flight; the attempt that resumes this trial publishes them.
        with contextlib.suppress(Exception):
            self.store.publish(self.trial_id)
        with contextlib.suppress(Exception):
            self.store.write_trial({**self.row, "status": "error", "end_time": _now(),
                                    "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]})


def run_trial(config: dict[str, Any], *, sweep: str, store_uri: str) -> None:
    """Train one grid point of sweep ``sweep``, writing its rows to the store at ``store_uri``."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" per task
    context = tune.get_context()
    cfg = _trial_config(config, _cpus(context))
    resume = load_checkpoint(tune.get_checkpoint())
    trial = TrialRecord(Store(store_uri), sweep=sweep, trial_id=context.get_trial_id(), cfg=cfg,
                        resume=resume, checkpoint_attempt=resume["attempt"] if resume else -1)
    if resume is not None:
        set_rng_state(resume["rng"])

    def on_task_end(task: int, state: dict[str, Any]) -> None:
        trial.progress(state["steps_done"])
        # Tune's progress table shows the first four metrics.
        metrics = {"tasks_done": task + 1, "steps_done": state["steps_done"],
                   "acc_task0": trial.last_test.get(0), "acc_current": trial.last_test.get(task),
                   "attempt": trial.attempt}
        report_to_tune(metrics, {**state, "attempt": trial.attempt, "rng": rng_state()})

    try:
        summary = train(cfg, trial.sink, resume=resume, on_task_end=on_task_end)
    except Exception as exc:
        trial.fail(exc)
        raise
    trial.finish(summary)
    if summary.status == "diverged":
        tune.report({"steps_done": summary.steps_done, "diverged_at_step": summary.diverged_at_step,
                     "attempt": trial.attempt})


def run_pack(config: dict[str, Any], *, sweep: str, store_uri: str) -> None:
    """Train the grid points in ``config[PACK_KEY]`` (the rest of ``config`` is shared) as one
    pack; each writes its rows to the store as a trial of its own."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    context = tune.get_context()
    train_pack(config, sweep=sweep, store=Store(store_uri), pack_id=context.get_trial_id(),
               cpus=_cpus(context), checkpoint=load_checkpoint(tune.get_checkpoint()),
               report=report_to_tune)


def train_pack(config: dict[str, Any], *, sweep: str, store: Store, pack_id: str, cpus: float,
               checkpoint: dict[str, Any] | None, report: Report) -> list[TrialSummary]:
    """`run_pack` without Tune: ``checkpoint`` is the last state given to ``report`` (None on a
    fresh start). Returns the summaries of the members trained by this call."""
    from trainables.packed import train_packed  # only packed sweeps pay for its import

    shared = {key: value for key, value in config.items() if key != PACK_KEY}
    cfgs = [_trial_config({**shared, **member}, cpus) for member in config[PACK_KEY]]
    saved: dict[int, dict[str, Any]] = checkpoint["members"] if checkpoint else {}
    stopped: set[int] = set(checkpoint["stopped"]) if checkpoint else set()  # final rows written
    floor = checkpoint["attempt"] if checkpoint else -1
    live = [k for k in range(len(cfgs)) if k not in stopped]
    trials = {k: TrialRecord(store, sweep=sweep, trial_id=member_trial_id(pack_id, k), cfg=cfgs[k],
                             resume=saved.get(k), checkpoint_attempt=floor) for k in live}
    attempt = max((t.attempt for t in trials.values()), default=floor + 1)
    if checkpoint is not None:
        set_rng_state(checkpoint["rng"])

    def on_boundary(task: int, outcomes: list) -> None:
        states = {}
        for k, outcome in zip(live, outcomes):
            if isinstance(outcome, TrialSummary):  # diverged: final now, whatever happens later
                if k not in stopped:
                    trials[k].finish(outcome)
                    stopped.add(k)
            else:
                trials[k].progress(outcome["steps_done"])
                states[k] = outcome
        if not states:
            return
        steps_done = next(iter(states.values()))["steps_done"]
        metrics = {"tasks_done": task + 1, "steps_done": steps_done,
                   "acc_task0": _mean(trials[k].last_test.get(0) for k in states),
                   "acc_current": _mean(trials[k].last_test.get(task) for k in states),
                   "members": len(states), "attempt": attempt}
        report(metrics, {"members": states, "stopped": sorted(stopped), "attempt": attempt,
                         "rng": rng_state()})

    try:
        if len(live) == 1:  # a pack of one (or one member left) is a plain trial
            k = live[0]
            summaries = [train(cfgs[k], trials[k].sink, resume=saved.get(k),
                               on_task_end=lambda task, state: on_boundary(task, [state]))]
        else:
            summaries = train_packed([cfgs[k] for k in live], [trials[k].sink for k in live],
                                     resumes=[saved.get(k) for k in live],
                                     on_boundary=on_boundary,
                                     cuda_graph=cfgs[live[0]].cuda_graph) if live else []
    except Exception as exc:
        for k in live:
            if k not in stopped:
                trials[k].fail(exc)
        raise
    for k, summary in zip(live, summaries):
        if k not in stopped:
            trials[k].finish(summary)
    diverged = [s for s in summaries if s.status == "diverged"]
    if diverged:
        report({"steps_done": max(s.steps_done for s in summaries), "diverged": len(diverged),
                "attempt": attempt}, None)
    return summaries


def report_to_tune(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """One task's summary to Tune, with the state to resume from as a checkpoint."""
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="psplab-checkpoint-") as directory:
        torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
        # report() copies the checkpoint to the sweep's storage before returning.
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


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


def _trial_config(config: dict[str, Any], cpus: float) -> TrialConfig:
    # Torch threads = the CPUs Ray gave the trial: oversubscribed threads crawl.
    return TrialConfig(**{**config, "threads": config.get("threads") or max(1, int(cpus))})


def _cpus(context) -> float:
    return context.get_trial_resources().required_resources.get("CPU", 1)


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
