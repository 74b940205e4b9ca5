"""Task streams: what data each task trains and tests on.

A stream prepares a task's data once, on the trial's device (gathering permuted pixels per batch
cost a third of a small step), and batches are then plain index lookups.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainables.config import ROTATION_PERIOD
from trainables.contexts import task_permutation
from trainables.data import Dataset, normalize_inputs


class PermutedStream:
    """Permuted MNIST: task t is a fixed pixel permutation from (seed, t); task 0 is the plain
    image unless ``permute_task0`` (SupSup's protocol permutes it too).

    Images are flattened: x has shape (N, C*H*W).
    """

    def __init__(self, dataset: Dataset, seed: int, test_examples: int | None = None,
                 input_norm: str = "standardize", permute_task0: bool = False):
        self.seed = seed
        self.permute_task0 = permute_task0
        # Scaled once per trial: pixel-wise, so it commutes with every permutation.
        self.train_x = normalize_inputs(dataset.train_x, input_norm).flatten(1)  # (N_train, D)
        self.train_y = dataset.train_y
        limit = test_examples or len(dataset.test_y)
        self.test_x = normalize_inputs(dataset.test_x[:limit], input_norm).flatten(1)  # (N_test, D)
        self.test_y = dataset.test_y[:limit]
        self.in_features = self.train_x.shape[1]

    def _permute(self, x: torch.Tensor, task: int) -> torch.Tensor:
        perm = task_permutation(self.seed, task, self.in_features, self.permute_task0)
        return x if perm is None else x[:, perm.to(x.device)]

    def train_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._permute(self.train_x, task), self.train_y

    def test_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._permute(self.test_x, task), self.test_y

    def batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, step: int):
        """The training batch of ``step`` (1-based) from a task's prepared data."""
        return x[index], y[index]  # (B, D), (B,)


class RotatingStream:
    """Rotating MNIST / FashionMNIST (PSP §4.1.3): a continuous domain shift with no task boundary.

    The training batch of step s is rotated counter-clockwise (as the image is displayed, row 0
    on top) by θ(s) = 2π · (s mod period) / period: a little further every step, 360° every
    ``period`` steps, forever; s and s + period give bitwise the same batch. The loop's tasks
    are only chunks of steps here: every task trains on the same images, and ``test_set(task)``
    is the test images at 0°, for every task (the paper tests at 0°).

    The rotation runs on the batch, on its device: bilinear sampling (``F.grid_sample``, zeros
    outside the image, ``align_corners=False``) on a grid built from the step's 2×3 affine
    matrix; the ``period`` matrices are computed once, in float64, so the angle is exact.
    Images come out flattened: x has shape (B, C*H*W).
    """

    def __init__(self, dataset: Dataset, test_examples: int | None = None,
                 period: int = ROTATION_PERIOD, input_norm: str = "standardize"):
        self.period = period
        self.input_norm = input_norm
        self.train_x = dataset.train_x  # (N_train, C, H, W) in [0, 1]: rotated, then scaled
        self.train_y = dataset.train_y
        limit = test_examples or len(dataset.test_y)
        self.test_x = normalize_inputs(dataset.test_x[:limit], input_norm).flatten(1)  # at 0°
        self.test_y = dataset.test_y[:limit]
        self.image_shape = tuple(self.train_x.shape[1:])
        self.in_features = math.prod(self.image_shape)
        # affine_grid maps each output pixel (x right, y down, in [−1, 1]) to the input point it
        # samples: the inverse rotation, [[cos θ, −sin θ], [sin θ, cos θ]] in these coordinates.
        angles = torch.arange(period, dtype=torch.float64) * (2 * math.pi / period)  # (P,)
        cos, sin, zero = angles.cos(), angles.sin(), torch.zeros(period, dtype=torch.float64)
        self.thetas = torch.stack([torch.stack([cos, -sin, zero], 1),
                                   torch.stack([sin, cos, zero], 1)], 1)  # (P, 2, 3)
        self.thetas = self.thetas.float().to(self.train_x.device)

    def angle(self, step: int) -> float:
        """The rotation of step ``step``'s batch, in radians, in [0, 2π)."""
        return 2 * math.pi * (step % self.period) / self.period

    def rotate(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """Rotate images (B, C, H, W) by angle(step); returns (B, C, H, W)."""
        b, c, h, w = images.shape
        theta = self.thetas[step % self.period].unsqueeze(0)                  # (1, 2, 3)
        # All B·C planes share one sampling grid: stack them as the channels of one image.
        grid = F.affine_grid(theta, [1, b * c, h, w], align_corners=False)    # (1, H, W, 2)
        planes = images.reshape(1, b * c, h, w)
        rotated = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)                           # (1, B*C, H, W)
        return rotated.reshape(b, c, h, w)

    def train_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_x, self.train_y  # the same images for every task: (N, C, H, W), (N,)

    def test_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_x, self.test_y  # at 0°, whatever the task: (N_test, C*H*W), (N_test,)

    def batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, step: int):
        """The training batch of ``step`` (1-based), rotated by angle(step), then scaled.

        Rotated in [0, 1], where the zeros filled in at the corners are black pixels, as the
        reference code rotates (it maps each batch to [0, 1] first) — scaling first would fill
        the corners with the mean instead."""
        rotated = self.rotate(x[index], step)                           # (B, C, H, W)
        return normalize_inputs(rotated, self.input_norm).flatten(1), y[index]  # (B, C*H*W), (B,)


def build_stream(cfg, dataset: Dataset):
    if cfg.stream == "permuted":
        return PermutedStream(dataset, cfg.seed, cfg.test_examples, cfg.input_norm,
                              cfg.permute_task0)
    if cfg.stream == "rotating":
        return RotatingStream(dataset, cfg.test_examples, input_norm=cfg.input_norm)
    if cfg.stream == "incremental":  # iCIFAR: images (N, 3, 32, 32), not flattened
        from trainables.incremental import build_incremental_stream
        return build_incremental_stream(cfg, dataset)
    raise ValueError(f"stream {cfg.stream!r} is not available in this build")
