"""GPU-only checks (skipped without CUDA): no host–device sync inside a training step, and
packed trials / CUDA-graph replay agreeing with the plain loop to rounding.

On a GPU, bmm and mm are different kernels, so packed results are not bit-identical to
unpacked ones there (on CPU they are: tests/test_packed.py); they agree to float32 rounding.
"""
from unittest import mock

import pytest
import torch

from trainables import loop
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.packed import train_packed

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = dict(units=64, tasks=3, steps_per_task=40, eval_every=20, device="cuda")


def cfg(**overrides) -> TrialConfig:
    return TrialConfig(**{**TINY, **overrides})


def run_without_step_syncs(run) -> int:
    """Run ``run()`` with CUDA's sync debug mode 'error' during training steps; evaluation
    steps (and the task set-up after a boundary, which is always an evaluation step) may sync.
    The loop asks loop.tasks_to_evaluate after every step: the mode for the next step is set
    there. Returns how many steps ran under 'error'; a sync raises RuntimeError."""
    original = loop.tasks_to_evaluate
    checked = [0]

    def watch(cfg_, step, task):
        due = original(cfg_, step, task)
        torch.cuda.set_sync_debug_mode("default" if due else "error")
        checked[0] += 0 if due else 1
        return due

    try:
        with mock.patch.object(loop, "tasks_to_evaluate", watch):
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return checked[0]


def test_the_loop_never_syncs_inside_a_training_step():
    c = cfg(psp="binary")
    checked = run_without_step_syncs(lambda: train(c, lambda task, rows: None))
    assert checked >= 100


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_a_pack_never_syncs_inside_a_training_step(cuda_graph):
    cfgs = [cfg(psp="binary", seed=s) for s in range(3)]
    checked = run_without_step_syncs(
        lambda: train_packed(cfgs, [lambda task, rows: None] * 3, cuda_graph=cuda_graph))
    assert checked >= 100


def collect(run_fn, n):
    chunks = [[] for _ in range(n)]
    summaries = run_fn([lambda task, rows, mine=mine: mine.extend(rows) for mine in chunks])
    return summaries, chunks


def assert_close_rows(got, want):
    assert [(r["step"], r["split"], r["eval_task"]) for r in got] == \
        [(r["step"], r["split"], r["eval_task"]) for r in want]
    got_loss = torch.tensor([r["loss"] for r in got])
    want_loss = torch.tensor([r["loss"] for r in want])
    torch.testing.assert_close(got_loss, want_loss, rtol=2e-3, atol=2e-4)
    accuracy_gap = max(abs(a["accuracy"] - b["accuracy"]) for a, b in zip(got, want))
    assert accuracy_gap <= 0.03  # a few of 128 (or 1000) predictions may flip near a tie


@pytest.mark.parametrize("psps", [("binary", "none", "binary"), ("complex", "onepower"),
                                  ("rotation", "rotation")])
def test_packed_members_match_their_runs_alone_on_gpu(psps):
    cfgs = [cfg(psp=p, seed=s) for s, p in enumerate(psps)]
    summaries, chunks = collect(lambda sinks: train_packed(cfgs, sinks), len(cfgs))
    for c, summary, got in zip(cfgs, summaries, chunks):
        want = []
        want_summary = train(c, lambda task, rows: want.extend(rows))
        assert summary.status == want_summary.status == "completed"
        assert_close_rows(got, want)


def test_cuda_graph_replay_matches_the_eager_loop():
    c = cfg(psp="binary", seed=4)
    want = []
    train(c, lambda task, rows: want.extend(rows))
    (summary,), (got,) = collect(lambda sinks: train_packed([c], sinks, cuda_graph=True), 1)
    assert summary.status == "completed"
    assert_close_rows(got, want)


def test_cuda_graph_is_a_trial_option():
    """`cuda_graph: true` in a trial's config (a sweep's `fixed:`, `psp run --cuda-graph`)
    sends `train` through the graphed step: the same rows, to rounding."""
    c = cfg(psp="complex", seed=5)
    want, got = [], []
    train(c, lambda task, rows: want.extend(rows))
    summary = train(c.model_copy(update={"cuda_graph": True}), lambda task, rows: got.extend(rows))
    assert summary.status == "completed"
    assert_close_rows(got, want)


def test_cuda_graph_pack_resumes_from_task_states():
    cfgs = [cfg(psp="binary", seed=s) for s in (1, 2)]
    states = [{}, {}]
    hooks = [lambda task, state, mine=mine: mine.__setitem__(task, state) for mine in states]
    train_packed([c.model_copy(update={"tasks": 2}) for c in cfgs], [lambda t, r: None] * 2,
                 on_task_end=hooks, cuda_graph=True)
    resumed = [[], []]
    train_packed(cfgs, [lambda t, r, mine=mine: mine.extend(r) for mine in resumed],
                 resumes=[states[0][1], states[1][1]], cuda_graph=True)
    for c, got in zip(cfgs, resumed):
        want = []
        train(c, lambda task, rows: want.extend(rows))
        assert_close_rows(got, [r for r in want if r["task"] == 2])
