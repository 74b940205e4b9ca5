"""Incremental CIFAR (iCIFAR, PSP §4.2): the output labels change from task to task.

Task 0 is CIFAR-10 (all 50,000 training and 10,000 test images). Task t ≥ 1 is the ten CIFAR-100
classes f + 10(t−1) … f + 10(t−1) + 9 (fine labels), relabelled 0 … 9, f = cifar100_first_class.
The reference code (``datasets/class_incrementing.py``) takes task t's classes 10t … 10t+9 of
its dataset, so its CIFAR-100 tasks start at class 10 (f = 10: tasks 1–4 are classes 10–49) and
at most 10 tasks exist before it wraps back to CIFAR-10; f = 0 gives classes 0–39. The split is
fixed, not drawn from the trial's seed, so that every seed and every model of a sweep faces the
same sequence of tasks. Each task has ten labels 0 … 9 and one 10-way read-out serves them all —
exactly the output interference the paper studies.

Images stay images: x is (N, 3, 32, 32), for the convolutional models. Pixels are scaled by the
trial's ``input_norm`` (trainables.data.normalize_inputs): ``symmetric``, 2x − 1 ∈ [−1, 1], is
the reference's scaling and the default for this stream; ``standardize`` uses CIFAR-10's
per-channel mean and s.d.

The reference does not augment. ``augment=True`` adds the standard CIFAR augmentation — a random
32×32 crop of the image zero-padded by 4 pixels (black, as torchvision pads before
normalising), and a horizontal flip with probability ½ — drawn from (seed, step), so a trial
resumed at a task boundary sees the same batches. Test sets are never augmented.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data import Dataset, normalize_inputs

CLASSES_PER_TASK = 10
CIFAR100_CLASSES = 100
REFERENCE_FIRST_CLASS = 10  # the reference's task t is classes 10t..10t+9: CIFAR-100 from 10
PAD = 4
_AUGMENT_TAG = 0x61756720  # "aug ": keeps the augmentation stream apart from other seeded draws


def max_tasks(first_class: int = REFERENCE_FIRST_CLASS) -> int:
    """CIFAR-10 plus every whole ten-class CIFAR-100 split from ``first_class`` on."""
    return 1 + (CIFAR100_CLASSES - first_class) // CLASSES_PER_TASK


def cifar100_classes(task: int, first_class: int = REFERENCE_FIRST_CLASS) -> range:
    """The CIFAR-100 fine labels of task ``task`` ≥ 1 (they become labels 0..9 in this order)."""
    if not 1 <= task < max_tasks(first_class):
        raise IndexError(f"iCIFAR from CIFAR-100 class {first_class} has tasks "
                         f"0..{max_tasks(first_class) - 1}, not {task}")
    first = first_class + CLASSES_PER_TASK * (task - 1)
    return range(first, first + CLASSES_PER_TASK)


class IncrementalCifarStream:
    """iCIFAR: task 0 = CIFAR-10, task t ≥ 1 = ten CIFAR-100 classes from
    first_class + 10(t−1), relabelled 0..9.

    The two datasets are passed in (tests give tiny fake ones); both hold images (N, 3, H, W)
    in [0, 1] and integer labels (CIFAR-10: 0..9, CIFAR-100: 0..99 fine labels).
    """

    def __init__(self, cifar10: Dataset, cifar100: Dataset, seed: int, *,
                 test_examples: int | None = None, augment: bool = False,
                 first_class: int = REFERENCE_FIRST_CLASS, input_norm: str = "symmetric"):
        if cifar10.image_shape != cifar100.image_shape:
            raise ValueError(f"CIFAR-10 images {cifar10.image_shape} and CIFAR-100 images "
                             f"{cifar100.image_shape} differ in shape")
        self.cifar10, self.cifar100 = cifar10, cifar100
        self.seed, self.test_examples, self.augment = seed, test_examples, augment
        self.first_class, self.input_norm = first_class, input_norm
        self.image_shape = cifar10.image_shape  # (C, H, W)
        self.in_features = int(np.prod(self.image_shape))  # build_model reads it as C·H·W
        self._test_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _select(self, task: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and 0..9 labels of ``task`` from one split of its source dataset."""
        if task == 0:
            return x, y
        classes = cifar100_classes(task, self.first_class)
        keep = (y >= classes.start) & (y < classes.stop)
        return x[keep], y[keep] - classes.start

    def train_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``task``'s training images (N, C, H, W) in [0, 1] and labels (N,) in 0..9:
        ``batch`` augments and scales them, so that crops pad with black pixels."""
        source = self.cifar10 if task == 0 else self.cifar100
        return self._select(task, source.train_x, source.train_y)

    def test_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``task``'s scaled test images, at most ``test_examples`` of them (cached: the
        loop asks for a test set at every evaluation)."""
        if task not in self._test_cache:
            source = self.cifar10 if task == 0 else self.cifar100
            x, y = self._select(task, source.test_x, source.test_y)
            limit = self.test_examples or len(y)
            self._test_cache[task] = (normalize_inputs(x[:limit], self.input_norm), y[:limit])
        return self._test_cache[task]

    def batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, step: int):
        """The training batch of ``step`` (1-based): (B, C, H, W) images, augmented if asked,
        then scaled, and labels (B,)."""
        xb, yb = x[index], y[index]
        if self.augment:
            xb = augment_batch(xb, _step_generator(self.seed, step))
        return normalize_inputs(xb, self.input_norm), yb


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
    most = max_tasks(cfg.cifar100_first_class)
    if cfg.tasks > most:
        raise ValueError(f"iCIFAR from CIFAR-100 class {cfg.cifar100_first_class} has at most "
                         f"{most} tasks, not {cfg.tasks}")
    if cifar100 is None:
        from trainables.data import load_dataset  # cached per process, like the loop's dataset

        cifar100 = load_dataset("cifar100", cfg.data_dir).to(dataset.train_x.device)
    return IncrementalCifarStream(dataset, cifar100, cfg.seed, test_examples=cfg.test_examples,
                                  augment=cfg.augment, first_class=cfg.cifar100_first_class,
                                  input_norm=cfg.input_norm)
