"""Networks built from superposed layers. Every layer, the output layer included, is superposed."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.contexts import is_complex
from trainables.layers import SuperposedLinear


def complex_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU on the real and imaginary parts separately (the reference code's choice)."""
    if x.is_complex():
        return torch.complex(F.relu(x.real), F.relu(x.imag))
    return F.relu(x)


class SuperposedMLP(nn.Module):
    """FC network [in] + [units] * depth + [out], ReLU, one superposed layer per matmul.

    forward(x (B, in) or images (B, C, H, W), context) -> logits (B, out), real (the real part
    for complex PSP).
    """

    def __init__(self, in_features: int, units: int, depth: int, out_features: int, *, psp: str,
                 seed: int, learn_context: bool = False, n_contexts: int = 1):
        super().__init__()
        widths = [in_features] + [units] * depth + [out_features]
        self.layers = nn.ModuleList(
            SuperposedLinear(n_in, n_out, psp=psp, seed=seed, layer=i, bias=psp == "none",
                             learn_context=learn_context, n_contexts=n_contexts)
            for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.complex = is_complex(psp)

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        h = x.flatten(1)  # (B, in): images arrive as (B, C, H, W) from image streams
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = complex_relu(h)
            h = layer(h, context)  # (B, width_i)
        return h.real if h.is_complex() else h  # (B, out)


def build_model(cfg, in_features: int, n_contexts: int) -> nn.Module:
    """The network a TrialConfig asks for, initialised deterministically from cfg.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        # Imported here: resnet and supsup import this module.
        if cfg.model == "mlp" and cfg.heads == "multi":
            from trainables.resnet import build_multihead_mlp
            return build_multihead_mlp(cfg, in_features, n_contexts)
        if cfg.model == "mlp":
            return SuperposedMLP(in_features, cfg.units, cfg.depth, cfg.output_units, psp=cfg.psp,
                                 seed=cfg.seed, learn_context=cfg.learn_context,
                                 n_contexts=n_contexts)
        if cfg.model == "resnet18":  # in_features: C·H·W or a (C, H, W) shape
            from trainables.resnet import build_resnet18
            return build_resnet18(cfg, in_features, n_contexts)
        if cfg.model == "supsup":
            from trainables.supsup import build_supsup
            return build_supsup(cfg, in_features, n_contexts)
    raise ValueError(f"model {cfg.model!r} is not available in this build")


def flops_per_example(model: nn.Module) -> float:
    """Forward multiply-adds ×2 of the linear layers (complex matmuls count 4 real ones)."""
    total = 0.0
    for layer in model.modules():
        if isinstance(layer, SuperposedLinear):
            factor = 4 if layer.weight_imag is not None else 1
            total += 2 * layer.in_features * layer.out_features * factor
            if layer.psp == "rotation":
                total += 2 * layer.in_features**2
    return total


def parameter_count(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
