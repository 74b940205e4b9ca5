"""SupSup: top-k supermasks over fixed signed constants, and GNu task inference."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainables import supsup
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.loop import train
from trainables.models import build_model
from trainables.schema import MEASUREMENT_FIELDS, steps_table
from trainables.streams import build_stream
from trainables.supsup import (INFER_BATCH, SupermaskLinear, SupSupMLP, alpha_gradient,
                               infer_task_binary, infer_task_one_shot, output_entropy, topk_mask)


@pytest.mark.parametrize("shape,density", [((7, 13), 0.5), ((30, 20), 0.1), ((5, 3), 0.9),
                                           ((4, 4), 1.0)])
def test_masks_keep_exactly_the_top_fraction(shape, density):
    layer = SupermaskLinear(shape[1], shape[0], n_tasks=2, density=density,
                            generator=torch.Generator().manual_seed(0))
    for task in range(2):
        mask = layer.mask(task)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        n = math.prod(shape)
        assert mask.sum().item() == max(1, round(density * n))
        magnitude = layer.scores[task].detach().abs()
        kept, dropped = magnitude[mask.bool()], magnitude[~mask.bool()]
        if len(dropped):
            assert kept.min() > dropped.max()


def test_weights_are_fixed_signed_constants():
    layer = SupermaskLinear(50, 40, n_tasks=3, density=0.5, generator=torch.Generator().manual_seed(1))
    sigma = math.sqrt(2 / 50)
    torch.testing.assert_close(layer.weight.abs(), torch.full((40, 50), sigma))
    assert not layer.weight.requires_grad
    assert all(p is not layer.weight for p in layer.parameters())  # never handed to an optimizer
    assert 0.4 < (layer.weight > 0).float().mean() < 0.6


def test_straight_through_gradient_reaches_only_the_task_scores():
    layer = SupermaskLinear(6, 4, n_tasks=3, density=0.5, generator=torch.Generator().manual_seed(2))
    x = torch.randn(5, 6)
    effective = (layer.weight * layer.mask(1).detach()).requires_grad_()
    F.linear(x, effective).pow(2).sum().backward()
    layer(x, 1).pow(2).sum().backward()
    # ∂L/∂S = ∂L/∂M ⊙ sign(S) with ∂L/∂M = ∂L/∂E ⊙ W (straight through the top-k)
    expected = effective.grad * layer.weight * layer.scores[1].detach().sign()
    torch.testing.assert_close(layer.scores[1].grad, expected)
    assert layer.scores[0].grad is None and layer.scores[2].grad is None


def test_alpha_gradient_matches_autograd_of_the_explicit_superposition(monkeypatch):
    monkeypatch.setattr(supsup, "_CHUNK", 2)  # exercise the chunked inner products
    model = SupSupMLP(12, 9, 2, 20, n_tasks=5, density=0.4, seed=3)
    x = torch.randn(8, 12)
    alpha = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], requires_grad=True)
    masks = model.task_masks(5)
    weights = [layer.weight * torch.einsum("k,koi->oi", alpha, torch.stack(m).float())
               for layer, m in zip(model.layers, masks)]
    output_entropy(model.forward_weights(x, weights)).backward()
    torch.testing.assert_close(alpha_gradient(model, x, alpha.detach()), alpha.grad,
                               atol=1e-5, rtol=1e-4)
    # with one-hot α the superposed network is task k's network
    one_hot = [layer.weight * m[2] for layer, m in zip(model.layers, masks)]
    torch.testing.assert_close(model.forward_weights(x, one_hot), model(x, 2))


def test_inference_on_untrained_masks_returns_a_valid_task():
    model = SupSupMLP(10, 8, 1, 12, n_tasks=6, seed=4)
    x = torch.randn(4, 10)
    assert 0 <= infer_task_one_shot(model, x, 6) < 6
    assert 0 <= infer_task_binary(model, x, 6) < 6
    assert infer_task_one_shot(model, x, 1) == 0 and infer_task_binary(model, x, 1) == 0


def test_extra_eval_rows_fit_the_schema():
    model = SupSupMLP(10, 8, 1, 12, n_tasks=4, seed=5)
    x, y = torch.randn(300, 10), torch.randint(0, 10, (300,))
    rows = model.extra_eval_rows(x, y, eval_task=1, step=40, task=2)
    assert len(rows) == 1 and set(rows[0]) == set(MEASUREMENT_FIELDS)
    row = rows[0]
    assert row["split"] == "infer" and row["eval_task"] == 1 and row["n_examples"] == 300
    assert row["accuracy"] * math.ceil(300 / INFER_BATCH) in (0, 1, 2, 3)  # whole batches
    steps_table(rows, TrialConfig(model="supsup", psp="none").identity(), sweep=None,
                trial_id="t", attempt=0)


def test_build_supsup_from_config():
    cfg = TrialConfig(model="supsup", psp="none", units=16, depth=2, output_units=100,
                      mask_density=0.25, tasks=3)
    model = build_model(cfg, 784, n_contexts=3)
    assert [l.weight.shape for l in model.layers] == [(16, 784), (16, 16), (100, 16)]
    assert all(l.density == 0.25 and len(l.scores) == 3 for l in model.layers)
    assert model(torch.rand(2, 1, 28, 28), 2).shape == (2, 100)  # images are flattened
    torch.testing.assert_close(build_model(cfg, 784, 3).layers[0].weight, model.layers[0].weight)
    with pytest.raises(ValueError, match="psp='none'"):
        build_model(cfg.model_copy(update={"psp": "binary"}), 784, n_contexts=3)


@pytest.mark.slow
def test_one_shot_task_inference_finds_the_task_among_ten():
    """GNu at smoke size: 10 permuted-mnist5k tasks, 100 steps each, 100 outputs (90 superfluous).

    Measured (seeds 0-2): one-shot and binary inference both 100% of test batches; with only
    10 outputs one-shot fell to ~91% — the superfluous neurons matter.
    """
    tasks = 10
    cfg = TrialConfig(model="supsup", psp="none", units=200, depth=2, tasks=tasks,
                      steps_per_task=100, lr=1e-3, output_units=100, eval_every=0,
                      dataset="mnist5k", seed=0, threads=1, input_norm="unit")
    rows, state = [], {}
    train(cfg, sink=lambda task, r: rows.extend(r), on_task_end=lambda task, s: state.update(s))
    final = [r for r in rows if r["split"] == "test" and r["task"] == tasks - 1]
    assert len(final) == tasks and min(r["accuracy"] for r in final) > 0.8  # GG: masks learned
    task0 = {r["accuracy"] for r in rows if r["split"] == "test" and r["eval_task"] == 0}
    assert len(task0) == 1  # no forgetting at all: task 0's mask never changes after task 0

    model = build_model(cfg, 784, tasks)
    model.load_state_dict(state["model"])
    stream = build_stream(cfg, load_dataset("mnist5k"))
    masks = model.task_masks(tasks)
    decisions = []
    for k in range(tasks):
        x, _ = stream.test_set(k)
        decisions += [infer_task_one_shot(model, x[s:s + INFER_BATCH], tasks, masks) == k
                      for s in range(0, len(x), INFER_BATCH)]
    assert sum(decisions) / len(decisions) > 0.9

    infer_rows = [r for r in rows if r["split"] == "infer" and r["task"] == tasks - 1]
    if infer_rows:  # the loop's extra_eval_rows hook is present
        assert len(infer_rows) == tasks
        assert sum(r["accuracy"] for r in infer_rows) / tasks > 0.9


def test_frozen_masks_are_cached_until_the_scores_change():
    model = SupSupMLP(6, 5, 1, 4, n_tasks=2, seed=6)
    layer = model.layers[0]
    first = layer.frozen_mask(1)
    assert layer.frozen_mask(1) is first  # reused across evaluations
    assert torch.equal(first, layer.mask(1).bool())
    with torch.no_grad():
        layer.scores[1].mul_(-1).add_(torch.randn(5, 6))  # an optimizer step, in place
    assert torch.equal(layer.frozen_mask(1), layer.mask(1).bool())
    assert layer.frozen_mask(1) is not first


def test_supsup_spec_is_valid_and_its_smoke_runs():
    from pathlib import Path

    from orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "supsup.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    assert {t.output_units for t in trials} == {10, 100, 500}  # superfluous-neuron ablation
    assert all(t.model == "supsup" and t.psp == "none" and t.tasks >= 100 for t in trials)
    (smoke,) = spec.trials(smoke=True)
    cfg = TrialConfig(**{**smoke, "device": "cpu", "threads": 1})
    rows = []
    summary = train(cfg, sink=lambda task, r: rows.extend(r))
    assert summary.status == "completed"
    assert {r["eval_task"] for r in rows if r["split"] == "test" and r["task"] == cfg.tasks - 1} \
        == set(range(cfg.tasks))
