"""Supermasks in Superposition (SupSup, Wortsman et al. 2020): one binary mask per task over one
fixed random network, and task inference from the gradient of the output entropy.

Weights (never trained). Each layer's weight is a signed constant, W_ij = σ · s_ij with
s_ij ∈ {−1, +1} uniformly at random and σ = √(2 / fan_in) (Kaiming's std for ReLU), drawn once
from the trial's seed and stored as a buffer (requires_grad False).

Masks (scenario GG: the task k is given). Task k owns a real score tensor S_k per layer; the
forward pass of task k uses

    y = (W ⊙ M_k) x,    M_k = top_ρ(|S_k|)  (1 on the ⌊ρ·n⌉ largest |scores|, 0 elsewhere),

ρ = ``density`` (the kept fraction). The top-k selection has no useful derivative, so
edge-popup's straight-through estimator passes ∂L/∂M_k on to |S_k| unchanged:
∂L/∂S_k := ∂L/∂M_k ⊙ sign(S_k).
Scores are one Parameter per task, so training task k leaves the other tasks' gradients None and
no optimizer (not even one with momentum) moves another task's mask.

Task inference (scenario GNu: the task is not given at test time). With coefficients α over the
K learned masks, the superposed network is

    f(x; α) = network with weights W ⊙ Σ_k α_k M_k,

and the objective is the output entropy averaged over the batch,
H(α) = −(1/B) Σ_b Σ_c p_bc log p_bc, p_b = softmax(f(x_b; α)).
One-shot: α = 1/K for every mask and the task is argmin_k ∂H/∂α_k (raising the right mask's
coefficient makes the output most confident). Binary: starting from all K masks, set α uniform
on the remaining ones and keep the half with the smaller gradient, ⌈log2 K⌉ rounds.

The gradient is computed without materialising K masked networks: with E_l = W_l ⊙ Σ_k α_k M_k,l
the effective weight of layer l, the chain rule gives

    ∂H/∂α_k = Σ_l ⟨∂H/∂E_l ⊙ W_l, M_k,l⟩,

one backward pass to E_l and one inner product per (task, layer).

Superfluous output neurons: with ``output_units`` > the number of classes (labels still 0..9),
the cross-entropy of every task pushes the unused logits down; the SupSup maintainers report
that GNu inference needs them (100–500 outputs on permuted MNIST).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INFER_BATCH = 128  # test examples per task-inference decision
_CHUNK = 32         # masks per inner-product chunk in the α gradient (bounds memory)


class _StraightThroughTopK(torch.autograd.Function):
    """M = top-k(a) as a 0/1 tensor for a = |S|; backward passes the gradient to a unchanged."""

    @staticmethod
    def forward(ctx, magnitude: torch.Tensor, n_keep: int) -> torch.Tensor:
        return topk_mask(magnitude, n_keep).to(magnitude.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean mask, True on exactly the ``n_keep`` entries with the largest |scores|."""
    flat = scores.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, n_keep, sorted=False).indices] = True
    return mask.view_as(scores)


class SupermaskLinear(nn.Module):
    """y = (W ⊙ M_k) x with W fixed signed constants and M_k the top-ρ mask of task k's scores.

    x: (B, in) → (B, out). No bias: the reference supermask networks have none (a bias would be
    a trained weight shared by every task).
    """

    def __init__(self, in_features: int, out_features: int, n_tasks: int, *, density: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 < density <= 1.0:
            raise ValueError(f"mask density must be in (0, 1], got {density}")
        self.in_features, self.out_features, self.density = in_features, out_features, density
        self.n_keep = max(1, round(density * in_features * out_features))
        sigma = math.sqrt(2.0 / in_features)
        signs = torch.randint(0, 2, (out_features, in_features), generator=generator).float() * 2 - 1
        self.register_buffer("weight", signs * sigma)  # (out, in), fixed
        # Kaiming-uniform scores (bound 1/√fan_in, nn.Linear's default): only their order matters
        # to the mask, their scale sets how fast the optimizer reorders them.
        bound = 1.0 / math.sqrt(in_features)
        self.scores = nn.ParameterList(
            nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound,
                                                                         generator=generator))
            for _ in range(n_tasks)
        )
        # Masks of tasks no longer trained are fixed: inference at every evaluation reuses them.
        self._frozen: dict[int, tuple[tuple, torch.Tensor]] = {}

    def mask(self, task: int) -> torch.Tensor:
        """M_task, (out, in) float 0/1, differentiable into the scores by straight-through."""
        # Through |S|: ∂L/∂S = ∂L/∂M · sign(S), so descending it grows |S| where keeping the
        # weight lowers the loss, whatever the sign of its score.
        return _StraightThroughTopK.apply(self.scores[task].abs(), self.n_keep)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask(task))  # (B, out)

    def frozen_mask(self, task: int) -> torch.Tensor:
        """M_task as (out, in) bool, no gradient; recomputed only when the scores have changed
        (every in-place update — optimizer step, load_state_dict — bumps the tensor's version)."""
        scores = self.scores[task]
        key = (scores._version, scores.data_ptr(), scores.device)
        cached = self._frozen.get(task)
        if cached is None or cached[0] != key:
            cached = (key, topk_mask(scores, self.n_keep))
            self._frozen[task] = cached
        return cached[1]


class SupSupMLP(nn.Module):
    """FC supermask network [in] + [units] * depth + [out], ReLU, every layer masked per task.

    forward(x (B, ...), task) → logits (B, out); inputs are flattened.
    """

    def __init__(self, in_features: int, units: int, depth: int, out_features: int, n_tasks: int,
                 *, density: float = 0.5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        widths = [in_features] + [units] * depth + [out_features]
        self.layers = nn.ModuleList(
            SupermaskLinear(n_in, n_out, n_tasks, density=density, generator=g)
            for n_in, n_out in zip(widths[:-1], widths[1:])
        )
        self.n_tasks = n_tasks

    def forward_weights(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """The network with given effective weights E_l (one per layer): (B, ...) → (B, out)."""
        h = x.flatten(1)  # (B, in)
        for i, weight in enumerate(weights):
            if i > 0:
                h = F.relu(h)
            h = F.linear(h, weight)  # (B, width_l)
        return h

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} has no mask (there are {self.n_tasks})")
        return self.forward_weights(x, [layer.weight * layer.mask(task) for layer in self.layers])

    @torch.no_grad()
    def task_masks(self, n_tasks: int) -> list[list[torch.Tensor]]:
        """The masks of tasks 0..n_tasks−1: per layer, a list of (out, in) bool tensors."""
        return [[layer.frozen_mask(k) for k in range(n_tasks)] for layer in self.layers]

    def extra_eval_rows(self, x_test: torch.Tensor, y_test: torch.Tensor, eval_task: int,
                        step: int, task: int) -> list[dict]:
        """Task-inference accuracy (GNu) on eval_task's test set, for the training loop.

        Every mask learned so far (tasks 0..task) is a candidate; the accuracy is the fraction of
        test batches (INFER_BATCH examples each) whose inferred task is eval_task.
        """
        n_tasks = min(task + 1, self.n_tasks)
        masks = self.task_masks(n_tasks)
        correct = 0
        starts = range(0, len(y_test), INFER_BATCH)
        for start in starts:
            inferred = infer_task_one_shot(self, x_test[start:start + INFER_BATCH], n_tasks,
                                           masks=masks)
            correct += inferred == eval_task
        return [{"step": step, "task": task, "context": task, "split": "infer",
                 "eval_task": eval_task, "loss": None, "accuracy": correct / len(starts),
                 "n_examples": len(y_test)}]


def output_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = −(1/B) Σ_b Σ_c p_bc log p_bc with p_b = softmax(logits_b); logits (B, C) → scalar."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def _chunk(masks: list[torch.Tensor], start: int) -> torch.Tensor:
    """Masks start..start+_CHUNK−1 of one layer as a float matrix (c, out·in)."""
    return torch.stack(masks[start:start + _CHUNK]).flatten(1).float()


def alpha_gradient(model: SupSupMLP, x: torch.Tensor, alpha: torch.Tensor,
                   masks: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
    """∂H/∂α_k of the superposed network W ⊙ Σ_k α_k M_k at α (K,), for k < K: shape (K,).

    masks: ``model.task_masks(K)`` when already computed (reused across test batches).
    """
    n_tasks = len(alpha)
    if masks is None:
        masks = model.task_masks(n_tasks)
    alpha = alpha.to(model.layers[0].weight.device, torch.float32)
    effective = []
    for layer, m in zip(model.layers, masks):
        mix = torch.zeros(layer.weight.shape, device=alpha.device)  # (out, in): Σ_k α_k M_k
        for start in range(0, n_tasks, _CHUNK):
            mix += (alpha[start:start + _CHUNK] @ _chunk(m, start)).view_as(mix)
        effective.append((layer.weight * mix).requires_grad_())  # E_l, a leaf
    with torch.enable_grad():
        entropy = output_entropy(model.forward_weights(x, effective))
        grads = torch.autograd.grad(entropy, effective)  # ∂H/∂E_l
    total = torch.zeros(n_tasks, device=alpha.device)
    for layer, m, g in zip(model.layers, masks, grads):
        gw = (g * layer.weight).flatten()  # ∂H/∂E_l ⊙ W_l, (out·in,)
        for start in range(0, n_tasks, _CHUNK):
            total[start:start + _CHUNK] += _chunk(m, start) @ gw
    return total


def infer_task_one_shot(model: SupSupMLP, x: torch.Tensor, n_tasks: int,
                        masks: list[list[torch.Tensor]] | None = None) -> int:
    """SupSup one-shot: α = 1/K, the task is argmin_k ∂H/∂α_k. x: one batch (B, ...)."""
    if n_tasks == 1:
        return 0
    alpha = torch.full((n_tasks,), 1.0 / n_tasks)
    return int(alpha_gradient(model, x, alpha, masks).argmin())


def infer_task_binary(model: SupSupMLP, x: torch.Tensor, n_tasks: int,
                      masks: list[list[torch.Tensor]] | None = None) -> int:
    """SupSup binary search: α uniform over the remaining candidates, keep the ⌈n/2⌉ with the
    smallest ∂H/∂α_k, repeat until one remains (⌈log2 K⌉ gradient evaluations)."""
    if masks is None:
        masks = model.task_masks(n_tasks)
    candidates = torch.arange(n_tasks)
    while len(candidates) > 1:
        alpha = torch.zeros(n_tasks)
        alpha[candidates] = 1.0 / len(candidates)
        grad = alpha_gradient(model, x, alpha, masks).cpu()[candidates]
        keep = math.ceil(len(candidates) / 2)
        candidates = candidates[torch.argsort(grad)[:keep]]
    return int(candidates[0])


def build_supsup(cfg, in_features, n_contexts: int) -> SupSupMLP:
    """The SupSup network of a TrialConfig: units × depth hidden layers, cfg.output_units outputs
    (superfluous neurons beyond the 10 labels), one mask per context, density cfg.mask_density."""
    if cfg.psp != "none":
        raise ValueError("model 'supsup' uses masks, not contexts: set psp='none'")
    if cfg.heads != "single":
        raise ValueError("model 'supsup' has one output layer, masked per task: set heads='single'")
    features = math.prod(in_features) if isinstance(in_features, (tuple, list)) else in_features
    density = getattr(cfg, "mask_density", 0.5)
    return SupSupMLP(features, cfg.units, cfg.depth, cfg.output_units, n_contexts,
                     density=density, seed=cfg.seed)
