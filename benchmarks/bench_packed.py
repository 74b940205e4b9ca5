"""Benchmarks 5 and 6: packed trials (P configs as one batched model) against a loop of
separate trials, achieved TF32 FLOP/s of a pack on GPU, and CUDA-graph replay of one trial."""
from __future__ import annotations

import contextlib

import torch

from benchmarks.bench_loop import evaluation_off
from benchmarks.common import second_task_seconds, second_task_seconds_packed
from benchmarks.harness import Check, Report, interleave
from trainables.config import TrialConfig
from trainables.packed import packed_flops_per_step

# Dense (non-sparse) TF32 tensor-core peaks, FLOP/s, from the vendor data sheets.
TF32_PEAK = [("H100 PCIe", 378e12), ("H100 NVL", 417e12), ("H100", 494.7e12),
             ("H200", 494.7e12), ("A100", 156e12), ("L40S", 183e12), ("L4", 60e12)]


def _cfgs(width: int, members: int, steps: int, device: str) -> list[TrialConfig]:
    return [TrialConfig(psp="binary", units=width, tasks=2, steps_per_task=steps, eval_every=0,
                        seed=seed, device=device, threads=None if device == "cuda" else 2)
            for seed in range(members)]


def packed_vs_separate(report: Report, *, quick: bool, device: str) -> None:
    """5. Model-steps/s of one packed process ÷ the same trials trained one after another."""
    gpu = device == "cuda"
    if gpu:
        plan = [(128, 32, 100, 10.0), (512, 32, 100, 10.0)] if not quick else [(128, 32, 50, 10.0)]
    else:
        plan = [(128, 8, 200, 1.5), (2048, 4, 6, 0.9)] if not quick else [(128, 4, 50, 1.5)]
    for width, members, steps, target in plan:
        cfgs = _cfgs(width, members, steps, device)
        with evaluation_off():  # training throughput; evaluation is priced by benchmark 7
            t = interleave({"separate": lambda: sum(second_task_seconds(c) for c in cfgs),
                            "packed": lambda: second_task_seconds_packed(cfgs)},
                           rounds=2 if quick else 5, warmup=1)
        work = members * steps
        report.add(Check(
            "5 packed trials", f"packed ÷ separate, model-steps/s, width {width}, P = {members}"
            + (" (GPU)" if gpu else ""), t.ratio("separate", "packed"), target, True,
            detail=f"{steps} steps/round; " + t.describe({"separate": work, "packed": work},
                                                         "model-steps"),
            why="at this width a step is compute-bound: stacking removes launch overhead, "
                "which is already a small part of the step"))


@contextlib.contextmanager
def tf32():
    """Let fp32 matmuls use TF32 tensor cores (the precision the target is stated in)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = before


def tf32_peak(name: str) -> float | None:
    for key, peak in TF32_PEAK:
        if key in name:
            return peak
    return None


def packed_flops(report: Report, *, quick: bool, device: str) -> None:
    """5. Achieved TF32 FLOP/s of a width-2048 pack of 32 ÷ the GPU's dense TF32 peak."""
    name = torch.cuda.get_device_name(0)
    peak = tf32_peak(name)
    members, steps = (32, 20) if quick else (32, 50)
    cfgs = _cfgs(2048, members, steps, device)
    with evaluation_off(), tf32():
        t = interleave({"packed": lambda: second_task_seconds_packed(cfgs)},
                       rounds=2 if quick else 5, warmup=1)
    flops = packed_flops_per_step(cfgs[0]) * members * steps
    achieved = flops / t.median("packed")
    report.add(Check(
        "5 packed trials", "achieved TF32 FLOP/s ÷ dense peak, width 2048, P = 32 (GPU)",
        achieved / peak if peak else None, 0.30, True, fmt="{:.1%}",
        detail=f"{achieved / 1e12:.1f} TFLOP/s on {name}"
               + (f" (peak {peak / 1e12:.0f})" if peak else "")
               + f"; {steps} steps/round, the time includes the task's data preparation",
        skipped="" if peak else f"no TF32 peak known for {name}",
        why="M = 128 rows per member GEMM is a thin matrix: tensor cores are under-filled, "
            "and the optimizer's element-wise passes over 32 × 6 M parameters are memory-bound"))


def cuda_graph_step(report: Report, *, quick: bool, device: str) -> None:
    """6. One width-128 trial: its whole step replayed as a CUDA graph ÷ eager PyTorch."""
    steps = 100 if quick else 300
    cfg = _cfgs(128, 1, steps, device)[0]
    with evaluation_off():
        t = interleave({"eager": lambda: second_task_seconds(cfg),
                        "graph": lambda: second_task_seconds_packed([cfg], cuda_graph=True)},
                       rounds=2 if quick else 5, warmup=1)
    report.add(Check(
        "6 GPU step", "CUDA graph ÷ eager, steps/s, one width-128 trial (GPU)",
        t.ratio("eager", "graph"), 3.0, True,
        detail=f"{steps} steps/round; " + t.describe({"eager": steps, "graph": steps}, "steps"),
        why="per step the graph still needs three small copies (batch rows, labels, records) "
            "and a Python loop iteration; the step's own kernels are the floor"))
