"""Regularisation baselines against forgetting: EWC and SI, as penalties in the training loop.

A penalty holds per-parameter importances and anchors for every trainable parameter of the model
(``requires_grad``), keyed by parameter name. The loop uses it in four places:

    objective = task_loss + penalty.penalty(model)   # each step; only the task loss is recorded
    penalty.after_step(model)                        # each step, after optimizer.step()
    penalty.end_task(model, (x, y), context)         # at each task boundary
    state["penalty"] = penalty.state_dict()          # in the task-boundary checkpoint

Both penalties are exactly zero while the first task trains (no importance yet).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FISHER_EXAMPLES = 256  # EWC: training inputs per task in the Fisher
SI_DAMPING = 0.1       # SI: ξ, keeps Ω finite for parameters that barely moved


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _zeros_like(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(p, memory_format=torch.preserve_format).detach()
            for name, p in params.items()}


def _copy(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


def _weighted_distance(model: nn.Module, weights: dict[str, torch.Tensor],
                       anchors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_i w_i (θ_i − a_i)² over the trainable parameters: a scalar tensor."""
    terms = [(weights[name] * (p - anchors[name]).pow(2)).sum()
             for name, p in _trainable(model).items()]
    return torch.stack(terms).sum()


class _Penalty:
    """Shared state handling: subclasses list their tensor dicts in ``_state``."""

    _state: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {key: {name: t.clone() for name, t in getattr(self, key).items()}
                for key in self._state}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for key in self._state:
            mine = getattr(self, key)
            if set(state[key]) != set(mine):
                raise ValueError(f"penalty state {key!r} is for parameters "
                                 f"{sorted(state[key])}, not {sorted(mine)}")
            for name, tensor in mine.items():
                tensor.copy_(state[key][name])


class EWC(_Penalty):
    """Elastic weight consolidation (Kirkpatrick et al. 2017), every past task consolidated:

        L = L_t + λ/2 Σ_{τ<t} Σ_i F_i^τ (θ_i − θ*_i^τ)²

    F^τ the diagonal Fisher information of task τ at θ*^τ, the expectation over the model's own
    predictive distribution (not the observed labels: that "empirical Fisher" is another
    matrix),

        F_i^τ = mean_n Σ_c p(c | x_n) (∂ log p(c | x_n; θ*^τ)/∂θ_i)²,

    computed exactly (a gradient per example and class) on FISHER_EXAMPLES training inputs of
    τ with τ's context, and θ*^τ the parameters at the end of τ. The sum over tasks is kept in
    O(1) memory as one quadratic: Σ_τ F^τ (θ − θ*^τ)² = F̄ (θ − θ̄)² + const, with the
    accumulated Fisher F̄ = Σ_τ F^τ and the Fisher-weighted anchor θ̄ = Σ_τ F^τ θ*^τ / F̄.
    ``penalty`` returns λ/2 Σ_i F̄_i (θ_i − θ̄_i)², which differs from the sum over tasks only
    by that constant: the same gradients, the same training.
    """

    _state = ("fisher", "anchor")

    def __init__(self, model: nn.Module, strength: float, examples: int = FISHER_EXAMPLES):
        self.strength, self.examples = strength, examples
        params = _trainable(model)
        self.fisher = _zeros_like(params)  # F̄
        self.anchor = _copy(params)        # θ̄ (any value while F̄ = 0)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.strength / 2 * _weighted_distance(model, self.fisher, self.anchor)

    def after_step(self, model: nn.Module) -> None:
        pass

    def end_task(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                 context: int) -> None:
        """Add this task's Fisher (on the inputs of ``data``: x (N, ...); labels unused) and move
        θ̄ towards θ*."""
        x = data[0][: self.examples]
        params = _trainable(model)
        fisher = _zeros_like(params)
        for n in range(len(x)):  # squares of per-example gradients: one example at a time
            log_p = F.log_softmax(model(x[n:n + 1], context), dim=1)[0]  # (C,)
            probs = log_p.detach().exp()
            one_hot = torch.eye(len(log_p), dtype=log_p.dtype, device=log_p.device)  # (C, C)
            # every class's gradient in one backward pass, vmapped over the C one-hot outputs
            grads = torch.autograd.grad(log_p, list(params.values()), grad_outputs=one_hot,
                                        is_grads_batched=True, allow_unused=True)  # (C, *shape)
            for name, g in zip(params, grads):
                if g is not None:
                    fisher[name] += torch.tensordot(probs, g.pow(2), dims=1)  # Σ_c p_c g_c²
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, p in params.items():
                task_fisher = fisher[name] / max(len(x), 1)
                total = self.fisher[name] + task_fisher
                weighted = self.fisher[name] * self.anchor[name] + task_fisher * p
                # the first consolidation (no Fisher yet) anchors exactly at θ*
                self.anchor[name].copy_(torch.where(self.fisher[name] > 0, weighted / total, p))
                self.fisher[name].copy_(total)


class SI(_Penalty):
    """Synaptic intelligence (Zenke et al. 2017), as its reference code (ganguli-lab/pathint,
    ``PATH_INT_PROTOCOL`` with omega_decay='sum') computes it:

        L = L_t + c Σ_i Ω_i (θ_i − θ̃_i)²,   Ω_i ← max(0, Ω_i + ω_i^τ / ((Δ_i^τ)² + ξ)) per task τ

    ω_i^τ = −Σ_steps g_i · δθ_i, the path integral over task τ of the task loss's gradient g
    (the penalty's own gradient is subtracted from the parameter's .grad) times each update δθ;
    Δ^τ the total change of θ over τ; θ̃ the parameters at the end of the last task; ξ =
    SI_DAMPING (the reference's permuted-MNIST value). The clip at 0 is the reference's ReLU: a
    negative importance would reward moving away from θ̃. ω is accumulated in ``after_step``
    and consolidated into Ω in ``end_task``.
    """

    _state = ("importance", "anchor", "omega", "previous")

    def __init__(self, model: nn.Module, strength: float, damping: float = SI_DAMPING):
        self.strength, self.damping = strength, damping
        params = _trainable(model)
        self.importance = _zeros_like(params)  # Ω
        self.anchor = _copy(params)            # θ̃: the parameters when the current task began
        self.omega = _zeros_like(params)       # ω of the current task so far
        self.previous = _copy(params)          # θ before the next update

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.strength * _weighted_distance(model, self.importance, self.anchor)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """ω += −g_task · δθ, with .grad = g_task + 2c Ω (θ_prev − θ̃) (the penalty's part)."""
        for name, p in _trainable(model).items():
            previous = self.previous[name]
            if p.grad is not None:
                pulled = 2 * self.strength * self.importance[name] * (previous - self.anchor[name])
                self.omega[name] -= (p.grad - pulled) * (p - previous)  # −g_task · δθ
            previous.copy_(p)

    @torch.no_grad()
    def end_task(self, model: nn.Module, data=None, context: int | None = None) -> None:
        """Ω = max(0, Ω + ω / (Δ² + ξ)); then ω = 0 and θ̃ = θ."""
        for name, p in _trainable(model).items():
            change = p - self.anchor[name]
            self.importance[name] += self.omega[name] / (change.pow(2) + self.damping)
            self.importance[name].clamp_(min=0)
            self.omega[name].zero_()
            self.anchor[name].copy_(p)
            self.previous[name].copy_(p)


def build_penalty(cfg, model: nn.Module) -> EWC | SI | None:
    """The penalty a TrialConfig asks for (None for 'none'), for ``model`` as it is now."""
    if cfg.penalty == "ewc":
        return EWC(model, cfg.penalty_strength)
    if cfg.penalty == "si":
        return SI(model, cfg.penalty_strength)
    return None
