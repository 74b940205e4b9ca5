"""Incremental CIFAR (iCIFAR, PSP §4.2): the output labels change from task to task.

Task 0 is CIFAR-10 (all 50,000 training and 10,000 test images). Task t ≥ 1 is the ten CIFAR-100
classes 10(t−1) … 10(t−1)+9 (fine labels), relabelled 0 … 9: tasks 1–4 are classes 0–39, and
at most 11 tasks exist. The split is fixed, not drawn from the trial's seed, so that every seed
and every model of a sweep faces the same sequence of tasks (the paper only says "disjoint sets
of 10 classes"). Each task then has ten labels 0 … 9 and one 10-way read-out serves them all —
exactly the output interference the paper studies.

Images stay images: x is (N, 3, 32, 32), for the convolutional models. Every task is normalised
with the per-channel mean and standard deviation of the CIFAR-10 training images (one fixed input
transform for all tasks; the statistics are computed from the data, not hard-coded).

Training batches are augmented the standard CIFAR way — a random 32×32 crop of the image
zero-padded by 4 pixels, and a horizontal flip with probability ½ — drawn from (seed, step), so a
trial resumed at a task boundary sees the same batches. (The paper does not say whether it
augments; ``augment=False`` turns it off.) Test sets are never augmented.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data import Dataset

CLASSES_PER_TASK = 10
CIFAR100_CLASSES = 100
MAX_TASKS = 1 + CIFAR100_CLASSES // CLASSES_PER_TASK  # CIFAR-10 + ten CIFAR-100 splits
PAD = 4
_AUGMENT_TAG = 0x61756720  # "aug ": keeps the augmentation stream apart from other seeded draws


def cifar100_classes(task: int) -> range:
    """The CIFAR-100 fine labels of task ``task`` ≥ 1 (they become labels 0..9 in this order)."""
    if not 1 <= task < MAX_TASKS:
        raise IndexError(f"iCIFAR has tasks 0..{MAX_TASKS - 1}, not {task}")
    first = CLASSES_PER_TASK * (task - 1)
    return range(first, first + CLASSES_PER_TASK)


class IncrementalCifarStream:
    """iCIFAR: task 0 = CIFAR-10, task t ≥ 1 = CIFAR-100 classes 10(t−1)..10(t−1)+9 → 0..9.

    The two datasets are passed in (tests give tiny fake ones); both hold images (N, 3, H, W)
    in [0, 1] and integer labels (CIFAR-10: 0..9, CIFAR-100: 0..99 fine labels).
    """

    def __init__(self, cifar10: Dataset, cifar100: Dataset, seed: int, *,
                 test_examples: int | None = None, augment: bool = True):
        if cifar10.image_shape != cifar100.image_shape:
            raise ValueError(f"CIFAR-10 images {cifar10.image_shape} and CIFAR-100 images "
                             f"{cifar100.image_shape} differ in shape")
        self.cifar10, self.cifar100 = cifar10, cifar100
        self.seed, self.test_examples, self.augment = seed, test_examples, augment
        self.image_shape = cifar10.image_shape  # (C, H, W)
        self.in_features = int(np.prod(self.image_shape))  # build_model reads it as C·H·W
        # Per-channel statistics of the CIFAR-10 training images, shaped to broadcast: (1, C, 1, 1)
        self.mean = cifar10.train_x.mean(dim=(0, 2, 3), keepdim=True)
        self.std = cifar10.train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self._test_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _select(self, task: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and 0..9 labels of ``task`` from one split of its source dataset."""
        if task == 0:
            return x, y
        classes = cifar100_classes(task)
        keep = (y >= classes.start) & (y < classes.stop)
        return x[keep], y[keep] - classes.start

    def train_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``task``'s normalised training images (N, C, H, W) and labels (N,) in 0..9."""
        source = self.cifar10 if task == 0 else self.cifar100
        x, y = self._select(task, source.train_x, source.train_y)
        return self._normalise(x), y

    def test_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``task``'s normalised test images, at most ``test_examples`` of them (cached: the
        loop asks for a test set at every evaluation)."""
        if task not in self._test_cache:
            source = self.cifar10 if task == 0 else self.cifar100
            x, y = self._select(task, source.test_x, source.test_y)
            limit = self.test_examples or len(y)
            self._test_cache[task] = (self._normalise(x[:limit]), y[:limit])
        return self._test_cache[task]

    def batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, step: int):
        """The training batch of ``step`` (1-based): (B, C, H, W) images, augmented, and labels."""
        xb, yb = x[index], y[index]
        if not self.augment:
            return xb, yb
        return augment_batch(xb, _step_generator(self.seed, step)), yb


def _step_generator(seed: int, step: int) -> torch.Generator:
    words = np.random.SeedSequence([seed, _AUGMENT_TAG, step]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Random crop of the zero-padded image plus a random horizontal flip, per example.

    x: (B, C, H, W) → (B, C, H, W). Output pixel (i, j) of example b is padded pixel
    (oy_b + i, ox_b + j), or (oy_b + i, ox_b + W − 1 − j) when flipped, with offsets
    oy, ox ∈ {0..2·pad} — one gather, no per-example loop.
    """
    batch, _, height, width = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator).to(x.device)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    cols_order = torch.arange(width, device=x.device)
    cols_order = torch.where(flip[:, None], cols_order.flip(0), cols_order)  # (B, W)
    rows = offsets[0][:, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[1][:, None] + cols_order                             # (B, W)
    b = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice: the result is (B, H, W, C).
    out = padded[b, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def build_incremental_stream(cfg, dataset: Dataset, *, cifar100: Dataset | None = None):
    """iCIFAR for a TrialConfig. ``dataset`` is the loop's dataset (CIFAR-10, from
    ``load_dataset('cifar', data_dir)``); CIFAR-100 is read from cfg.data_dir unless given
    (``data_dir/cifar-100-python/``, see trainables.data)."""
    if cfg.dataset != "cifar":
        raise ValueError(f"stream 'incremental' needs dataset 'cifar', not {cfg.dataset!r}")
    if cfg.tasks > MAX_TASKS:
        raise ValueError(f"iCIFAR has at most {MAX_TASKS} tasks (CIFAR-10 + 10 CIFAR-100 splits), "
                         f"not {cfg.tasks}")
    if cifar100 is None:
        from trainables.data import load_dataset  # cached per process, like the loop's dataset

        cifar100 = load_dataset("cifar100", cfg.data_dir).to(dataset.train_x.device)
    return IncrementalCifarStream(dataset, cifar100, cfg.seed, test_examples=cfg.test_examples)
