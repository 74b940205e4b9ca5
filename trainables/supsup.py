"""Supermasks in Superposition (SupSup, Wortsman et al. 2020): one binary mask per task over one
fixed random network, and task inference from the gradient of the output entropy.

Weights (never trained). Each layer's weight is a signed constant, W_ij = σ · s_ij with
s_ij ∈ {−1, +1} uniformly at random and σ = √(2 / fan_in) (Kaiming's std for ReLU), drawn once
from the trial's seed and stored as a buffer (requires_grad False).

Masks (scenario GG: the task k is given). Task k owns a real score tensor S_k per layer, drawn
U(−1/√fan_in, 1/√fan_in) (the reference's kaiming_uniform with a = √5); the forward pass of
task k uses y = (W ⊙ M_k) x with one of two rules (``mask_rule``):

    sign:  M_k = [S_k ≥ 0]                      (SupSup's fast multitask mask; the reference's
                                                 GNu rule: each mask keeps about half, freely)
    topk:  M_k = top_ρ(|S_k|)                   (edge-popup: 1 on the ⌊ρ·n⌉ largest |scores|,
                                                 ρ = ``density``)

Neither rule has a useful derivative, so the straight-through estimator passes ∂L/∂M_k on to
what the rule thresholds: ∂L/∂S_k := ∂L/∂M_k (sign), ∂L/∂S_k := ∂L/∂M_k ⊙ sign(S_k) (topk,
through |S_k|). Scores are one Parameter per task, so training task k leaves the other tasks'
gradients None and no optimizer (not even one with momentum) moves another task's mask.

Task inference (scenario GNu: the task is not given at test time). With coefficients α over the
K learned masks, the superposed network is

    f(x; α) = network with weights E_l = W_l ⊙ Σ_k α_k M_k,l,

and a test batch's objective is the output entropy averaged over its first m examples
(m = ``infer_examples``; the reference uses m = 1, the first example of each 128-image batch),
H_b(α) = −(1/m) Σ_{i<m} Σ_c p_ic log p_ic, p_i = softmax(f(x_i; α)). One-shot: α = 1/K for every
mask and the batch's task is argmin_k ∂H_b/∂α_k (raising the right mask's coefficient makes
the output most confident). Binary: starting from all K masks, set α uniform on the remaining
ones and keep the half with the smaller gradient, ⌈log2 K⌉ rounds.

The gradient needs no K masked networks. With z_l,i the pre-activation of layer l for example
i, h_l−1,i its input and δ_l,i = ∂(Σ_b H_b)/∂z_l,i (example i is in one batch only, so that is
∂H_b/∂z_l,i), the chain rule gives

    ∂H_b/∂α_k = Σ_l ⟨G_b,l ⊙ W_l, M_k,l⟩,   G_b,l = ∂H_b/∂E_l = Σ_{i∈b} δ_l,i h_l−1,iᵀ:

one forward and backward pass for every batch of a test split, then one matrix product per
layer between the batches' G_b,l ⊙ W_l and the stacked masks.

Why sign is the default: besides being the reference's rule, it is the one whose one-shot
inference survived standardised inputs at the tests' short schedule. Trained there (RMSprop
1e-3, ten times the reference's rate), top-k masks learned a large negative offset in layer 0,
where most pixels sit at the background value (0 − 0.1307)/0.3081 = −0.42: on its own task's
data the right mask's layer-0 pre-activations averaged −1.5 (32% of units on) against ≈0 for
the other masks, so raising its α turned units off, shrank the logits and gave it the *least*
negative entropy gradient — one-shot inference picked a wrong task for every batch. Sign
masks kept their own task's pre-activations near zero mean (+0.2, 53% on) and found the task
(tests/test_supsup.py). Top-k at the reference's 1e-4 × 1000 steps also found it.

Superfluous output neurons: with ``output_units`` > the number of classes (labels still 0..9),
the cross-entropy of every task pushes the unused logits down; the SupSup maintainers report
that GNu inference needs them (100–500 outputs on permuted MNIST).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.config import INFER_BATCH

MASK_RULES = ("sign", "topk")


def topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean mask, True on exactly the ``n_keep`` entries with the largest |scores|."""
    flat = scores.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, n_keep, sorted=False).indices] = True
    return mask.view_as(scores)


def supermask(scores: torch.Tensor, rule: str, n_keep: int | None = None) -> torch.Tensor:
    """One layer's mask from its scores S, as a bool tensor of S's shape.

    sign: M = [S ≥ 0];  topk: M = 1 on the ``n_keep`` entries with the largest |S|.
    """
    if rule == "sign":
        return scores.detach() >= 0
    if rule == "topk":
        return topk_mask(scores, n_keep)
    raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {rule!r}")


class _StraightThrough(torch.autograd.Function):
    """M = supermask(a) as a 0/1 tensor; backward passes ∂L/∂M on to a unchanged."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, rule: str, n_keep: int | None) -> torch.Tensor:
        return supermask(a, rule, n_keep).to(a.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


class SupermaskLinear(nn.Module):
    """y = (W ⊙ M_k) x with W fixed signed constants and M_k task k's mask (rule sign or topk).

    x: (B, in) → (B, out). No bias: the reference supermask networks have none (a bias would be
    a trained weight shared by every task).
    """

    def __init__(self, in_features: int, out_features: int, n_tasks: int, *, rule: str = "sign",
                 density: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {rule!r}")
        if rule == "sign" and density is not None:
            raise ValueError("mask density applies to rule 'topk' only")
        if rule == "topk":
            density = 0.5 if density is None else density
            if not 0.0 < density <= 1.0:
                raise ValueError(f"mask density must be in (0, 1], got {density}")
        self.in_features, self.out_features = in_features, out_features
        self.rule, self.density = rule, density
        self.n_keep = max(1, round(density * in_features * out_features)) if density else None
        sigma = math.sqrt(2.0 / in_features)
        signs = torch.randint(0, 2, (out_features, in_features), generator=generator).float() * 2 - 1
        self.register_buffer("weight", signs * sigma)  # (out, in), fixed
        # Kaiming-uniform scores (bound 1/√fan_in, the reference's and nn.Linear's default): only
        # their signs or order matter to the mask, their scale sets how fast the optimizer
        # moves them across the threshold.
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
        if self.rule == "sign":
            return _StraightThrough.apply(self.scores[task], "sign", None)
        # Through |S|: ∂L/∂S = ∂L/∂M · sign(S), so descending it grows |S| where keeping the
        # weight lowers the loss, whatever the sign of its score.
        return _StraightThrough.apply(self.scores[task].abs(), "topk", self.n_keep)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask(task))  # (B, out)

    def frozen_mask(self, task: int) -> torch.Tensor:
        """M_task as (out, in) bool, no gradient; recomputed only when the scores have changed
        (every in-place update — optimizer step, load_state_dict — bumps the tensor's version)."""
        scores = self.scores[task]
        key = (scores._version, scores.data_ptr(), scores.device)
        cached = self._frozen.get(task)
        if cached is None or cached[0] != key:
            cached = (key, supermask(scores, self.rule, self.n_keep))
            self._frozen[task] = cached
        return cached[1]


class SupSupMLP(nn.Module):
    """FC supermask network [in] + [units] * depth + [out], ReLU, every layer masked per task.

    forward(x (B, ...), task) → logits (B, out); inputs are flattened. ``infer_examples`` and
    ``infer_every`` set the task inference of ``extra_eval_rows``; ``last_task`` (default: the
    last mask) always gets it.
    """

    def __init__(self, in_features: int, units: int, depth: int, out_features: int, n_tasks: int,
                 *, rule: str = "sign", density: float | None = None, seed: int = 0,
                 infer_examples: int = 1, infer_every: int = 1, last_task: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        widths = [in_features] + [units] * depth + [out_features]
        self.layers = nn.ModuleList(
            SupermaskLinear(n_in, n_out, n_tasks, rule=rule, density=density, generator=g)
            for n_in, n_out in zip(widths[:-1], widths[1:])
        )
        self.n_tasks = n_tasks
        self.infer_examples, self.infer_every = infer_examples, infer_every
        self.last_task = n_tasks - 1 if last_task is None else last_task
        self._stacked: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

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

    def stacked_masks(self, n_tasks: int) -> list[torch.Tensor]:
        """The masks of tasks 0..n_tasks−1 per layer as one float matrix (n_tasks, out·in).

        Kept until a mask changes: every test batch of every task at an evaluation multiplies
        by it, and rebuilding it is as costly as the product.
        """
        masks = self.task_masks(n_tasks)
        flat = [m for layer in masks for m in layer]
        cached = self._stacked
        if cached is None or len(cached[0]) != len(flat) or any(
                a is not b for a, b in zip(cached[0], flat)):
            cached = (flat, [torch.stack(layer).flatten(1).float() for layer in masks])
            self._stacked = cached
        return cached[1]

    def infer_due(self, task: int) -> bool:
        """Whether evaluations while training ``task`` infer tasks (every infer_every-th, last)."""
        return (task + 1) % self.infer_every == 0 or task == self.last_task

    def extra_eval_rows(self, x_test: torch.Tensor, y_test: torch.Tensor, eval_task: int,
                        step: int, task: int) -> list[dict]:
        """Task inference (GNu) on eval_task's test set, for the training loop: two rows.

        The test set is cut into batches of INFER_BATCH; each batch's task is inferred one-shot
        from its first ``infer_examples`` examples, among the masks learned so far (tasks
        0..task). ``infer``: the fraction of batches whose inferred task is eval_task.
        ``test_inferred``: the test accuracy when each batch uses the mask inferred for it; a
        batch given another task's mask counts as wrong, since that mask answers in the other
        task's labels (the reference's unshared_labels, as its GNu runs set it).
        """
        if not self.infer_due(task):
            return []
        n_tasks = min(task + 1, self.n_tasks)
        starts = range(0, len(y_test), INFER_BATCH)
        inferred = infer_tasks(self, [x_test[s:s + self.infer_examples] for s in starts],
                               n_tasks)                                        # (n_batches,)
        with torch.no_grad():
            # A batch whose inferred task is eval_task uses eval_task's own mask.
            hits = (self(x_test, eval_task).argmax(1) == y_test).float()      # (N,)
        batch = torch.arange(len(y_test), device=hits.device) // INFER_BATCH  # (N,)
        right = (inferred == eval_task).to(hits.device).float()               # (n_batches,)
        common = {"step": step, "task": task, "context": task, "eval_task": eval_task,
                  "loss": None, "n_examples": len(y_test)}
        return [{**common, "split": "infer", "accuracy": right.sum().item() / len(right)},
                {**common, "split": "test_inferred",
                 "accuracy": (hits * right[batch]).sum().item() / len(y_test)}]


def output_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = −(1/B) Σ_b Σ_c p_bc log p_bc with p_b = softmax(logits_b); logits (B, C) → scalar."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def alpha_gradients(model: SupSupMLP, batches: list[torch.Tensor],
                    alpha: torch.Tensor) -> torch.Tensor:
    """∂H_b/∂α_k of the superposed network W ⊙ Σ_k α_k M_k at α (K,), for every batch b (each
    (m_b, ...), H_b its mean output entropy) and mask k < K: shape (n_batches, K)."""
    stacks = model.stacked_masks(len(alpha))                           # per layer (K, out·in)
    alpha = alpha.to(stacks[0].device, torch.float32)
    weights = [layer.weight * (alpha @ stack).view_as(layer.weight)  # E_l = W_l ⊙ Σ_k α_k M_k
               for layer, stack in zip(model.layers, stacks)]
    sizes = [len(b) for b in batches]
    x = torch.cat([b.flatten(1) for b in batches]).detach()           # (n, in)
    share = torch.cat([torch.full((m,), 1.0 / m) for m in sizes]).to(x.device)  # (n,)
    with torch.enable_grad():
        h, inputs, pre = x.requires_grad_(), [], []  # x a leaf only so that z_l has a graph
        for i, weight in enumerate(weights):
            if i > 0:
                h = F.relu(h)
            inputs.append(h.detach())                                  # h_l−1, (n, in_l)
            h = F.linear(h, weight)                                    # z_l, (n, out_l)
            pre.append(h)
        logp = F.log_softmax(h, dim=1)
        entropy = -(logp.exp() * logp).sum(1)                          # (n,)
        deltas = torch.autograd.grad((entropy * share).sum(), pre)     # δ_l, (n, out_l)
    ends = torch.tensor(sizes).cumsum(0).tolist()
    segments = list(zip([0] + ends[:-1], ends))
    total = torch.zeros(len(batches), len(alpha), device=x.device)
    for layer, stack, h_in, delta in zip(model.layers, stacks, inputs, deltas):
        grad_e = torch.stack([delta[s:e].T @ h_in[s:e] for s, e in segments])  # (nb, out, in)
        total += (grad_e * layer.weight).flatten(1) @ stack.T         # (nb, K)
    return total


def alpha_gradient(model: SupSupMLP, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """∂H/∂α_k for one batch x (B, ...), H its mean output entropy: shape (K,)."""
    return alpha_gradients(model, [x], alpha)[0]


def infer_tasks(model: SupSupMLP, batches: list[torch.Tensor], n_tasks: int) -> torch.Tensor:
    """SupSup one-shot for each batch: α = 1/K, the task is argmin_k ∂H_b/∂α_k. (n_batches,)."""
    if n_tasks == 1:
        return torch.zeros(len(batches), dtype=torch.long)
    alpha = torch.full((n_tasks,), 1.0 / n_tasks)
    return alpha_gradients(model, batches, alpha).argmin(1)


def infer_task_one_shot(model: SupSupMLP, x: torch.Tensor, n_tasks: int) -> int:
    """SupSup one-shot on one batch x (B, ...): the inferred task."""
    return int(infer_tasks(model, [x], n_tasks)[0])


def infer_task_binary(model: SupSupMLP, x: torch.Tensor, n_tasks: int) -> int:
    """SupSup binary search: α uniform over the remaining candidates, keep the ⌈n/2⌉ with the
    smallest ∂H/∂α_k, repeat until one remains (⌈log2 K⌉ gradient evaluations)."""
    candidates = torch.arange(n_tasks)
    while len(candidates) > 1:
        alpha = torch.zeros(n_tasks)
        alpha[candidates] = 1.0 / len(candidates)
        grad = alpha_gradient(model, x, alpha).cpu()[candidates]
        keep = math.ceil(len(candidates) / 2)
        candidates = candidates[torch.argsort(grad)[:keep]]
    return int(candidates[0])


def build_supsup(cfg, in_features, n_contexts: int) -> SupSupMLP:
    """The SupSup network of a TrialConfig: units × depth hidden layers, cfg.output_units outputs
    (superfluous neurons beyond the 10 labels), one mask per context (cfg.mask_rule,
    cfg.mask_density), task inference as cfg.infer_examples and cfg.infer_every say."""
    if cfg.psp != "none":
        raise ValueError("model 'supsup' uses masks, not contexts: set psp='none'")
    if cfg.heads != "single":
        raise ValueError("model 'supsup' has one output layer, masked per task: set heads='single'")
    features = math.prod(in_features) if isinstance(in_features, (tuple, list)) else in_features
    return SupSupMLP(features, cfg.units, cfg.depth, cfg.output_units, n_contexts,
                     rule=cfg.mask_rule, density=cfg.mask_density, seed=cfg.seed,
                     infer_examples=cfg.infer_examples, infer_every=cfg.infer_every,
                     last_task=cfg.tasks - 1)
