"""`psp run`: one trial in this process, no Ray, into one Parquet file (plus its trials row)."""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

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
    if not out_path.parent.exists():
        raise UserError(f"--out {out}: directory {out_path.parent} does not exist")

    from trainables.loop import resolve_device, train  # torch: only once --out is valid

    import torch

    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {cfg.device}: this machine has no CUDA device")
    if cfg.cuda_graph and device.type != "cuda":
        raise UserError("--cuda-graph: needs a CUDA device; this machine has none")

    trial_id = f"local-{cfg.psp}-{cfg.units}-s{cfg.seed}"
    tables: list[pa.Table] = []
    params = cfg.identity()

    def sink(task: int, rows: list[dict]) -> None:
        tables.append(schema.steps_table(rows, params, sweep=None, trial_id=trial_id, attempt=0))
        if progress:
            last = [r for r in rows if r["split"] == "test"]
            seen = ", ".join(f"t{r['eval_task']}={r['accuracy']:.3f}" for r in last[-min(len(last), 5):])
            print(f"task {task + 1}/{cfg.tasks} done  test accuracy: {seen}", flush=True)

    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    summary = train(cfg, sink, progress=progress)
    steps = pa.concat_tables(tables) if tables else schema.STEPS_SCHEMA.empty_table()
    trial = {"sweep": None, "trial_id": trial_id, "attempt": 0, **schema.param_row(cfg.model_dump()),
             "status": summary.status, "steps_done": summary.steps_done, "restarts": 0,
             "start_time": started, "end_time": dt.datetime.now(dt.timezone.utc),
             "device": summary.device, **provenance()}
    _atomic_write(steps, out_path)
    _atomic_write(schema.trials_table([trial]), trials_path(out_path))
    print(f"{summary.status}: {summary.steps_done} steps in {time.perf_counter() - clock:.1f} s; "
          f"wrote {len(steps)} rows to {out_path} (trial row: {trials_path(out_path)})")
    return 0


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
