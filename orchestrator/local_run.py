"""`psp run`: one trial in this process, no Ray, into one Parquet file (plus its trials row) or,
with ``--store DIR``, as one more trial of a results store (so several runs can be compared by
`psp results`, `psp plots` and `analysis.load`)."""
from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.cli import UserError
from orchestrator.provenance import provenance
from trainables import schema
from trainables.config import TrialConfig


def trials_path(out: Path) -> Path:
    """The trials row of ``X.parquet`` lives in ``X.trials.parquet``."""
    return out.with_name(out.name.removesuffix(".parquet") + ".trials.parquet")


def run_one(cfg: TrialConfig, out: str, *, force: bool = False, progress: bool = True) -> int:
    out_path = Path(out)
    if out_path.suffix != ".parquet":
        raise UserError(f"--out {out}: must end in .parquet")
    for path in (out_path, trials_path(out_path)):
        if path.exists() and not force:
            raise UserError(f"--out {path}: exists; pass --force to replace it")
    _check_writable(out_path.parent, f"--out {out}")

    trial_id = f"local-{cfg.psp}-{cfg.units}-s{cfg.seed}"
    tables: list[pa.Table] = []
    clock = time.perf_counter()
    summary, trial = _train(cfg, trial_id, lambda task, table: tables.append(table), progress)
    steps = pa.concat_tables(tables) if tables else schema.STEPS_SCHEMA.empty_table()
    _atomic_write(steps, out_path)
    _atomic_write(schema.trials_table([trial]), trials_path(out_path))
    print(f"{summary.status}: {summary.steps_done} steps in {time.perf_counter() - clock:.1f} s; "
          f"wrote {len(steps)} rows to {out_path} (trial row: {trials_path(out_path)})")
    return 0


def run_into_store(cfg: TrialConfig, uri: str, *, progress: bool = True) -> int:
    """Train one trial into the store at ``uri`` (created if missing) under a new trial id,
    the way a sweep's trial is stored: a chunk per task, published when it ends."""
    from orchestrator.store import Store

    store = Store(uri)
    store.initialise()  # refuses a store of a newer psplab, names an unwritable one
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    trial_id = f"run-{cfg.psp}-{cfg.units}-s{cfg.seed}-{stamp}-{uuid.uuid4().hex[:4]}"
    clock = time.perf_counter()
    summary, trial = _train(cfg, trial_id,
                            lambda task, table: store.write_chunk(trial_id, task, table), progress)
    store.publish(trial_id)
    store.write_trial(trial)
    print(f"{summary.status}: {summary.steps_done} steps in {time.perf_counter() - clock:.1f} s; "
          f"trial {trial_id} in {uri}\nanalyse:  psp results {uri}   psp plots {uri} --out DIR")
    return 0


def _train(cfg: TrialConfig, trial_id: str, write: Callable[[int, pa.Table], None],
           progress: bool) -> tuple[Any, dict[str, Any]]:
    """Train ``cfg``, handing each task's rows to ``write``; returns (summary, trials row)."""
    from trainables.loop import resolve_device, train  # torch: only once the output is valid

    import torch

    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {cfg.device}: this machine has no CUDA device")
    if cfg.cuda_graph and device.type != "cuda":
        raise UserError("--cuda-graph: needs a CUDA device; this machine has none")

    params = cfg.identity()

    def sink(task: int, rows: list[dict]) -> None:
        write(task, schema.steps_table(rows, params, sweep=None, trial_id=trial_id, attempt=0))
        if progress:
            last = [r for r in rows if r["split"] == "test"]
            seen = ", ".join(f"t{r['eval_task']}={r['accuracy']:.3f}" for r in last[-min(len(last), 5):])
            print(f"task {task + 1}/{cfg.tasks} done  test accuracy: {seen}", flush=True)

    started = dt.datetime.now(dt.timezone.utc)
    summary = train(cfg, sink, progress=progress)
    trial = {"sweep": None, "trial_id": trial_id, "attempt": 0, **schema.param_row(cfg.model_dump()),
             "status": summary.status, "steps_done": summary.steps_done, "restarts": 0,
             "start_time": started, "end_time": dt.datetime.now(dt.timezone.utc),
             "device": summary.device, **provenance()}
    return summary, trial


def _check_writable(directory: Path, what: str) -> None:
    """Create ``directory`` if missing and prove a file can be written there, before training:
    a run that cannot save its result should not start."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tmp-psp-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {directory} ({exc.strerror or exc})") from None


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
