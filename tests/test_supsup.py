"""SupSup: supermasks over fixed signed constants (sign and top-k rules), GNu task inference,
its rows, and the GNu options of the config and the permuted stream."""
import math
from pathlib import Path

import pydantic
import pytest
import torch
import torch.nn.functional as F

from trainables.config import INFER_BATCH, TrialConfig
from trainables.contexts import task_permutation
from trainables.data import load_dataset
from trainables.loop import train
from trainables.models import build_model
from trainables.schema import MEASUREMENT_FIELDS, PARAM_FIELDS, steps_table
from trainables.streams import build_stream
from trainables.supsup import (SupermaskLinear, SupSupMLP, alpha_gradient, alpha_gradients,
                               infer_task_binary, infer_task_one_shot, output_entropy)


@pytest.mark.parametrize("shape,density", [((7, 13), 0.5), ((30, 20), 0.1), ((5, 3), 0.9),
                                           ((4, 4), 1.0)])
def test_topk_masks_keep_exactly_the_top_fraction(shape, density):
    layer = SupermaskLinear(shape[1], shape[0], n_tasks=2, rule="topk", density=density,
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


def test_sign_masks_keep_the_weights_whose_score_is_not_negative():
    layer = SupermaskLinear(13, 7, n_tasks=2, generator=torch.Generator().manual_seed(0))
    assert layer.rule == "sign" and layer.density is None  # the reference's GNu rule by default
    with torch.no_grad():
        layer.scores[1][0, :3] = torch.tensor([0.0, -1e-9, 1e-9])  # the threshold itself is kept
    for task in range(2):
        scores = layer.scores[task].detach()
        expected = torch.tensor([[1.0 if s >= 0 else 0.0 for s in row] for row in scores.tolist()])
        torch.testing.assert_close(layer.mask(task), expected, rtol=0, atol=0)
        assert torch.equal(layer.frozen_mask(task), expected.bool())
    assert layer.mask(1)[0, :3].tolist() == [1.0, 0.0, 1.0]


def test_weights_are_fixed_signed_constants():
    layer = SupermaskLinear(50, 40, n_tasks=3, generator=torch.Generator().manual_seed(1))
    sigma = math.sqrt(2 / 50)
    torch.testing.assert_close(layer.weight.abs(), torch.full((40, 50), sigma))
    assert not layer.weight.requires_grad
    assert all(p is not layer.weight for p in layer.parameters())  # never handed to an optimizer
    assert 0.4 < (layer.weight > 0).float().mean() < 0.6
    bound = 1 / math.sqrt(50)  # scores U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the reference's
    assert all(s.abs().max() <= bound and s.abs().max() > 0.9 * bound for s in layer.scores)


@pytest.mark.parametrize("rule", ["sign", "topk"])
def test_straight_through_gradient_reaches_only_the_task_scores(rule):
    layer = SupermaskLinear(6, 4, n_tasks=3, rule=rule, generator=torch.Generator().manual_seed(2))
    x = torch.randn(5, 6)
    effective = (layer.weight * layer.mask(1).detach()).requires_grad_()
    F.linear(x, effective).pow(2).sum().backward()
    layer(x, 1).pow(2).sum().backward()
    # ∂L/∂M = ∂L/∂E ⊙ W, straight through the threshold: to S itself (sign), or to |S| (top-k)
    expected = effective.grad * layer.weight
    if rule == "topk":
        expected = expected * layer.scores[1].detach().sign()
    torch.testing.assert_close(layer.scores[1].grad, expected)
    assert layer.scores[0].grad is None and layer.scores[2].grad is None


def test_alpha_gradients_match_autograd_of_the_explicit_superposition():
    model = SupSupMLP(12, 9, 2, 20, n_tasks=5, seed=3)
    batches = [torch.randn(8, 12), torch.randn(1, 12), torch.randn(3, 12)]
    alpha = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15])
    masks = [[(s.detach() >= 0).float() for s in layer.scores] for layer in model.layers]
    expected = []
    for x in batches:  # one backward per batch, through W ⊙ Σ_k α_k M_k written out here
        a = alpha.clone().requires_grad_()
        h = x
        for i, (layer, m) in enumerate(zip(model.layers, masks)):
            h = F.linear(F.relu(h) if i else h, layer.weight * torch.einsum("k,koi->oi", a,
                                                                             torch.stack(m)))
        p = F.softmax(h, 1)
        (-(p * p.log()).sum(1).mean()).backward()
        expected.append(a.grad)
    torch.testing.assert_close(alpha_gradients(model, batches, alpha), torch.stack(expected),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alpha_gradient(model, batches[0], alpha), expected[0],
                               atol=1e-5, rtol=1e-4)
    # with one-hot α the superposed network is task k's network
    one_hot = [layer.weight * m[2] for layer, m in zip(model.layers, masks)]
    torch.testing.assert_close(model.forward_weights(batches[0], one_hot), model(batches[0], 2))


def test_inference_on_untrained_masks_returns_a_valid_task():
    model = SupSupMLP(10, 8, 1, 12, n_tasks=6, seed=4)
    x = torch.randn(4, 10)
    assert 0 <= infer_task_one_shot(model, x, 6) < 6
    assert 0 <= infer_task_binary(model, x, 6) < 6
    assert infer_task_one_shot(model, x, 1) == 0 and infer_task_binary(model, x, 1) == 0


def test_extra_eval_rows_fit_the_schema_and_follow_infer_every():
    model = SupSupMLP(10, 8, 1, 12, n_tasks=7, seed=5, infer_every=3)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(300, 10, generator=g), torch.randint(0, 10, (300,), generator=g)
    rows = model.extra_eval_rows(x, y, eval_task=1, step=40, task=2)  # task 2: the 3rd
    assert [r["split"] for r in rows] == ["infer", "test_inferred"]
    for row in rows:
        assert set(row) == set(MEASUREMENT_FIELDS) and row["eval_task"] == 1
        assert row["n_examples"] == 300 and row["loss"] is None
    assert rows[0]["accuracy"] * math.ceil(300 / INFER_BATCH) in (0, 1, 2, 3)  # whole batches
    assert rows[1]["accuracy"] <= rows[0]["accuracy"]  # wrongly inferred batches count as wrong
    steps_table(rows, TrialConfig(model="supsup", psp="none").identity(), sweep=None,
                trial_id="t", attempt=0)
    assert model.extra_eval_rows(x, y, eval_task=1, step=40, task=3) == []  # not a 3rd task
    assert len(model.extra_eval_rows(x, y, eval_task=1, step=40, task=6)) == 2  # the last


def test_build_supsup_from_config():
    cfg = TrialConfig(model="supsup", psp="none", units=16, depth=2, output_units=100,
                      mask_rule="topk", mask_density=0.25, tasks=3, infer_examples=4)
    model = build_model(cfg, 784, n_contexts=3)
    assert [l.weight.shape for l in model.layers] == [(16, 784), (16, 16), (100, 16)]
    assert all(l.rule == "topk" and l.density == 0.25 and len(l.scores) == 3 for l in model.layers)
    assert model.infer_examples == 4 and model.last_task == 2
    assert model(torch.rand(2, 1, 28, 28), 2).shape == (2, 100)  # images are flattened
    torch.testing.assert_close(build_model(cfg, 784, 3).layers[0].weight, model.layers[0].weight)
    with pytest.raises(ValueError, match="psp='none'"):
        build_model(cfg.model_copy(update={"psp": "binary"}), 784, n_contexts=3)
    default = build_model(TrialConfig(model="supsup", psp="none", units=16, tasks=3), 784, 3)
    assert all(l.rule == "sign" and l.density is None for l in default.layers)


def test_gnu_options_in_the_config():
    cfg = TrialConfig(model="supsup", psp="none")
    assert (cfg.mask_rule, cfg.mask_density, cfg.infer_examples, cfg.permute_task0) == \
        ("sign", None, 1, False)  # the reference's rule and one example; PSP's task 0
    assert TrialConfig(model="supsup", psp="none", mask_rule="topk").mask_density == 0.5
    for name in ("mask_rule", "infer_examples", "infer_every", "permute_task0"):
        assert name in PARAM_FIELDS and name in cfg.identity()  # recorded in the trials table
    with pytest.raises(pydantic.ValidationError, match="mask_density .*'topk' only"):
        TrialConfig(model="supsup", psp="none", mask_density=0.3)
    with pytest.raises(pydantic.ValidationError, match="permute_task0"):
        TrialConfig(stream="rotating", permute_task0=True)
    with pytest.raises(pydantic.ValidationError, match="infer_examples"):
        TrialConfig(model="supsup", psp="none", infer_examples=INFER_BATCH + 1)


def test_permute_task0_permutes_the_first_task_only():
    mnist = load_dataset("mnist5k")
    plain = build_stream(TrialConfig(input_norm="unit", seed=3), mnist)
    supsup = build_stream(TrialConfig(input_norm="unit", seed=3, permute_task0=True), mnist)
    pixels = mnist.test_x.flatten(1)                                   # (N, 784)
    x0, y0 = supsup.test_set(0)
    assert torch.equal(plain.test_set(0)[0], pixels)                   # PSP: the plain image
    assert not torch.equal(x0, pixels) and torch.equal(y0, mnist.test_y)
    # one permutation of the pixels for every image, its own (not task 1's)
    perm = task_permutation(3, 0, 784, permute_task0=True)
    assert torch.equal(perm.sort().values, torch.arange(784)) and torch.equal(pixels[:, perm], x0)
    assert not torch.equal(perm, task_permutation(3, 1, 784))
    assert task_permutation(3, 0, 784) is None
    assert torch.equal(supsup.test_set(1)[0], plain.test_set(1)[0])  # later tasks unchanged
    assert torch.equal(supsup.train_set(2)[0], plain.train_set(2)[0])


def _reference_picks(model, x: torch.Tensor, n_tasks: int, examples: int) -> list[int]:
    """One-shot inference written out here: for each test batch of x, the argmin over the masks
    of ∂H/∂α at α = 1/K, H the mean entropy of the batch's first ``examples`` examples."""
    masks = [torch.stack([(s.detach() >= 0).float() for s in layer.scores[:n_tasks]])
             for layer in model.layers]
    picks = []
    for start in range(0, len(x), INFER_BATCH):
        a = torch.full((n_tasks,), 1 / n_tasks, requires_grad=True)
        h = x[start:start + examples]
        for i, (layer, m) in enumerate(zip(model.layers, masks)):
            h = F.linear(F.relu(h) if i else h, layer.weight * torch.einsum("k,koi->oi", a, m))
        p = F.softmax(h, 1)
        (-(p * p.log()).sum(1).mean()).backward()
        picks.append(int(a.grad.argmin()))
    return picks


def _expected_gnu_rows(model, x, y, eval_task, picks) -> tuple[float, float]:
    """(infer, test_inferred) from given picks: the fraction of batches given eval_task, and
    the test accuracy counting only those batches' hits under eval_task's mask."""
    with torch.no_grad():
        hits = [int((model(x[s:s + INFER_BATCH], eval_task).argmax(1)
                     == y[s:s + INFER_BATCH]).sum()) if pick == eval_task else 0
                for s, pick in zip(range(0, len(y), INFER_BATCH), picks)]
    return sum(p == eval_task for p in picks) / len(picks), sum(hits) / len(y)


@pytest.mark.parametrize("examples", [1, 5])
def test_gnu_rows_match_inference_written_out(examples):
    model = SupSupMLP(10, 8, 1, 12, n_tasks=4, seed=7, infer_examples=examples)
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(1000, 10, generator=g), torch.randint(0, 10, (1000,), generator=g)
    picks = _reference_picks(model, x, 4, examples)
    assert len(set(picks)) > 1  # untrained: a mix of right and wrong batches for any task
    for eval_task in range(4):
        infer, inferred = model.extra_eval_rows(x, y, eval_task, step=5, task=3)
        expected = _expected_gnu_rows(model, x, y, eval_task, picks)
        assert (infer["split"], inferred["split"]) == ("infer", "test_inferred")
        assert infer["accuracy"] == pytest.approx(expected[0])
        assert inferred["accuracy"] == pytest.approx(expected[1])


@pytest.mark.slow
def test_one_shot_task_inference_finds_the_task_among_ten():
    """GNu as the reference runs it (sign masks, standardised inputs, task 0 permuted, one test
    example per batch decides), at smoke size: 10 permuted-mnist5k tasks, 100 steps each at lr
    1e-3, FC 200-200, 100 outputs (90 superfluous).

    Measured (seeds 0-2): every test batch given the right task (infer 1.00), so accuracy
    under the inferred mask equals that with the task given (0.904-0.906). Top-k masks at this
    schedule (with task 0 plain) found the task for 0/80 batches deciding on 128 examples and
    8/80 on one (see trainables/supsup.py).
    """
    tasks = 10
    cfg = TrialConfig(model="supsup", psp="none", units=200, depth=2, tasks=tasks,
                      steps_per_task=100, lr=1e-3, output_units=100, eval_every=0,
                      permute_task0=True, dataset="mnist5k", seed=0, threads=1)
    assert (cfg.mask_rule, cfg.infer_examples, cfg.input_norm) == ("sign", 1, "standardize")
    rows, state = [], {}
    train(cfg, sink=lambda task, r: rows.extend(r), on_task_end=lambda task, s: state.update(s))
    final = {r["eval_task"]: r["accuracy"] for r in rows
             if r["split"] == "test" and r["task"] == tasks - 1}
    assert len(final) == tasks and min(final.values()) > 0.8  # GG: masks learned
    task0 = {r["accuracy"] for r in rows if r["split"] == "test" and r["eval_task"] == 0}
    assert len(task0) == 1  # no forgetting at all: task 0's mask never changes after task 0

    # GNu rows: one infer and one test_inferred row per seen task at every task boundary
    for split in ("infer", "test_inferred"):
        seen = sorted((r["task"], r["eval_task"]) for r in rows if r["split"] == split)
        assert seen == [(t, k) for t in range(tasks) for k in range(t + 1)], split

    model = build_model(cfg, 784, tasks)
    model.load_state_dict(state["model"])
    stream = build_stream(cfg, load_dataset("mnist5k"))
    infer = {r["eval_task"]: r["accuracy"] for r in rows
             if r["split"] == "infer" and r["task"] == tasks - 1}
    inferred = {r["eval_task"]: r["accuracy"] for r in rows
                if r["split"] == "test_inferred" and r["task"] == tasks - 1}
    found = []
    for k in range(tasks):
        x, y = stream.test_set(k)
        picks = _reference_picks(model, x, tasks, examples=1)
        found += [pick == k for pick in picks]  # the task actually given
        expected = _expected_gnu_rows(model, x, y, k, picks)
        # a batch decided otherwise (a near tie) moves infer by one batch, test_inferred by
        # at most its hits
        assert abs(infer[k] - expected[0]) <= 1 / len(picks) + 1e-6
        assert abs(inferred[k] - expected[1]) <= INFER_BATCH / len(y) + 1e-6
        assert inferred[k] <= final[k] + 1e-6
    assert sum(found) / len(found) > 0.9  # among ten


def test_frozen_masks_are_cached_until_the_scores_change():
    model = SupSupMLP(6, 5, 1, 4, n_tasks=2, seed=6)
    layer = model.layers[0]
    first = layer.frozen_mask(1)
    assert layer.frozen_mask(1) is first  # reused across evaluations
    assert torch.equal(first, layer.mask(1).bool())
    stacked = model.stacked_masks(2)
    assert model.stacked_masks(2) is stacked
    with torch.no_grad():
        layer.scores[1].mul_(-1).add_(torch.randn(5, 6))  # an optimizer step, in place
    assert torch.equal(layer.frozen_mask(1), layer.mask(1).bool())
    assert layer.frozen_mask(1) is not first
    assert torch.equal(model.stacked_masks(2)[0][1], layer.mask(1).flatten())


def test_supsup_spec_is_valid_and_its_smoke_runs():
    from orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "supsup.yaml")
    (trial,) = [TrialConfig(**t) for t in spec.trials()]
    # the reference's GNu permuted-MNIST run (experiments/GNu/MNISTPerm/FC-250-tasks/supsup_h.py)
    assert (trial.model, trial.psp, trial.units, trial.depth, trial.output_units, trial.tasks) \
        == ("supsup", "none", 1024, 2, 500, 250)
    assert (trial.mask_rule, trial.infer_examples, trial.permute_task0, trial.input_norm) == \
        ("sign", 1, True, "standardize")
    assert (trial.optimizer, trial.lr, trial.steps_per_task, trial.batch_size) == \
        ("rmsprop", 1e-4, 1000, 128)
    (smoke,) = spec.trials(smoke=True)
    cfg = TrialConfig(**{**smoke, "device": "cpu", "threads": 1})
    rows = []
    summary = train(cfg, sink=lambda task, r: rows.extend(r))
    assert summary.status == "completed"
    last = cfg.tasks - 1
    for split in ("test", "infer", "test_inferred"):
        assert {r["eval_task"] for r in rows if r["split"] == split and r["task"] == last} \
            == set(range(cfg.tasks)), split


def test_supsup_variants_spec_crosses_the_options():
    from itertools import product

    from orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "supsup_variants.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    assert sorted((t.mask_rule, t.infer_examples, t.output_units) for t in trials) == \
        sorted(product(["sign", "topk"], [1, 128], [500, 10]))
    assert all(t.mask_density == (0.5 if t.mask_rule == "topk" else None) for t in trials)
    assert all(t.permute_task0 and t.tasks == 100 and t.units == 300 for t in trials)
    assert len(spec.trials(smoke=True)) == 2
