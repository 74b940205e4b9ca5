"""Helpers shared by the benchmarks: timing one task of a real training run, a bare loop."""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trainables import schema
from trainables.config import TrialConfig
from trainables.contexts import make_context
from trainables.data import load_dataset
from trainables.loop import batch_indices, resolve_device, train
from trainables.streams import build_stream


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def recording_sink(cfg: TrialConfig, marks: list[float] | None = None, tables: list | None = None):
    """A sink that does what the orchestrator's does short of the file: the rows become an
    Arrow table (schema.steps_table). ``marks`` gets the time each call ends."""
    params = cfg.identity()

    def sink(task: int, rows: list[dict]) -> None:
        table = schema.steps_table(rows, params, sweep="bench", trial_id="t", attempt=0)
        if tables is not None:
            tables.append(table)
        if marks is not None:
            marks.append(time.perf_counter())

    return sink


def second_task_seconds(cfg: TrialConfig) -> float:
    """Wall time of the second task of ``train(cfg)`` (tasks must be ≥ 2): from the end of
    task 0's sink call to the end of task 1's, so set-up (model, data, contexts) is left out
    and the loop's whole per-task cost (permutation, steps, evaluation, rows) is in."""
    marks: list[float] = []
    train(cfg, recording_sink(cfg, marks))
    return marks[1] - marks[0]


def second_task_seconds_packed(cfgs: Sequence[TrialConfig], **kwargs) -> float:
    """As second_task_seconds, for a pack: the end of the last member's sink call per task."""
    from trainables.packed import train_packed

    marks: list[list[float]] = [[] for _ in cfgs]
    train_packed(cfgs, [recording_sink(c, m) for c, m in zip(cfgs, marks)], **kwargs)
    return marks[-1][1] - marks[-1][0]


class BareLoop:
    """The same network, data and optimizer as psplab's binary MLP, as a plain PyTorch loop:
    x ⊙ c → linear → ReLU … → cross-entropy → RMSprop. No records, no evaluation.

    The data are one task's permuted training images, prepared once; batches are the
    trial's own batch indices.
    """

    def __init__(self, cfg: TrialConfig, task: int = 1):
        self.device = resolve_device(cfg.device)
        dataset = load_dataset(cfg.dataset, cfg.data_dir).to(self.device)
        stream = build_stream(cfg, dataset)
        self.x, self.y = stream.train_set(task)
        self.indices = batch_indices(cfg, task, len(self.y), self.device)
        widths = [stream.in_features] + [cfg.units] * cfg.depth + [cfg.output_units]
        g = torch.Generator().manual_seed(cfg.seed)
        self.weights = [(torch.randn(o, i, generator=g) * (2 / (i + o)) ** 0.5).to(self.device)
                        .requires_grad_() for i, o in zip(widths[:-1], widths[1:])]
        self.contexts = [make_context("binary", cfg.seed, layer, task, i).to(self.device)
                         for layer, i in enumerate(widths[:-1])]
        self.optimizer = torch.optim.RMSprop(self.weights, lr=cfg.lr)
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (w, c) in enumerate(zip(self.weights, self.contexts)):
            if i:
                h = F.relu(h)
            h = F.linear(h * c, w)
        return h

    def capture_only(self, steps: int) -> float:
        """Seconds for the loop's per-step capture alone, ``steps`` times, on a real step's
        logits and loss: losses[i] = loss.detach(); correct[i] = (argmax == y).sum();
        contexts.append(context) — what trainables.loop.train adds to a bare step."""
        index = self.indices[0]
        xb, yb = self.x[index], self.y[index]
        logits = self.forward(xb)
        loss = F.cross_entropy(logits, yb)
        losses = torch.empty(steps, device=self.device)
        correct = torch.empty(steps, device=self.device)
        contexts = []
        sync(self.device)
        start = time.perf_counter()
        for i in range(steps):
            losses[i] = loss.detach()
            correct[i] = (logits.argmax(1) == yb).sum()
            contexts.append(1)
        sync(self.device)
        return time.perf_counter() - start

    def run(self, steps: int, *, capture: bool = False, sample_only: bool = False) -> float:
        """Seconds for ``steps`` updates. ``capture``: also keep per-step loss and accuracy on
        the device as the loop does. ``sample_only``: only draw the batches."""
        n = self.indices.shape[0]
        losses = torch.empty(steps, device=self.device)
        correct = torch.empty(steps, device=self.device)
        contexts = []
        sync(self.device)
        start = time.perf_counter()
        for i in range(steps):
            index = self.indices[i % n]
            xb, yb = self.x[index], self.y[index]
            if sample_only:
                continue
            logits = self.forward(xb)
            loss = F.cross_entropy(logits, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if capture:
                losses[i] = loss.detach()
                correct[i] = (logits.argmax(1) == yb).sum()
                contexts.append(1)
        if capture:
            losses.tolist(), correct.tolist()
        sync(self.device)
        return time.perf_counter() - start


def fmt_rate(seconds: float, work: float, unit: str) -> str:
    return f"{work / seconds:,.1f} {unit}/s"


def count_step_syncs(cfg: TrialConfig, run) -> tuple[int, int]:
    """Run ``run()`` (a training call for ``cfg``) with CUDA's sync debug mode set to 'error'
    during training steps only: evaluation steps and task set-up may sync (they do, once per
    evaluation). Returns (steps checked, syncs found: 0 or 1, the first one raises).

    How: the loop asks ``loop.tasks_to_evaluate`` after every step; a wrapper turns the mode
    off when the answer is 'evaluate now' (the evaluation that follows syncs on purpose) and
    back to 'error' otherwise, so every following step runs under 'error'.
    """
    from unittest import mock

    from trainables import loop

    original = loop.tasks_to_evaluate
    checked = [0]

    def watch(cfg_, step, task):
        due = original(cfg_, step, task)
        last_of_task = step % cfg_.steps_per_task == 0
        torch.cuda.set_sync_debug_mode("default" if due or last_of_task else "error")
        checked[0] += 0 if due or last_of_task else 1
        return due

    try:
        with mock.patch.object(loop, "tasks_to_evaluate", watch):
            run()
    except RuntimeError as exc:
        if "synchroniz" in str(exc).lower():
            return checked[0], 1
        raise
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return checked[0], 0
