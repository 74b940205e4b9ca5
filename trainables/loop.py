"""The training loop: one function, read top to bottom. Pure torch — no Ray, no argv, no globals.

    summary = train(TrialConfig(psp="binary", units=256, tasks=5), sink=lambda task, rows: ...)

Tasks arrive one after another (a new one every ``steps_per_task`` updates). The context follows
the task, or a schedule of its own (``context_at``); on a rotating stream, whose data has no task
boundary, tasks are only chunks of steps for measuring and checkpointing. Measurements leave
through ``sink(task, rows)``, called once per task with that task's rows (schema:
trainables.schema.MEASUREMENT_FIELDS), so tests collect them in a list and the orchestrator
writes one Parquet chunk per call. ``on_task_end(task, state)`` is called after
the sink, with everything needed to resume at the next task boundary.

Optional parts, one or two lines each in ``train``: an EWC or SI penalty (trainables.penalties)
added to the optimised objective — the rows record the task loss; and a model method
``extra_eval_rows(x_test, y_test, eval_task, step, task) -> rows`` called at every evaluation
(SupSup's task-inference rows).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from trainables.config import ROTATION_PERIOD, TrialConfig
from trainables.contexts import generator, local_mix_context
from trainables.data import DataError, load_dataset
from trainables.layers import use_context_function
from trainables.models import build_model
from trainables.penalties import FISHER_EXAMPLES, build_penalty
from trainables.streams import build_stream

Sink = Callable[[int, list[dict]], None]
EVAL_BATCH = 2000


@dataclass(frozen=True)
class TrialSummary:
    status: str                  # completed | diverged
    steps_done: int
    tasks_done: int
    device: str
    diverged_at_step: int | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(cfg: TrialConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr)


def batch_indices(cfg: TrialConfig, task: int, n_examples: int, device: torch.device) -> torch.Tensor:
    """Every batch of a task drawn up front from (seed, task): (steps_per_task, batch_size).

    Tied to the task, not to a running RNG, so a trial resumed at a task boundary draws the same
    batches it would have drawn without the interruption. A batch larger than the task's
    training split is refused: drawn with replacement, it would repeat examples in every batch
    (and crawl, at seconds a step), which is never what was meant.
    """
    if cfg.batch_size > n_examples:
        raise DataError(f"batch_size {cfg.batch_size}: larger than the {n_examples} training "
                        f"examples of task {task} ({cfg.dataset}); use at most {n_examples}")
    g = generator(cfg.seed, "batches", task)
    return torch.randint(n_examples, (cfg.steps_per_task, cfg.batch_size), generator=g).to(device)


def context_at(cfg: TrialConfig, step: int, task: int) -> int:
    """The context index in use at update ``step`` (1-based) while training ``task``.

    task:  the task's own context.
    cycle, local_mix:  key ((step mod P) // context_every) mod n_contexts, P = ROTATION_PERIOD:
           a new context every context_every steps, the same ones in every rotation (the
           paper: every 100 steps, 10 per 1000-step rotation). The reference code's time,
           ``t % cheat_period / time_slow``, with t the step whose batch is rotated by 2π·t/P:
           the 0° batch (step P·k) starts key 0. local_mix differs only in how the layers
           make context k (see local_mix_context); with context_every 1 it is pspFastLocalMix.
    fast:  step mod P mod n_contexts, a new context every step (pspFast; = cycle with
           context_every 1).
    """
    if cfg.context_schedule == "task":
        return task
    every = 1 if cfg.context_schedule == "fast" else cfg.context_every
    return (step % ROTATION_PERIOD) // every % cfg.n_contexts


def eval_context(cfg: TrialConfig, eval_task: int) -> int:
    """The context used to test ``eval_task``: its own under the task schedule; otherwise the
    context in use at the task's last step. On a rotating stream whose tasks are whole rotation
    periods that is the context of the 0° images — the angle the test set is shown at (key 0,
    the reference's test context)."""
    if cfg.context_schedule == "task":
        return eval_task
    return context_at(cfg, (eval_task + 1) * cfg.steps_per_task, eval_task)


def contexts_needed(cfg: TrialConfig) -> int:
    """How many contexts the model holds (learned contexts, heads, masks): one per task under
    the task schedule, n_contexts under the others."""
    return cfg.tasks if cfg.context_schedule == "task" else cfg.n_contexts


def tasks_to_evaluate(cfg: TrialConfig, step: int, task: int) -> list[int]:
    """Which tasks to test after update ``step``: task 0 and the current one every eval_every
    steps (the retention curve); every task seen so far at task boundaries (the accuracy matrix)
    and every eval_all_every steps."""
    chosen: set[int] = set()
    if cfg.eval_every and step % cfg.eval_every == 0:
        chosen.update({0, task})
    at_boundary = step % cfg.steps_per_task == 0
    if at_boundary or (cfg.eval_all_every and step % cfg.eval_all_every == 0):
        chosen.update(range(task + 1))
    return sorted(chosen)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, context: int) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole test split, in large batches."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH], context)  # (b, classes)
        target = y[start:start + EVAL_BATCH]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return (loss_sum / len(y)).item(), (correct / len(y)).item()


def train(cfg: TrialConfig, sink: Sink, *, resume: dict[str, Any] | None = None,
          on_task_end: Callable[[int, dict[str, Any]], None] | None = None,
          progress: bool = False) -> TrialSummary:
    if cfg.cuda_graph:  # the graphed step lives in the packed trainer: a pack of one
        from trainables.packed import train_packed

        (summary,) = train_packed([cfg], [sink], resumes=[resume], on_task_end=on_task_end,
                                  progress=progress, cuda_graph=True)
        return summary
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # oversubscribed threads are the main CPU slowdown

    dataset = load_dataset(cfg.dataset, cfg.data_dir).to(device)
    stream = build_stream(cfg, dataset)
    model = build_model(cfg, stream.in_features, n_contexts=contexts_needed(cfg)).to(device)
    if cfg.context_schedule == "local_mix":  # context k mixes the phases of k−1, k, k+1
        use_context_function(model, partial(local_mix_context, n_contexts=cfg.n_contexts))
    optimizer = make_optimizer(cfg, model.parameters())
    first_task = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        first_task = resume["next_task"]
    penalty = build_penalty(cfg, model)  # EWC / SI, or None
    if penalty is not None and resume is not None:
        penalty.load_state_dict(resume["penalty"])

    spt, batch = cfg.steps_per_task, cfg.batch_size
    steps_done = first_task * spt
    for task in range(first_task, cfg.tasks):
        x_task, y_task = stream.train_set(task)  # (N, D) or images (N, C, H, W), (N,); on device
        indices = batch_indices(cfg, task, len(y_task), device)   # (spt, B)
        # Per-step measurements stay on the device until the task ends: no host sync per step.
        losses = torch.empty(spt, device=device)
        correct = torch.empty(spt, device=device)
        contexts: list[int] = []
        test_rows: list[dict] = []
        bar = _progress_bar(progress, task, cfg)

        for i in range(spt):
            step = task * spt + i + 1
            context = context_at(cfg, step, task)
            xb, yb = stream.batch(x_task, y_task, indices[i], step)  # (B, D), (B,)
            logits = model(xb, context)                               # (B, classes)
            loss = F.cross_entropy(logits, yb)                        # the task loss, recorded
            objective = loss if penalty is None else loss + penalty.penalty(model)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            if penalty is not None:
                penalty.after_step(model)                             # SI: path integral ω

            losses[i] = loss.detach()
            correct[i] = (logits.argmax(1) == yb).sum()
            contexts.append(context)
            if bar is not None:
                bar.update(1)

            due = tasks_to_evaluate(cfg, step, task)
            if due:
                if not torch.isfinite(losses[: i + 1]).all():
                    break  # diverged: stop evaluating a broken model; rows are cut below
                for eval_task in due:
                    x_test, y_test = stream.test_set(eval_task)
                    test_loss, accuracy = evaluate(model, x_test, y_test, eval_context(cfg, eval_task))
                    test_rows.append(_test_row(step, task, context, eval_task, test_loss,
                                               accuracy, len(y_test)))
                    if hasattr(model, "extra_eval_rows"):  # e.g. SupSup's task inference
                        test_rows += model.extra_eval_rows(x_test, y_test, eval_task, step, task)
        if bar is not None:
            bar.close()

        train_rows = _train_rows(task * spt, task, contexts, losses[: len(contexts)],
                                 correct[: len(contexts)], batch)
        bad_step = _first_non_finite(train_rows)
        if bad_step is not None:
            rows = [r for r in train_rows if r["step"] <= bad_step]
            rows += [r for r in test_rows if r["step"] < bad_step]
            sink(task, rows)
            return TrialSummary("diverged", bad_step, task, str(device), diverged_at_step=bad_step)
        if penalty is not None:  # consolidate: EWC's Fisher from the task's last batches; SI's Ω
            last = indices[-math.ceil(FISHER_EXAMPLES / batch):].flatten()  # (k·B,): last k batches
            sample = stream.batch(x_task, y_task, last, step)                # as trained on
            penalty.end_task(model, sample, eval_context(cfg, task))
        sink(task, train_rows + test_rows)
        steps_done = (task + 1) * spt
        if on_task_end is not None:
            on_task_end(task, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "next_task": task + 1, "steps_done": steps_done,
                               "penalty": None if penalty is None else penalty.state_dict()})
    return TrialSummary("completed", steps_done, cfg.tasks, str(device))


def _train_rows(offset: int, task: int, contexts: list[int], losses: torch.Tensor,
                correct: torch.Tensor, batch: int) -> list[dict]:
    loss_values = losses.tolist()          # one device→host copy per task
    accuracy_values = (correct / batch).tolist()
    return [
        {"step": offset + i + 1, "task": task, "context": contexts[i], "split": "train",
         "eval_task": None, "loss": loss_values[i], "accuracy": accuracy_values[i],
         "n_examples": batch}
        for i in range(len(contexts))
    ]


def _test_row(step: int, task: int, context: int, eval_task: int, loss: float, accuracy: float,
              n_examples: int) -> dict:
    return {"step": step, "task": task, "context": context, "split": "test",
            "eval_task": eval_task, "loss": loss, "accuracy": accuracy, "n_examples": n_examples}


def _first_non_finite(train_rows: list[dict]) -> int | None:
    for row in train_rows:
        if not math.isfinite(row["loss"]):
            return row["step"]
    return None


def _progress_bar(enabled: bool, task: int, cfg: TrialConfig):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps_per_task, desc=f"task {task + 1}/{cfg.tasks}", unit="step",
                leave=False, mininterval=0.5)
