"""EWC and SI: their formulas, their gradients, their state, and the loop that uses them."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from trainables.config import TrialConfig
from trainables.loop import train
from trainables.models import SuperposedMLP
from trainables.penalties import EWC, SI, build_penalty

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(psp="none", units=16, tasks=3, steps_per_task=30, eval_every=15, threads=1,
            test_examples=200)
PENALTIES = {"ewc": EWC, "si": SI}


def tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    return SuperposedMLP(5, 4, 1, 3, psp="none", seed=0).to(dtype)


def tiny_task(seed, n=40, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def fit(model, penalty, data, steps=20, lr=0.05, check_zero=False):
    """Plain SGD on task loss + penalty, the loop's order of calls."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data
    for step in range(steps):
        batch = slice(step % 4 * 10, step % 4 * 10 + 10)
        term = penalty.penalty(model)
        if check_zero:
            assert term.item() == 0.0
        objective = F.cross_entropy(model(x[batch], 0), y[batch]) + term
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        penalty.after_step(model)


@pytest.mark.parametrize("kind", ["ewc", "si"])
def test_zero_on_the_first_task_positive_after_it(kind):
    model = tiny_model()
    penalty = PENALTIES[kind](model, strength=1.0)
    fit(model, penalty, tiny_task(1), check_zero=True)  # exactly 0 at every step of task 1
    penalty.end_task(model, tiny_task(1), 0)
    assert penalty.penalty(model).item() == 0.0       # at the anchor: still 0
    fit(model, penalty, tiny_task(2), steps=5)
    assert penalty.penalty(model).item() > 0


@pytest.mark.parametrize("kind", ["ewc", "si"])
def test_autograd_gradient_matches_finite_differences(kind):
    model = tiny_model(torch.float64)
    penalty = PENALTIES[kind](model, strength=0.7)
    fit(model, penalty, tiny_task(1, dtype=torch.float64))
    penalty.end_task(model, tiny_task(1, dtype=torch.float64), 0)
    fit(model, penalty, tiny_task(2, dtype=torch.float64), steps=8)
    penalty.end_task(model, tiny_task(2, dtype=torch.float64), 0)  # two tasks consolidated
    fit(model, penalty, tiny_task(3, dtype=torch.float64), steps=3)

    model.zero_grad()
    penalty.penalty(model).backward()
    eps = 1e-6
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat, grad = p.view(-1), p.grad.view(-1)
            for i in range(0, flat.numel(), 3):
                keep = flat[i].item()
                flat[i] = keep + eps
                up = penalty.penalty(model).item()
                flat[i] = keep - eps
                down = penalty.penalty(model).item()
                flat[i] = keep
                numeric = (up - down) / (2 * eps)
                assert grad[i].item() == pytest.approx(numeric, rel=1e-6, abs=1e-9), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_ewc_fisher_is_the_models_fisher_information_closed_form():
    """Softmax regression, logits = W x + b: ∂ log p_c/∂W_kj = (δ_ck − p_k) x_j, so the Fisher
    Σ_c p_c (∂ log p_c/∂W_kj)² = p_k (1 − p_k) x_j² (bias: p_k (1 − p_k)) — the labels play no
    part. The "empirical Fisher" would give (δ_{y,k} − p_k)² x_j² instead."""
    torch.manual_seed(1)
    model = SuperposedMLP(5, 4, 0, 3, psp="none", seed=0).to(torch.float64)  # one linear layer
    x, y = tiny_task(5, n=12, dtype=torch.float64)
    ewc = EWC(model, strength=1.0, examples=12)
    ewc.end_task(model, (x, y), 0)
    layer = model.layers[0]
    with torch.no_grad():
        p = torch.softmax(x @ layer.weight.T + layer.bias, dim=1)  # (12, 3)
    v = p * (1 - p)                                                  # (12, 3)
    expected_w = (v[:, :, None] * x[:, None, :] ** 2).mean(0)        # (3, 5)
    torch.testing.assert_close(ewc.fisher["layers.0.weight"], expected_w, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ewc.fisher["layers.0.bias"], v.mean(0), rtol=1e-10, atol=1e-14)
    # the labels are not used: other labels, the same Fisher
    again = EWC(model, strength=1.0, examples=12)
    again.end_task(model, (x, (y + 1) % 3), 0)
    assert torch.equal(again.fisher["layers.0.weight"], ewc.fisher["layers.0.weight"])


def test_ewc_fisher_accumulates_and_the_penalty_is_the_sum_over_tasks():
    model = tiny_model(torch.float64)
    ewc = EWC(model, strength=2.0, examples=12)
    x, y = tiny_task(3, dtype=torch.float64)

    def fisher_by_hand():
        """Σ_c p_c J_c², J the Jacobian of the log-probabilities (torch.autograd.functional)."""
        names = [n for n, _ in model.named_parameters()]
        squares = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for i in range(12):
            def log_probs(*params):
                out = torch.func.functional_call(model, dict(zip(names, params)), (x[i:i + 1], 0))
                return F.log_softmax(out, 1)[0]
            params = tuple(p.detach() for p in model.parameters())
            jac = torch.autograd.functional.jacobian(log_probs, params)  # per param: (C, *shape)
            prob = log_probs(*params).exp()
            for n, j in zip(names, jac):
                squares[n] += (prob.view(-1, *[1] * (j.dim() - 1)) * j ** 2).sum(0) / 12
        return squares

    first = fisher_by_hand()
    anchor1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    ewc.end_task(model, (x, y), 0)
    for n in first:
        assert torch.allclose(ewc.fisher[n], first[n], rtol=1e-10, atol=1e-14)
    fit(model, ewc, (x, y), steps=6)
    second = fisher_by_hand()
    anchor2 = {n: p.detach().clone() for n, p in model.named_parameters()}
    ewc.end_task(model, (x, y), 0)
    for n in first:
        assert torch.allclose(ewc.fisher[n], first[n] + second[n], rtol=1e-10, atol=1e-14)
    # λ/2 Σ_τ F^τ (θ − θ*^τ)² and the stored quadratic differ by a constant only
    def by_task(params):
        return sum((first[n] * (params[n] - anchor1[n]) ** 2).sum()
                   + (second[n] * (params[n] - anchor2[n]) ** 2).sum() for n in first)
    fit(model, ewc, tiny_task(4, dtype=torch.float64), steps=4)
    here = {n: p.detach().clone() for n, p in model.named_parameters()}
    there = {n: t + 0.01 * torch.randn_like(t) for n, t in here.items()}
    stored = ewc.penalty(model).item()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(there[n])
    moved = ewc.penalty(model).item()
    assert moved - stored == pytest.approx(float(by_task(there) - by_task(here)), rel=1e-8)


def test_si_omega_is_the_path_integral_of_the_task_gradient():
    model = tiny_model(torch.float64)
    si = SI(model, strength=3.0)
    fit(model, si, tiny_task(1, dtype=torch.float64))
    si.end_task(model)
    # task 2 by hand: ω = −Σ g_task · δθ with g_task from the task loss alone
    x, y = tiny_task(2, dtype=torch.float64)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(5):
        batch = slice(step * 8, step * 8 + 8)
        task_loss = F.cross_entropy(model(x[batch], 0), y[batch])
        task_grads = torch.autograd.grad(task_loss, list(model.parameters()), retain_graph=True)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        (task_loss + si.penalty(model)).backward()
        optimizer.step()
        si.after_step(model)
        for (n, p), g, b in zip(model.named_parameters(), task_grads, before):
            expected[n] -= g * (p.detach() - b)
    for n in expected:
        assert torch.allclose(si.omega[n], expected[n], rtol=1e-9, atol=1e-15)
    importance = {n: t.clone() for n, t in si.importance.items()}
    si.end_task(model)
    for n, p in model.named_parameters():
        delta = p.detach() - start[n]
        summed = importance[n] + expected[n] / (delta ** 2 + 0.1)
        assert torch.allclose(si.importance[n], summed.clamp(min=0))
        assert torch.equal(si.anchor[n], p.detach()) and not si.omega[n].any()


def test_si_importance_is_clipped_at_zero_as_the_reference_does():
    """pathint: Ω ← relu(Ω + ω/(Δ² + ξ)); a negative Ω would push θ away from θ̃."""
    model = SuperposedMLP(2, 2, 0, 2, psp="none", seed=0)  # weight (2, 2), bias (2,)
    si = SI(model, strength=1.0)
    with torch.no_grad():
        si.importance["layers.0.weight"].copy_(torch.tensor([[0.5, 0.5], [0.0, 2.0]]))
        si.omega["layers.0.weight"].copy_(torch.tensor([[-0.2, -1.0], [0.3, -0.4]]))
        model.layers[0].weight.add_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # Δ
    si.end_task(model)
    # by hand, ξ = 0.1: 0.5 − 0.2/1.1, max(0, 0.5 − 1.0/0.1), 0 + 0.3/0.1, 2 − 0.4/9.1
    expected = torch.tensor([[0.5 - 0.2 / 1.1, 0.0], [3.0, 2.0 - 0.4 / 9.1]])
    torch.testing.assert_close(si.importance["layers.0.weight"], expected)
    assert (si.importance["layers.0.bias"] == 0).all()


@pytest.mark.parametrize("kind", ["ewc", "si"])
def test_state_round_trip(kind):
    model = tiny_model()
    penalty = PENALTIES[kind](model, strength=1.5)
    fit(model, penalty, tiny_task(1))
    penalty.end_task(model, tiny_task(1), 0)
    fit(model, penalty, tiny_task(2), steps=3)
    state = penalty.state_dict()
    fresh = PENALTIES[kind](model, strength=1.5)
    assert fresh.penalty(model).item() == 0.0
    fresh.load_state_dict(state)
    assert torch.equal(fresh.penalty(model), penalty.penalty(model))
    assert all(torch.equal(a, b) for key in state for a, b in
               zip(state[key].values(), fresh.state_dict()[key].values()))
    with pytest.raises(ValueError, match="parameters"):
        PENALTIES[kind](SuperposedMLP(5, 6, 2, 3, psp="none", seed=0), 1.0).load_state_dict(state)


def test_config_rules():
    assert build_penalty(TrialConfig(), tiny_model()) is None
    with pytest.raises(ValidationError, match="penalty_strength"):
        TrialConfig(penalty_strength=1.0)
    si = TrialConfig(penalty="si", penalty_strength=1.0)
    assert isinstance(build_penalty(si, tiny_model()), SI)


@pytest.mark.parametrize("kind", ["ewc", "si"])
def test_in_the_loop_first_task_unchanged_later_tasks_held_and_resume_exact(kind):
    base = TrialConfig(**TINY, seed=2)
    cfg = base.model_copy(update={"penalty": kind, "penalty_strength": 50.0})
    plain, regularised, states, resumed = [], [], {}, []
    train(base, lambda t, r: plain.append((t, r)))
    train(cfg, lambda t, r: regularised.append((t, r)))
    # (a separate run: the model's state_dict shares storage with the model that goes on training)
    train(cfg.model_copy(update={"tasks": 2}), lambda t, r: None,
          on_task_end=lambda task, state: states.__setitem__(task, state))
    # Task 0: the penalty is exactly 0, so the run is bitwise the unregularised one and the
    # recorded loss is the task's cross-entropy.
    assert regularised[0] == plain[0]
    assert regularised[1] != plain[1]
    assert set(states[1]["penalty"]) >= {"anchor"}
    train(cfg, lambda t, r: resumed.append((t, r)), resume=states[1])
    assert resumed == [chunk for chunk in regularised if chunk[0] == 2]


def test_penalty_works_with_complex_superposition_on_a_rotating_stream():
    cfg = TrialConfig(**{**TINY, "psp": "complex", "tasks": 2}, stream="rotating",
                      context_schedule="cycle", context_every=10, penalty="ewc",
                      penalty_strength=10.0)
    rows = []
    assert train(cfg, lambda t, r: rows.extend(r)).status == "completed"
    assert len([r for r in rows if r["split"] == "train"]) == 60


def test_ewc_si_spec_is_valid():
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "sweeps" / "ewc_si.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    assert {(t.penalty, t.psp, t.stream) for t in trials} == {("ewc", "none", "permuted"),
                                                              ("si", "none", "permuted")}
    assert len({t.penalty_strength for t in trials}) >= 3 and all(t.tasks == 50 for t in trials)
    assert len(spec.trials(smoke=True)) == 2


def test_zenke_spec_is_zenkes_protocol():
    """10 tasks, 2 × 2000 units, Adam 1e-3, batch 256, 20 epochs of 235 Keras batches per task
    on full MNIST (60,000 / 256 rounded up), pixels in [0, 1], SI's c ∈ {0.01, 0.1, 1}."""
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "sweeps" / "ewc_si_zenke.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    assert all(t.dataset == "mnist" and t.stream == "permuted" and t.psp == "none"
               and t.units == 2000 and t.depth == 2 and t.tasks == 10 and t.optimizer == "adam"
               and t.lr == 1e-3 and t.batch_size == 256 and t.input_norm == "unit"
               and t.heads == "single" and t.output_units == 10 for t in trials)
    assert {t.steps_per_task for t in trials} == {20 * -(-60_000 // 256)} == {4700}
    assert {0.01, 0.1, 1.0} <= {t.penalty_strength for t in trials if t.penalty == "si"}
    assert {t.penalty for t in trials} == {"si", "ewc"}
    assert len(spec.trials(smoke=True)) == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ewc_si_spec_smoke_launches(tmp_path, ray_local, exactly_once):
    """The spec at smoke size through orchestrator.launch on the embedded 2-CPU Ray; its GPU
    resources are swapped for one CPU (an embedded Ray has no GPU and would refuse it)."""
    from orchestrator.launch import launch
    from orchestrator.spec import Resources, load_spec

    spec = load_spec(ROOT / "sweeps" / "ewc_si.yaml")
    spec = spec.model_copy(update={"resources": Resources(cpu=1, gpu=0)})
    assert launch(spec, storage=str(tmp_path), smoke=True, verbose=0) == 0
    _, trials = exactly_once(tmp_path / "ewc_si" / "results", n_trials=2)
    assert (trials.status == "completed").all() and set(trials.penalty) == {"ewc", "si"}
