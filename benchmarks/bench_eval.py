"""Benchmark 7: what the default evaluation schedule costs next to training, at 50 tasks.

A 50-task × 1000-step trial takes minutes even at width 256, so the cost is projected: the
schedule's evaluations are counted exactly (loop.tasks_to_evaluate over every step), and the
price of one evaluation and of one training step are measured, interleaved. The loop's way
(one forward per task, each task's test set permuted on the fly) is compared with the packed
evaluation, which stacks several tasks' test sets into one forward.
"""
from __future__ import annotations

import statistics
import time

from benchmarks.common import BareLoop, sync
from benchmarks.harness import Check, Report, interleave
from trainables import loop
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.models import build_model
from trainables.packed import PackedMLP, _evaluate
from trainables.streams import build_stream

TASKS, STEPS = 50, 1000


def count_evaluations(cfg: TrialConfig) -> int:
    return sum(len(loop.tasks_to_evaluate(cfg, task * cfg.steps_per_task + i + 1, task))
               for task in range(cfg.tasks) for i in range(cfg.steps_per_task))


def evaluation_cost(report: Report, *, quick: bool, device: str) -> None:
    cfg = TrialConfig(psp="binary", units=256, tasks=TASKS, steps_per_task=STEPS, eval_every=100,
                      device=device, threads=None if device == "cuda" else 2)
    n_evals = count_evaluations(cfg)
    dev = loop.resolve_device(cfg.device)
    dataset = load_dataset(cfg.dataset).to(dev)
    stream = build_stream(cfg, dataset)
    model = build_model(cfg, stream.in_features, n_contexts=TASKS).to(dev)
    packed = PackedMLP([model], dev, exact=False)
    tasks = list(range(10))
    steps = 50 if quick else 100
    bare = BareLoop(cfg.model_copy(update={"tasks": 2}))

    def loop_way() -> float:
        sync(dev)
        start = time.perf_counter()
        for task in tasks:
            x, y = stream.test_set(task)
            loop.evaluate(model, x, y, loop.eval_context(cfg, task))
        sync(dev)
        return time.perf_counter() - start

    def batched() -> float:
        sync(dev)
        start = time.perf_counter()
        _evaluate(packed, {cfg.seed: stream}, [0], cfg, tasks)
        sync(dev)
        return time.perf_counter() - start

    t = interleave({"evaluate": loop_way, "batched": batched, "train": lambda: bare.run(steps)},
                   rounds=2 if quick else 5, warmup=1)
    shares = [n_evals * (e / len(tasks)) / (TASKS * STEPS * (s / steps))
              for e, s in zip(t.seconds["evaluate"], t.seconds["train"])]
    batched_shares = [n_evals * (e / len(tasks)) / (TASKS * STEPS * (s / steps))
                      for e, s in zip(t.seconds["batched"], t.seconds["train"])]
    report.add(Check(
        "7 evaluation", f"default schedule's evaluation ÷ training, {TASKS} tasks × {STEPS} steps, "
        f"width 256" + (" (GPU)" if device == "cuda" else ""),
        statistics.median(shares), 0.25, False, fmt="{:.1%}",
        detail=f"{n_evals} task evaluations of {len(stream.test_y)} images (projected from "
               f"measured per-evaluation and per-step times); with tasks stacked in one forward "
               f"(packed evaluation, speed ×{t.ratio('evaluate', 'batched'):.2f} of the loop's "
               f"per-task forwards): {statistics.median(batched_shares):.1%}; "
               + t.describe(),
        why="every evaluation permutes its test set again and runs a separate forward"))
