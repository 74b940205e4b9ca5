"""Superposed ResNet-18 for incremental CIFAR (PSP §4.2), and per-task output heads.

The CIFAR variant of ResNet-18: a 3×3 stride-1 stem (no max-pool, 32×32 images are small), four
stages of two BasicBlocks with widths w, 2w, 4w, 8w (w = ``width``; 64 is the paper's network)
and strides 1, 2, 2, 2, global average pooling and one linear read-out.

Every convolution after the stem is superposed, the 1×1 shortcut projections included (PSP
eq. 8):

    y_n = (w_n ⊙ c_k) * x,     c_k ∈ shape (in_ch, kh, kw), shared by all output channels n,

and so is the read-out (eq. 4): logits = W (c_k ⊙ h). With psp='none' every context is 1 and the
network is a standard ResNet-18. The stem is a plain ``nn.Conv2d`` (its default initialisation),
shared by every task, as in the reference's ``HashResNet``; ``superpose_stem=True`` superposes it
too. Layer index 0 belongs to the stem either way, so the other layers bind the same contexts
with or without a superposed stem.

BatchNorm follows the reference code: ``BatchNorm2d(affine=False, track_running_stats=False)``.
Without an affine transform BN holds no parameters to be overwritten by later tasks, and without
running statistics it normalises with the current batch's statistics in training *and* in
evaluation — so nothing in BN is shared state that drifts across tasks. The convolutions then
need no bias (BN subtracts it), so none is used even for psp='none'.

Complex superposition (complex, onepower) makes activations complex; BN normalises the real and
imaginary parts separately and ReLU acts on each part (as ``complex_relu`` does for the MLP).

The multihead baseline (``heads='multi'``) keeps the trunk and gives each task its own read-out:
task k's logits come from head k only, so training task k never changes another task's head.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from trainables.layers import SuperposedConv2d, SuperposedLinear
from trainables.models import SuperposedMLP, complex_relu


def _batch_norm(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BN of a real tensor, or of the real and imaginary parts of a complex one separately."""
    if x.is_complex():
        return torch.complex(bn(x.real), bn(x.imag))
    return bn(x)


def image_shape(in_features) -> tuple[int, int, int]:
    """(C, H, W) from a shape tuple, or from a flat size C·H·W of square 3- or 1-channel images."""
    if isinstance(in_features, (tuple, list, torch.Size)):
        return tuple(int(v) for v in in_features)  # type: ignore[return-value]
    for channels in (3, 1):
        side = math.isqrt(in_features // channels)
        if in_features % channels == 0 and side * side * channels == in_features:
            return (channels, side, side)
    raise ValueError(f"cannot read {in_features} input features as square 3- or 1-channel images")


class _ConvFactory:
    """Hands out superposed convolutions with consecutive layer indices, so that every
    convolution binds its own contexts (seed, layer, index)."""

    def __init__(self, psp: str, seed: int, learn_context: bool, n_contexts: int):
        self.psp, self.seed, self.learn, self.n_contexts = psp, seed, learn_context, n_contexts
        self.layer = 0

    def __call__(self, n_in: int, n_out: int, kernel: int, stride: int) -> SuperposedConv2d:
        conv = SuperposedConv2d(n_in, n_out, kernel, psp=self.psp, seed=self.seed, layer=self.layer,
                                stride=stride, padding=kernel // 2, bias=False,
                                learn_context=self.learn, n_contexts=self.n_contexts)
        self.layer += 1
        return conv


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=False, track_running_stats=False)


class SuperposedBasicBlock(nn.Module):
    """out = relu(BN(conv2(relu(BN(conv1(x))))) + shortcut(x)); shortcut = BN(conv1×1(x)) when
    the shape changes, else x. x: (B, n_in, H, W) → (B, n_out, H/stride, W/stride)."""

    def __init__(self, conv: _ConvFactory, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv(n_in, n_out, 3, stride), _norm(n_out)
        self.conv2, self.bn2 = conv(n_out, n_out, 3, 1), _norm(n_out)
        self.shortcut = conv(n_in, n_out, 1, stride) if stride != 1 or n_in != n_out else None
        self.bn_shortcut = _norm(n_out) if self.shortcut is not None else None

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        h = complex_relu(_batch_norm(self.bn1, self.conv1(x, context)))
        h = _batch_norm(self.bn2, self.conv2(h, context))
        skip = x if self.shortcut is None else _batch_norm(self.bn_shortcut, self.shortcut(x, context))
        return complex_relu(h + skip)


class SuperposedResNet18Trunk(nn.Module):
    """Stem + 4 stages × 2 BasicBlocks + global average pooling: (B, C, H, W) → (B, 8w) features.

    Inputs flattened to (B, C·H·W) are reshaped to ``image_shape``.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, *, psp: str, seed: int,
                 learn_context: bool = False, n_contexts: int = 1, superpose_stem: bool = False):
        super().__init__()
        self.image_shape = tuple(image_shape)
        conv = _ConvFactory(psp, seed, learn_context, n_contexts)
        if superpose_stem:
            self.stem = conv(image_shape[0], width, 3, 1)
        else:
            self.stem = nn.Conv2d(image_shape[0], width, 3, padding=1, bias=False)
            conv.layer = 1  # index 0 is the stem's
        self.superpose_stem = superpose_stem
        self.bn_stem = _norm(width)
        blocks, n_in = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            n_out = width * 2**stage
            blocks += [SuperposedBasicBlock(conv, n_in, n_out, stride),
                       SuperposedBasicBlock(conv, n_out, n_out, 1)]
            n_in = n_out
        self.blocks = nn.ModuleList(blocks)
        self.out_features = n_in
        self.n_conv_layers = conv.layer  # 20: stem, 16 in blocks, 3 shortcuts (plain stem too)

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(-1, *self.image_shape)  # (B, C, H, W)
        h = self.stem(x, context) if self.superpose_stem else self.stem(x)  # (B, w, H, W)
        h = complex_relu(_batch_norm(self.bn_stem, h))
        for block in self.blocks:
            h = block(h, context)  # (B, 8w, H/8, W/8) after the last stage
        return h.mean(dim=(2, 3))  # (B, 8w); mean works on complex tensors, avg-pool does not


class SuperposedResNet18(nn.Module):
    """Superposed ResNet-18 with one superposed linear read-out shared by all tasks.

    forward(x (B, C, H, W), context) → logits (B, out_features), real (real part for complex PSP).
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, out_features: int, *,
                 psp: str, seed: int, learn_context: bool = False, n_contexts: int = 1,
                 superpose_stem: bool = False):
        super().__init__()
        self.trunk = SuperposedResNet18Trunk(image_shape, width, psp=psp, seed=seed,
                                             learn_context=learn_context, n_contexts=n_contexts,
                                             superpose_stem=superpose_stem)
        self.head = SuperposedLinear(self.trunk.out_features, out_features, psp=psp, seed=seed,
                                     layer=self.trunk.n_conv_layers, bias=psp == "none",
                                     learn_context=learn_context, n_contexts=n_contexts)

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        logits = self.head(self.trunk(x, context), context)  # (B, out)
        return logits.real if logits.is_complex() else logits


class TaskHeads(nn.Module):
    """One (superposed) linear read-out per context index: head k maps features to logits for
    the context k. Only head k takes part in a forward pass with context k, so only its
    parameters receive gradients."""

    def __init__(self, in_features: int, out_features: int, n_heads: int, *, psp: str, seed: int,
                 layer: int, learn_context: bool = False, n_contexts: int = 1):
        super().__init__()
        self.heads = nn.ModuleList(
            SuperposedLinear(in_features, out_features, psp=psp, seed=seed, layer=layer,
                             bias=psp == "none", learn_context=learn_context, n_contexts=n_contexts)
            for _ in range(n_heads)
        )

    def forward(self, features: torch.Tensor, context: int) -> torch.Tensor:
        if not 0 <= context < len(self.heads):
            raise IndexError(f"context {context} has no head (there are {len(self.heads)})")
        logits = self.heads[context](features, context)  # (B, out)
        return logits.real if logits.is_complex() else logits


class MultiHeadNet(nn.Module):
    """A shared trunk and one head per task: logits = head_k(act(trunk(x, k)), k).

    ``activation`` is applied between trunk and head: the ResNet trunk ends in pooled, already
    rectified features (identity), the MLP trunk ends in a pre-activation (ReLU).
    """

    def __init__(self, trunk: nn.Module, heads: TaskHeads, *, activation=None):
        super().__init__()
        self.trunk, self.heads = trunk, heads
        self.activation = activation

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        features = self.trunk(x, context)  # (B, F)
        if self.activation is not None:
            features = self.activation(features)
        return self.heads(features, context)  # (B, out)


def build_resnet18(cfg, in_features, n_contexts: int) -> nn.Module:
    """ResNet-18 for a TrialConfig: base width cfg.units (64 = the paper's), cfg.output_units
    outputs, one shared superposed head (heads='single') or one head per task ('multi')."""
    shape = image_shape(in_features)
    common = dict(psp=cfg.psp, seed=cfg.seed, learn_context=cfg.learn_context, n_contexts=n_contexts)
    if cfg.heads == "single":
        return SuperposedResNet18(shape, cfg.units, cfg.output_units,
                                  superpose_stem=cfg.superpose_stem, **common)
    trunk = SuperposedResNet18Trunk(shape, cfg.units, superpose_stem=cfg.superpose_stem, **common)
    heads = TaskHeads(trunk.out_features, cfg.output_units, n_contexts,
                      layer=trunk.n_conv_layers, **common)
    return MultiHeadNet(trunk, heads)


def build_multihead_mlp(cfg, in_features: int, n_contexts: int) -> nn.Module:
    """The MLP of ``SuperposedMLP`` with its output layer replaced by one head per task.

    The trunk is the same network up to the last hidden layer (layers 0..depth−1, the same
    context indices), so the single- and multi-head MLPs differ only in the read-out.
    """
    if cfg.depth < 1:
        raise ValueError("heads='multi' needs depth >= 1 (a hidden layer to share)")
    common = dict(psp=cfg.psp, seed=cfg.seed, learn_context=cfg.learn_context, n_contexts=n_contexts)
    trunk = SuperposedMLP(in_features, cfg.units, cfg.depth - 1, cfg.units, **common)
    heads = TaskHeads(cfg.units, cfg.output_units, n_contexts, layer=cfg.depth, **common)
    return MultiHeadNet(_ComplexTrunk(trunk), heads, activation=complex_relu)


class _ComplexTrunk(nn.Module):
    """SuperposedMLP returns the real part of its output; a trunk must hand the complex hidden
    layer to the heads unchanged, so this runs the MLP's layers itself."""

    def __init__(self, mlp: SuperposedMLP):
        super().__init__()
        self.layers = mlp.layers

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        h = x  # (B, in)
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = complex_relu(h)
            h = layer(h, context)  # (B, units)
        return h
