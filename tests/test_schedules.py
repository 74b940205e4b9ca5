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


def test_cycle_follows_the_rotation_angle_and_reuses_its_contexts_each_rotation():
    cfg = TrialConfig(context_schedule="cycle", tasks=3, steps_per_task=1000)
    assert (cfg.context_every, cfg.n_contexts) == (100, 10)  # the paper's schedule, by default
    seq = contexts(cfg, 3000)
    # step s's batch is rotated by 360·s/1000 degrees; the reference's key is
    # int((s mod 1000)/100): key 0 for 0°-36°, key 1 for 36°-72°, ... The 0° batch (step
    # 1000, 2000, ...) starts key 0.
    rotation = [(1, 100)] + [(k, 100) for k in range(2, 10)]
    assert runs(seq) == [(0, 99)] + rotation + ([(0, 100)] + rotation) * 2 + [(0, 1)]
    for step in range(1, 3001):
        degrees = 360 * (step % 1000) / 1000
        assert seq[step - 1] == int(degrees // 36), step
    assert contexts_needed(cfg) == 10
    # tested with the context of the task's last step, the 0° batch: key 0, the reference's
    # test context (test_time 0)
    assert [eval_context(cfg, k) for k in range(3)] == [0, 0, 0]
    other = TrialConfig(context_schedule="cycle", context_every=7, n_contexts=3, steps_per_task=10,
                        eval_every=0)
    assert contexts(other, 30) == [0] * 6 + [1] * 7 + [2] * 7 + [0] * 7 + [1] * 3


def test_fast_takes_a_new_context_every_step_and_wraps():
    cfg = TrialConfig(context_schedule="fast", psp="complex", tasks=2, steps_per_task=1000)
    assert cfg.n_contexts == ROTATION_PERIOD == 1000
    one_rotation = list(range(1, 1000)) + [0]  # steps 1..1000: keys 1..999, then 0 at 0°
    assert contexts(cfg, 2500) == one_rotation * 2 + list(range(1, 501))
    small = TrialConfig(context_schedule="fast", n_contexts=4, steps_per_task=5, eval_every=0)
    assert contexts(small, 10) == [1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert [eval_context(small, k) for k in range(2)] == [1, 2]  # contexts of steps 5 and 10
    assert contexts_needed(small) == 4
    cycle_1 = TrialConfig(context_schedule="cycle", context_every=1, tasks=2, steps_per_task=1000)
    assert cycle_1.n_contexts == 1000 and contexts(cycle_1, 2500) == contexts(cfg, 2500)


def test_local_mix_changes_context_every_context_every_steps():
    """pspLocalMix (Figure 5 right) mixes at the 100-step granularity; context_every 1 is
    pspFastLocalMix."""
    cfg = TrialConfig(context_schedule="local_mix", psp="complex", steps_per_task=1000)
    assert (cfg.context_every, cfg.n_contexts) == (100, 10)
    cycle = cfg.model_copy(update={"context_schedule": "cycle"})
    assert contexts(cfg, 1500) == contexts(cycle, 1500)
    assert runs(contexts(cfg, 1000))[:3] == [(0, 99), (1, 100), (2, 100)]
    per_step = TrialConfig(context_schedule="local_mix", psp="complex", context_every=1,
                           steps_per_task=1000)
    fast = TrialConfig(context_schedule="fast", psp="complex", steps_per_task=1000)
    assert per_step.n_contexts == 1000 and contexts(per_step, 1500) == contexts(fast, 1500)


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


def test_local_mix_wraps_around_the_key_bank_by_hand():
    """The reference's bank holds 50 keys for 10 contexts: context 0 mixes key 49, not 9."""
    dim, seed, layer = 4, 3, 1
    phase = {k: complex_phase(seed, layer, k, dim) for k in (0, 1, 4, 5, 6, 9, 49)}
    for bank, left in ((10, 9), (50, 49)):
        expected = (phase[left] + phase[0] + phase[1]) / 3
        got = local_mix_context("complex", seed, layer, 0, dim, bank).angle()
        assert torch.allclose(got, expected, atol=1e-6), bank
    middle = (phase[4] + phase[5] + phase[6]) / 3
    for bank in (10, 50):
        assert torch.allclose(local_mix_context("complex", seed, layer, 5, dim, bank).angle(),
                              middle, atol=1e-6)


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
    assert TrialConfig(context_schedule="local_mix", psp="complex").n_contexts == 10
    assert TrialConfig(context_schedule="local_mix", psp="complex", context_every=1).n_contexts == 1000
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
