"""Context schedules (PSP §4.1.3): task, cycle, fast (pspFast) and local_mix (pspFastLocalMix)."""
import math
from functools import partial

import pytest
import torch
from pydantic import ValidationError

from trainables.config import ROTATION_PERIOD, TrialConfig
from trainables.contexts import complex_context, complex_phase, local_mix_context
from trainables.layers import SuperposedLinear, use_context_function
from trainables.loop import context_at, contexts_needed, eval_context


def contexts(cfg, steps):
    spt = cfg.steps_per_task
    return [context_at(cfg, step, (step - 1) // spt) for step in range(1, steps + 1)]


def runs(sequence):
    """[(value, run length)] of consecutive equal values."""
    out = []
    for value in sequence:
        if out and out[-1][0] == value:
            out[-1][1] += 1
        else:
            out.append([value, 1])
    return [tuple(run) for run in out]


def test_task_schedule_is_the_task():
    cfg = TrialConfig(tasks=3, steps_per_task=50, eval_every=0)
    assert contexts(cfg, 150) == [0] * 50 + [1] * 50 + [2] * 50
    assert [eval_context(cfg, k) for k in range(3)] == [0, 1, 2]
    assert contexts_needed(cfg) == 3


def test_cycle_uses_exactly_n_contexts_in_order_and_reuses_them_each_rotation():
    cfg = TrialConfig(context_schedule="cycle", tasks=3, steps_per_task=1000)
    assert (cfg.context_every, cfg.n_contexts) == (100, 10)  # the paper's schedule, by default
    seq = contexts(cfg, 3000)
    assert runs(seq) == [(k, 100) for k in range(10)] * 3  # 0..9, 100 steps each, every cycle
    assert contexts_needed(cfg) == 10
    # tested with the context of the task's last steps: those of the 0° images (step 1000·k)
    assert [eval_context(cfg, k) for k in range(3)] == [9, 9, 9]
    other = TrialConfig(context_schedule="cycle", context_every=7, n_contexts=3, steps_per_task=10,
                        eval_every=0)
    assert contexts(other, 30) == [0] * 7 + [1] * 7 + [2] * 7 + [0] * 7 + [1] * 2


def test_fast_takes_a_new_context_every_step_and_wraps():
    cfg = TrialConfig(context_schedule="fast", psp="complex", tasks=2, steps_per_task=1000)
    assert cfg.n_contexts == ROTATION_PERIOD == 1000
    assert contexts(cfg, 2500) == list(range(1000)) * 2 + list(range(500))
    small = TrialConfig(context_schedule="fast", n_contexts=4, steps_per_task=5, eval_every=0)
    assert contexts(small, 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert [eval_context(small, k) for k in range(2)] == [0, 1]  # contexts of steps 5 and 10
    assert contexts_needed(small) == 4


def test_local_mix_indexes_like_fast():
    cfg = TrialConfig(context_schedule="local_mix", psp="complex", steps_per_task=1000)
    fast = cfg.model_copy(update={"context_schedule": "fast"})
    assert contexts(cfg, 1500) == contexts(fast, 1500)


def test_local_mix_phase_is_the_mean_of_the_neighbours_phases_by_hand():
    n, dim, seed, layer = 5, 3, 11, 2
    phases = [complex_phase(seed, layer, k, dim).tolist() for k in range(n)]
    for index in range(n):
        c = local_mix_context("complex", seed, layer, index, dim, n)
        left, mid, right = phases[(index - 1) % n], phases[index], phases[(index + 1) % n]
        for j in range(dim):
            expected = (left[j] + mid[j] + right[j]) / 3
            assert c[j].angle().item() == pytest.approx(expected, abs=1e-6)
            assert c[j].abs().item() == pytest.approx(1.0, abs=1e-6)
    # the cycle wraps: context 0 mixes n−1, 0, 1
    wrapped = local_mix_context("complex", seed, layer, 0, dim, n).angle()
    expected = (torch.tensor(phases[n - 1]) + torch.tensor(phases[0]) + torch.tensor(phases[1])) / 3
    assert torch.allclose(wrapped, expected, atol=1e-6)
    # phases are those of pspComplex's own contexts
    assert torch.allclose(complex_context(seed, layer, 3, dim).angle(), torch.tensor(phases[3]),
                          atol=1e-6)


def test_local_mix_needs_complex_contexts():
    with pytest.raises(ValueError, match="complex"):
        local_mix_context("binary", 0, 0, 0, 4, 10)
    with pytest.raises(ValidationError, match="local_mix"):
        TrialConfig(context_schedule="local_mix", psp="binary")
    with pytest.raises(ValidationError, match="local_mix"):
        TrialConfig(context_schedule="local_mix", psp="complex", learn_context=True)


def test_layers_generate_local_mix_contexts_when_told():
    layer = SuperposedLinear(6, 3, psp="complex", seed=4, layer=1, bias=False)
    assert torch.equal(layer.contexts(2), complex_context(4, 1, 2, 6))
    use_context_function(layer, partial(local_mix_context, n_contexts=10))
    assert torch.equal(layer.contexts(2), local_mix_context("complex", 4, 1, 2, 6, 10))
    assert torch.equal(layer.contexts(0), local_mix_context("complex", 4, 1, 0, 6, 10))
    learned = SuperposedLinear(6, 3, psp="complex", seed=4, layer=1, learn_context=True,
                               n_contexts=2)
    with pytest.raises(ValueError, match="learned"):
        use_context_function(learned, partial(local_mix_context, n_contexts=10))


def test_default_n_contexts_follow_the_schedule_and_round_trip():
    assert TrialConfig().n_contexts == 10
    assert TrialConfig(context_schedule="cycle", context_every=50).n_contexts == 20
    assert TrialConfig(context_schedule="fast").n_contexts == 1000
    assert TrialConfig(context_schedule="fast", n_contexts=7).n_contexts == 7
    for cfg in (TrialConfig(context_schedule="cycle", context_every=250),
                TrialConfig(context_schedule="local_mix", psp="complex")):
        assert TrialConfig(**cfg.model_dump()) == cfg


def test_learned_contexts_get_one_per_scheduled_context():
    from trainables.models import build_model

    cfg = TrialConfig(psp="complex", learn_context=True, context_schedule="cycle", units=4,
                      tasks=2)
    model = build_model(cfg, 8, n_contexts=contexts_needed(cfg))
    assert model.layers[0].contexts.learned.shape[0] == 10
    assert math.prod(model.layers[0].contexts(9).shape) == 8
