"""Benchmark 4: the cost of Ray Tune. The same 8 trials (3 tasks × 200 steps, width 128) run
through `psp sweep launch` on an embedded 2-CPU Ray, and called directly by a pool of two
worker processes (one thread each, as Tune runs them), both writing to a results store."""
from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import shutil
import statistics
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
    store.write_trial({**row, "status": summary.status, "steps_done": summary.steps_done})
    return summary.status


def tune_overhead(report: Report, *, quick: bool, device: str) -> None:
    """Launches of 2 and of 8 trials, each against the same trials called directly: the ratio
    at 8 is the target; the difference between the two sizes separates the cost of a launch
    (Tuner, experiment directory, actor start-up) from the cost each further trial adds."""
    from orchestrator.launch import RAY_ENV

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    small, large, steps = (2, 4, 100) if quick else (2, 8, 200)
    import ray

    from orchestrator.launch import launch
    from orchestrator.spec import parse_spec
    from orchestrator.store import Store

    specs = {n: parse_spec(SPEC.format(steps=steps, seeds=list(range(n)))) for n in (small, large)}
    root = Path(tempfile.mkdtemp(prefix="psplab-bench-tune-"))
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    ray_init = time.perf_counter() - start
    pool = mp.get_context("spawn").Pool(2)
    counter = iter(range(100_000))
    try:
        pool.map(_warm, range(2))

        def via_tune(n: int) -> None:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = launch(specs[n], name=f"bench-{next(counter)}", storage=str(root / "tune"),
                              verbose=0)
            if code != 0:
                raise RuntimeError(f"psp sweep launch returned {code}")

        def direct(n: int) -> None:
            store_uri = str(root / "direct" / f"run-{next(counter)}")
            Store(store_uri).initialise()
            jobs = [(c, store_uri, f"t{i}") for i, c in enumerate(specs[n].trials())]
            statuses = pool.map(_direct_trial, jobs, chunksize=1)
            assert all(s == "completed" for s in statuses), statuses

        t = interleave({f"direct {large}": lambda: direct(large), f"tune {large}": lambda: via_tune(large),
                        f"direct {small}": lambda: direct(small), f"tune {small}": lambda: via_tune(small)},
                       rounds=2 if quick else 5, warmup=1)
    finally:
        pool.terminate()
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    extra = {n: [a - b for a, b in zip(t.seconds[f"tune {n}"], t.seconds[f"direct {n}"])]
             for n in (small, large)}
    # Per further trial, in slot-seconds (2 trials run at a time): the slope of extra wall time.
    per_trial = statistics.median((b - a) * 2 / (large - small)
                                  for a, b in zip(extra[small], extra[large]))
    per_launch = statistics.median(extra[small]) - per_trial * small / 2
    detail = (f"3 tasks × {steps} steps, width 128, 2 trials at a time; " + t.describe()
              + f"; a launch's own cost ≈ {per_launch:.1f} s wall; ray.init {ray_init:.1f} s "
                f"(once, not counted)")
    report.add(Check("4 Tune overhead", f"direct ÷ psp sweep launch, wall, {large} trials",
                     t.ratio(f"direct {large}", f"tune {large}"), 0.90, True, detail=detail,
                     why=f"a launch costs ≈ {per_launch:.1f} s whatever its size (Tuner and "
                         f"experiment set-up, two fresh trainable actors that import torch, "
                         f"shutdown), which {large} short trials cannot amortise"))
    report.add(Check("4 Tune overhead", "overhead per further trial (slot-seconds), s",
                     per_trial, 0.25, False, fmt="{:.2f}",
                     detail=f"slope of (Tune − direct) wall between {small} and {large} trials, "
                            f"× 2 slots",
                     why="a task-boundary checkpoint (torch.save + copy into the experiment) "
                         "and a blocking report per task"))
