"""Benchmarks 1–3 (the training loop itself): loop overhead, FLOP/s of the contexts, the data
path and per-step recording, each against a bare PyTorch loop of the same shape and data."""
from __future__ import annotations

import contextlib
import statistics
import time
from unittest import mock

import torch

from benchmarks.common import BareLoop, second_task_seconds
from benchmarks.harness import Check, Report, interleave
from trainables import loop
from trainables.config import TrialConfig
from trainables.models import build_model, flops_per_example


@contextlib.contextmanager
def evaluation_off():
    """The loop with no evaluation at all (not even at task boundaries): benchmark 7 prices
    evaluation; here it would hide the per-step overhead behind a fixed per-task cost."""
    with mock.patch.object(loop, "tasks_to_evaluate", lambda cfg, step, task: []):
        yield


def loop_overhead(report: Report, *, quick: bool, device: str) -> None:
    """1. psplab's loop (recording on) ÷ a bare loop, as throughput (bare time / psplab time)."""
    gpu = device == "cuda"
    plan = [(128, 100)] if quick else [(128, 300), (512, 100)]
    if gpu:
        plan = [(128, 300), (512, 300)] if not quick else [(128, 100)]
    for width, steps in plan:
        cfg = TrialConfig(psp="binary", units=width, tasks=2, steps_per_task=steps, eval_every=0,
                          device=device, threads=None if gpu else 2)
        bare = BareLoop(cfg)
        with evaluation_off():
            t = interleave({"bare": lambda: bare.run(steps),
                            "psplab": lambda: second_task_seconds(cfg)},
                           rounds=2 if quick else 5, warmup=1)
        target = 0.90 if gpu else (0.80 if width < 512 else 0.95)
        report.add(Check(
            "1 loop overhead", f"psplab loop ÷ bare loop, steps/s, width {width}"
            + (" (GPU)" if gpu else ""), t.ratio("bare", "psplab"), target, True,
            detail=f"{steps} steps/round; " + t.describe({"bare": steps, "psplab": steps}, "steps"),
            why="per-step Python bookkeeping of the loop (context_at, tasks_to_evaluate, two "
                "record writes) is a fixed ~50 µs that a small step cannot hide"))


def context_flops(report: Report, *, quick: bool, device: str) -> None:
    """1b. Achieved FLOP/s of rotation and complex superposition ÷ the plain network."""
    width, steps = (128, 50) if quick else (256, 150)
    cfgs = {psp: TrialConfig(psp=psp, units=width, tasks=2, steps_per_task=steps, eval_every=0,
                             device=device, threads=None if device == "cuda" else 2)
            for psp in ("none", "rotation", "complex")}
    flops = {psp: flops_per_example(build_model(c, 784, n_contexts=2)) * 3 * c.batch_size * steps
             for psp, c in cfgs.items()}  # forward + backward ≈ 3 × forward
    with evaluation_off():
        t = interleave({psp: (lambda c=c: second_task_seconds(c)) for psp, c in cfgs.items()},
                       rounds=2 if quick else 5, warmup=1)
    for psp in ("rotation", "complex"):
        ratios = [(flops[psp] / a) / (flops["none"] / b)
                  for a, b in zip(t.seconds[psp], t.seconds["none"])]
        report.add(Check(
            "1 loop overhead", f"{psp} ÷ plain net, achieved FLOP/s, width {width}",
            statistics.median(ratios), 0.85, True,
            detail=f"GFLOP/s (median): none {flops['none'] / t.median('none') / 1e9:.1f}, "
                   f"{psp} {flops[psp] / t.median(psp) / 1e9:.1f}; {steps} steps/round",
            why="rotation regenerates its Haar contexts (a QR per layer) at each new task; "
                "complex matmuls run as complex64 GEMMs whose CPU kernels are slower per FLOP"))


def data_path(report: Report, *, quick: bool, device: str) -> None:
    """2. Batch sampling ÷ step time: batches are index lookups into a task's data permuted once."""
    steps = 100 if quick else 300
    cfg = TrialConfig(psp="binary", units=128, tasks=2, steps_per_task=steps, device=device,
                      threads=None if device == "cuda" else 2)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    bare = BareLoop(cfg)
    perm = torch.randperm(bare.x.shape[1], device=bare.x.device)

    def gather_every_step() -> float:  # the old data path, for comparison only
        start = time.perf_counter()
        for i in range(steps):
            index = bare.indices[i % len(bare.indices)]
            bare.x[index][:, perm], bare.y[index]
        return time.perf_counter() - start

    t = interleave({"sample": lambda: bare.run(steps, sample_only=True),
                    "step": lambda: bare.run(steps),
                    "gather": gather_every_step}, rounds=2 if quick else 5, warmup=1)
    report.add(Check(
        "2 data path", "batch sampling ÷ step time, width 128", t.ratio("sample", "step"), 0.10,
        False, fmt="{:.1%}",
        detail=f"permuting pixels per batch instead would cost {t.ratio('gather', 'step'):.1%} "
               f"of a step; " + t.describe()))


def capture_cost(report: Report, *, quick: bool, device: str) -> float:
    """3a. Per-step capture (loss and accuracy kept on the device), as a fraction of a step:
    the capture ops timed alone against whole steps, interleaved (a difference of two
    noisy loop timings would drown a ~1% effect)."""
    steps = 100 if quick else 300
    cfg = TrialConfig(psp="binary", units=128, tasks=2, steps_per_task=steps, device=device,
                      threads=None if device == "cuda" else 2)
    bare = BareLoop(cfg)
    t = interleave({"capture": lambda: bare.capture_only(steps), "step": lambda: bare.run(steps)},
                   rounds=2 if quick else 5, warmup=1)
    return t.ratio("capture", "step")
