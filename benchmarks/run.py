"""`make bench`: every benchmark of issue 7, its target and a PASS/MISS mark.

    python -m benchmarks.run                 # full run on this machine's device; updates RESULTS.md
    python -m benchmarks.run --quick         # a smoke run (fewer rounds, smaller sizes); no write
    python -m benchmarks.run --only 1,5      # some benchmarks
    python -m benchmarks.run --device cpu    # the CPU figures on a machine that has a GPU

Each benchmark runs its variants interleaved (A, B, A, B, …) in this one process after a
warm-up round and reports the median of the per-round ratios (benchmarks/harness.py).
A full run writes its section of benchmarks/RESULTS.md (one for CPU, one for GPU figures),
leaving the other section and the hand-written notes as they are.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")

# (id, name, function path, devices)
BENCHMARKS = [
    ("1", "loop overhead", "benchmarks.bench_loop:loop_overhead", ("cpu", "cuda")),
    ("1", "context FLOP/s", "benchmarks.bench_loop:context_flops", ("cpu", "cuda")),
    ("2", "data path", "benchmarks.bench_loop:data_path", ("cpu", "cuda")),
    ("3", "recording", "benchmarks.bench_store:recording", ("cpu", "cuda")),
    ("3", "no sync per step", "benchmarks.run:no_sync_per_step", ("cuda",)),
    ("3", "store read", "benchmarks.bench_store:store_read", ("cpu",)),
    ("5", "packed trials", "benchmarks.bench_packed:packed_vs_separate", ("cpu", "cuda")),
    ("5", "packed TF32 FLOP/s", "benchmarks.bench_packed:packed_flops", ("cuda",)),
    ("6", "CUDA graph step", "benchmarks.bench_packed:cuda_graph_step", ("cuda",)),
    ("7", "evaluation cost", "benchmarks.bench_eval:evaluation_cost", ("cpu", "cuda")),
    ("4", "Tune overhead", "benchmarks.bench_tune:tune_overhead", ("cpu",)),  # last: starts Ray
]

# What a GPU-only target shows on a machine without one.
GPU_ONLY = [
    ("1 loop overhead", "psplab loop ÷ bare loop, steps/s, width 128 (GPU)", 0.90, True, "{:.3f}"),
    ("3 recording", "host–device syncs per training step (GPU)", 0, False, "{:.0f}"),
    ("5 packed trials", "packed ÷ separate, model-steps/s, width ≤ 512, P = 32 (GPU)", 10.0, True,
     "{:.3f}"),
    ("5 packed trials", "achieved TF32 FLOP/s ÷ dense peak, width 2048, P = 32 (GPU)", 0.30, True,
     "{:.1%}"),
    ("6 GPU step", "CUDA graph ÷ eager, steps/s, one width-128 trial (GPU)", 3.0, True, "{:.3f}"),
]


def no_sync_per_step(report, *, quick: bool, device: str) -> None:
    """3. No host–device sync in a training step, for the loop and for a pack."""
    from benchmarks.common import count_step_syncs
    from benchmarks.harness import Check
    from trainables.config import TrialConfig
    from trainables.loop import train
    from trainables.packed import train_packed

    cfg = TrialConfig(psp="binary", units=128, tasks=2, steps_per_task=100, eval_every=50,
                      device=device)
    checked, syncs = count_step_syncs(cfg, lambda: train(cfg, lambda t, r: None))
    cfgs = [cfg.model_copy(update={"seed": s}) for s in range(4)]
    checked_p, syncs_p = count_step_syncs(cfg, lambda: train_packed(cfgs, [lambda t, r: None] * 4))
    report.add(Check("3 recording", "host–device syncs per training step (GPU)",
                     float(syncs + syncs_p), 0, False, fmt="{:.0f}",
                     detail=f"sync debug mode 'error' over {checked} loop steps and {checked_p} "
                            f"packed steps (evaluation steps excepted)"))


def _resolve(path: str):
    module, name = path.split(":")
    __import__(module)
    return getattr(sys.modules[module], name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    parser.add_argument("--only", default=None, help="comma-separated benchmark ids, e.g. 1,5")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available (GPU figures), else cpu")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", dest="write", action="store_true", default=None,
                       help="update RESULTS.md (default for a full run)")
    write.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.harness import Check, CpuShare, Report, environment, load_average

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    only = set(args.only.split(",")) if args.only else None
    write = args.write if args.write is not None else (not args.quick and only is None)

    started = time.perf_counter()
    share = CpuShare()
    load_before = load_average()
    env = environment()
    print(f"psplab benchmarks on {device}: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"load average before: {load_before}", flush=True)
    report = Report()
    threads = torch.get_num_threads()
    for bench_id, name, path, devices in BENCHMARKS:
        if only is not None and bench_id not in only:
            continue
        if device not in devices:
            continue
        print(f"\n[{bench_id}] {name}", flush=True)
        clock = time.perf_counter()
        try:
            _resolve(path)(report, quick=args.quick, device=device)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            report.add(Check(f"{bench_id} {name}", f"{name}: failed to run", None, 0, True,
                             skipped=f"error: {type(exc).__name__}: {exc}"[:200]))
        finally:
            torch.set_num_threads(threads)  # trainings set their own thread counts
        print(f"  ({time.perf_counter() - clock:.0f} s)", flush=True)
    if device == "cpu":
        for benchmark, metric, target, higher, fmt in GPU_ONLY:
            if only is None or benchmark.split()[0] in only:
                report.add(Check(benchmark, metric, None, target, higher, fmt=fmt,
                                 skipped="needs a GPU; none here"))
    elapsed = time.perf_counter() - started
    load_after = load_average()
    others = share.others()
    print("\n" + report.table())
    print(f"\n{elapsed / 60:.1f} min; load average before {load_before}, after {load_after}; "
          f"other work used {'?' if others is None else f'{others:.2f}'} cores on average")
    if write:
        section = render(report, env, device, elapsed, load_before, load_after, others, args.quick)
        update_results(device, section)
        print(f"wrote the {device} section of {RESULTS}")
    return 0


def render(report, env: dict[str, str], device: str, elapsed: float, load_before: str,
           load_after: str, others: float | None, quick: bool) -> str:
    cores = os.cpu_count() or 0
    if others is None:
        sharing = "."
    elif others > 0.25:
        sharing = (f". The machine was shared: other processes used {others:.2f} of its {cores} "
                   f"cores on average during the run (an upper bound: Ray's own daemons count "
                   f"as other), so absolute rates are noisy; the interleaved ratios less so.")
    else:
        sharing = (f". Other processes used {others:.2f} of the {cores} cores on average during "
                   f"the run (the load average includes the benchmarks' own 2 threads).")
    lines = [
        f"Run {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on "
        + (env.get("gpu", "?") if device == "cuda" else env["cpu"])
        + f" — `python -m benchmarks.run{' --quick' if quick else ''}`, {elapsed / 60:.1f} min.",
        "",
        "Environment: " + "; ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}" + sharing,
        "",
        report.markdown(),
        "",
        "Details (times are per round; ratios are medians of per-round ratios):",
        "",
    ]
    for check in report.checks:
        if check.detail:
            lines.append(f"- {check.benchmark}, {check.metric}: {check.detail}")
    misses = [c for c in report.checks if c.passed is False]
    lines += ["", "Missed targets:" if misses else "Every measured target was met.", ""]
    for check in misses:
        lines.append(f"- {check.benchmark}, {check.metric}: {check.value_text} against "
                     f"{check.target_text}, {check.shortfall()}. Why: {check.why or 'see notes'}.")
    return "\n".join(lines).rstrip() + "\n"


def update_results(device: str, section: str) -> None:
    kind = "gpu" if device == "cuda" else "cpu"
    begin, end = f"<!-- results:{kind} -->", f"<!-- /results:{kind} -->"
    text = RESULTS.read_text() if RESULTS.exists() else _skeleton()
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## {kind.upper()} figures\n\n{block}\n"
    RESULTS.write_text(text)


def _skeleton() -> str:
    return ("# Benchmark results (issue 7)\n\n`make bench` = `python -m benchmarks.run` writes the "
            "sections between the markers; the notes are written by hand.\n\n"
            "## CPU figures\n\n<!-- results:cpu -->\n(not run yet)\n<!-- /results:cpu -->\n\n"
            "## GPU figures\n\n<!-- results:gpu -->\n(not run yet on a GPU)\n<!-- /results:gpu -->\n")


if __name__ == "__main__":
    sys.exit(main())
