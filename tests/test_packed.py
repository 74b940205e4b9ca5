"""Packed trials (trainables.packed): P configs trained as one batched model give each member
exactly the rows, summary and resumable state it gets when trained alone — bit for bit on CPU."""
import copy
import math

import pytest
import torch

from trainables import loop
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.packed import check_packable, pack_groups, train_packed

TINY = dict(units=32, tasks=3, steps_per_task=40, eval_every=20, threads=1)


def cfg(**overrides) -> TrialConfig:
    return TrialConfig(**{**TINY, **overrides})


def alone(c: TrialConfig, **kwargs):
    chunks = []
    summary = train(c, lambda task, rows: chunks.append((task, rows)), **kwargs)
    return summary, chunks


def packed(cfgs, **kwargs):
    chunks = [[] for _ in cfgs]
    sinks = [lambda task, rows, mine=mine: mine.append((task, rows)) for mine in chunks]
    return train_packed(cfgs, sinks, **kwargs), chunks


def same(a, b) -> bool:
    """== on every value, except that NaN equals NaN (a diverged loss is NaN in both)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_packed_equals_alone(cfgs, **kwargs):
    summaries, chunks = packed(cfgs, **kwargs)
    for c, summary, mine in zip(cfgs, summaries, chunks):
        want_summary, want = alone(c)
        assert summary == want_summary, (c.psp, c.seed)
        assert [t for t, _ in mine] == [t for t, _ in want]  # one sink call per task, in order
        for (_, got_rows), (_, want_rows) in zip(mine, want):
            assert len(got_rows) == len(want_rows)
            for got, expected in zip(got_rows, want_rows):
                assert same(got, expected), (c.psp, c.seed, got, expected)
    return summaries, chunks


@pytest.mark.parametrize("psps", [
    ("binary", "binary", "binary"),
    ("none", "binary", "none"),          # a masked bias: 'none' members have one, binary ones not
    ("complex", "onepower", "complex"),
])
def test_packed_members_equal_their_runs_alone_bit_for_bit(psps):
    assert_packed_equals_alone([cfg(psp=p, seed=s) for s, p in zip((0, 1, 2), psps)])


def test_rotation_and_learned_contexts_pack_exactly():
    assert_packed_equals_alone([cfg(psp="rotation", units=16, seed=s, tasks=2) for s in (3, 4)])
    assert_packed_equals_alone([cfg(psp="binary", learn_context=True, seed=s, tasks=2)
                                for s in (5, 6)])


@pytest.mark.parametrize("schedule", ["cycle", "fast", "local_mix"])
def test_context_schedules_pack_exactly(schedule):
    # the context changes inside a task (every 10 steps, or every step), 4 contexts reused
    assert_packed_equals_alone([cfg(psp="complex", seed=s, tasks=2, context_schedule=schedule,
                                    context_every=10, n_contexts=4) for s in (1, 2)])


def test_members_with_one_seed_and_chunked_evaluation(monkeypatch):
    # Same seed: one copy of the data serves both. Chunks of 300 test images (uneven last
    # chunk), summed per chunk as loop.evaluate sums them.
    monkeypatch.setattr(loop, "EVAL_BATCH", 300)
    assert_packed_equals_alone([cfg(psp="binary", seed=7, tasks=2, test_examples=700),
                                cfg(psp="none", seed=7, tasks=2, test_examples=700),
                                cfg(psp="binary", seed=8, tasks=2, test_examples=700)])


def test_a_diverging_member_stops_alone_and_the_others_go_on():
    # lr 1 with SGD: seeds 3 and 5 diverge in task 2 (at steps 99 and 82), seed 4 does not
    cfgs = [cfg(psp="binary", optimizer="sgd", lr=1.0, seed=s) for s in (3, 5, 4)]
    summaries, _ = assert_packed_equals_alone(cfgs)
    assert [s.status for s in summaries] == ["diverged", "diverged", "completed"]
    assert summaries[0].diverged_at_step != summaries[1].diverged_at_step


def test_on_boundary_sees_every_member_once_per_task():
    """One call per task with each member's state while it trains and its summary once it has
    stopped: what a checkpoint of the whole pack needs."""
    cfgs = [cfg(psp="binary", optimizer="sgd", lr=1.0, seed=s) for s in (3, 5, 4)]
    calls = []
    summaries, _ = packed(cfgs, on_boundary=lambda task, outcomes: calls.append((task, outcomes)))
    assert [task for task, _ in calls] == [0, 1, 2]
    for task, outcomes in calls[:2]:
        assert [o["next_task"] for o in outcomes] == [task + 1] * 3
    last = calls[2][1]
    assert last[:2] == summaries[:2] and last[2]["steps_done"] == 120  # seeds 3, 5 diverged in task 2


def test_task_end_states_resume_alone_or_packed():
    cfgs = [cfg(psp="binary", seed=s, optimizer="adam") for s in (1, 2)]
    states = [{}, {}]
    hooks = [lambda task, state, mine=mine: mine.__setitem__(task, state) for mine in states]
    packed([c.model_copy(update={"tasks": 2}) for c in cfgs], on_task_end=hooks)
    for c, mine in zip(cfgs, states):
        assert sorted(mine) == [0, 1] and mine[1]["next_task"] == 2 and mine[1]["steps_done"] == 80
        _, straight = alone(c)
        # a pack's state, resumed by train() alone (which updates the state's tensors in place)
        _, resumed = alone(c, resume=copy.deepcopy(mine[1]))
        assert [t for t, _ in resumed] == [2] and same(resumed[0][1], straight[2][1])
    _, resumed = packed(cfgs, resumes=[states[0][1], states[1][1]])  # and by a pack
    for c, mine in zip(cfgs, resumed):
        assert same(mine, alone(c)[1][2:])


def test_refuses_configs_of_other_shapes_naming_the_field():
    with pytest.raises(ValueError, match="'units'"):
        check_packable([cfg(units=32), cfg(units=64)])
    with pytest.raises(ValueError, match="'psp'"):
        check_packable([cfg(psp="binary"), cfg(psp="complex")])
    with pytest.raises(ValueError, match="'psp'"):
        check_packable([cfg(psp="rotation"), cfg(psp="binary")])
    with pytest.raises(ValueError, match="'lr'"):
        check_packable([cfg(), cfg(lr=1e-3)])
    with pytest.raises(ValueError, match="'penalty'"):
        check_packable([cfg(penalty="ewc")])
    with pytest.raises(ValueError, match="sinks"):
        train_packed([cfg(), cfg(seed=1)], [lambda t, r: None])


def test_pack_groups_follow_the_spec_setting():
    cfgs = [cfg(seed=s) for s in range(5)] + [cfg(units=64, seed=0), cfg(psp="complex", seed=0)]
    assert pack_groups(cfgs, "off") == [[i] for i in range(7)]
    assert pack_groups(cfgs, 2) == [[0, 1], [2, 3], [4], [5], [6]]
    assert pack_groups(cfgs, "auto") == [[0, 1, 2, 3, 4], [5], [6]]  # CPU, width ≤ 1024: 8
    wide = [cfg(units=2048, seed=s) for s in range(3)]
    assert pack_groups(wide, "auto", device="cpu") == [[0], [1], [2]]  # compute-bound: no gain
    assert pack_groups(wide, "auto", device="cuda") == [[0, 1, 2]]     # the trials' device decides
    with pytest.raises(ValueError, match="pack"):
        pack_groups(cfgs, "sometimes")


def test_cuda_graph_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("tested on GPU in test_gpu.py")
    with pytest.raises(ValueError, match="CUDA"):
        train_packed([cfg(device="cpu")], [lambda t, r: None], cuda_graph=True)


def test_the_cuda_graph_forward_and_state_restore_work_on_cpu_tensors():
    """The pieces of the CUDA-graph step that do not need a GPU: the static-context forward
    equals the normal one for every family, and the warm-up's optimizer updates are undone."""
    from trainables.models import build_model
    from trainables.packed import PackedMLP, _restore_optimizer_state

    for psps in (("binary", "none"), ("complex", "onepower"), ("rotation", "rotation")):
        cfgs = [cfg(psp=p, seed=s, units=16) for s, p in enumerate(psps)]
        members = [build_model(c, 784, n_contexts=3) for c in cfgs]
        model = PackedMLP(members, torch.device("cpu"), exact=False)
        for layer in model.layers:
            layer.static = model.context(layer, 2).clone()
        x = torch.randn(2, 5, 784)
        torch.testing.assert_close(model.forward_static(x), model.forward(x[:, None], [2])[:, 0])

    params = [torch.nn.Parameter(torch.randn(3, 4))]
    optimizer = torch.optim.RMSprop(params, lr=0.1)
    params[0].grad = torch.ones(3, 4)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    before = params[0].detach().clone()
    optimizer.step()
    with torch.no_grad():
        params[0].copy_(before)
    _restore_optimizer_state(optimizer, saved)
    assert same(optimizer.state_dict()["state"][0]["square_avg"].tolist(),
                saved["state"][0]["square_avg"].tolist())
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
