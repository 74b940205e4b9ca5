"""The shared benchmark harness: interleaved rounds, medians of per-round ratios, pass/miss.

Why interleave: these machines are shared (other engineers' tests run beside the benchmarks),
so the speed of the machine drifts by tens of percent within a minute. Running variant A then
all of B would measure the drift. Running A, B, A, B … and taking the median of the per-round
ratios A_r / B_r compares each pair under nearly the same load, and the median discards the
rounds a burst of load hit.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Seconds per round of each variant (after the warm-up), in the order they ran."""
    seconds: dict[str, list[float]]

    def min(self, name: str) -> float:
        return min(self.seconds[name])

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """Per-round time ratios numerator_r / denominator_r. For a throughput ratio
        'B is x times as fast as A', pass (A, B)."""
        return [a / b for a, b in zip(self.seconds[numerator], self.seconds[denominator])]

    def ratio(self, numerator: str, denominator: str) -> float:
        """The median of the per-round ratios."""
        return statistics.median(self.ratios(numerator, denominator))

    def describe(self, unit_work: dict[str, float] | None = None, unit: str = "") -> str:
        parts = []
        for name, values in self.seconds.items():
            text = f"{name}: min {min(values) * 1e3:.1f} ms, median {statistics.median(values) * 1e3:.1f} ms"
            if unit_work and name in unit_work:
                text += f" ({unit_work[name] / statistics.median(values):,.0f} {unit}/s)"
            parts.append(text)
        return "; ".join(parts)


def interleave(variants: dict[str, Callable[[], float | None]], rounds: int = 5,
               warmup: int = 1) -> Timings:
    """Run every variant once per round, in the order given (A, B, A, B, …).

    A variant returns the seconds it wants counted (e.g. only the second task of a run, to
    leave set-up out) or None, in which case its whole call is timed. ``warmup`` rounds run
    first and are discarded (imports, caches, first-call kernel selection).
    """
    if rounds < 1:
        raise ValueError("at least one round")
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            counted = fn()
            seconds[name].append(counted if counted is not None else time.perf_counter() - start)
    return Timings(seconds)


@dataclass
class Check:
    """One measured figure against its target."""
    benchmark: str          # e.g. "1 loop overhead"
    metric: str             # what was measured, in words
    value: float | None     # None: not measured here (e.g. needs a GPU)
    target: float
    higher_is_better: bool
    detail: str = ""        # min/median times, sizes
    why: str = ""           # explanation printed when the target is missed
    fmt: str = "{:.3f}"
    skipped: str = ""       # why it was not measured

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "MISS", None: "SKIP"}[self.passed]

    @property
    def target_text(self) -> str:
        return ("≥ " if self.higher_is_better else "≤ ") + self.fmt.format(self.target)

    @property
    def value_text(self) -> str:
        return "—" if self.value is None else self.fmt.format(self.value)

    def shortfall(self) -> str:
        """How far a miss is from its target, in words."""
        if self.passed is not False:
            return ""
        if self.higher_is_better:
            return f"{(1 - self.value / self.target) * 100:.0f}% below the target"
        return f"{(self.value / self.target - 1) * 100:.0f}% above the target"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        print(f"  {check.mark}  {check.metric}: {check.value_text} (target {check.target_text})"
              + (f"  [{check.skipped}]" if check.skipped else ""), flush=True)
        if check.detail:
            print(f"        {check.detail}", flush=True)
        return check

    def table(self) -> str:
        rows = [("benchmark", "measured", "value", "target", "result")]
        for c in self.checks:
            rows.append((c.benchmark, c.metric, c.value_text, c.target_text,
                         c.mark if not c.skipped else f"SKIP ({c.skipped})"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| benchmark | measured | value | target | result |", "|---|---|---|---|---|"]
        for c in self.checks:
            result = f"**{c.mark}**" if c.passed is False else c.mark
            if c.skipped:
                result += f" ({c.skipped})"
            lines.append(f"| {c.benchmark} | {c.metric} | {c.value_text} | {c.target_text} | {result} |")
        return "\n".join(lines)


# ---- the environment -----------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The SIMD flags that decide CPU kernel speed (AVX2/FMA, AVX-512, AMX)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = [f for f in flags if f.startswith(("avx", "fma", "amx", "f16c"))]
                    return " ".join(sorted(keep))
    except OSError:
        pass
    return "?"


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "?"


class CpuShare:
    """How much CPU other work used while the benchmarks ran, in cores on average.

    System-wide busy time (/proc/stat) minus this process's own and its reaped children's
    (os.times). An upper bound: Ray's daemons and workers, started for benchmark 4, count as
    'other' unless reaped.
    """

    def __init__(self) -> None:
        self.start = (self._busy(), self._own(), time.perf_counter())

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as handle:
                fields = [float(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others(self) -> float | None:
        busy0, own0, wall0 = self.start
        busy1 = self._busy()
        if busy0 is None or busy1 is None:
            return None
        wall = time.perf_counter() - wall0
        return max(0.0, ((busy1 - busy0) - (self._own() - own0)) / wall)


def environment() -> dict[str, str]:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu flags": cpu_flags(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch cpu capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    else:
        env["gpu"] = "none"
    try:
        from importlib.metadata import version

        env["ray"] = version("ray")  # not imported: importing Ray costs ~1.5 s
    except Exception:  # noqa: BLE001 - optional
        pass
    return env
