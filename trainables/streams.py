"""Task streams: what data each task trains and tests on.

A stream prepares a task's data once, on the trial's device (gathering permuted pixels per batch
cost a third of a small step), and batches are then plain index lookups.
"""
from __future__ import annotations

import torch

from trainables.contexts import task_permutation
from trainables.data import Dataset


class PermutedStream:
    """Permuted MNIST: task 0 is the plain image, task t a fixed pixel permutation from (seed, t).

    Images are flattened: x has shape (N, C*H*W).
    """

    def __init__(self, dataset: Dataset, seed: int, test_examples: int | None = None):
        self.seed = seed
        self.train_x = dataset.train_x.flatten(1)  # (N_train, D)
        self.train_y = dataset.train_y
        limit = test_examples or len(dataset.test_y)
        self.test_x = dataset.test_x[:limit].flatten(1)  # (N_test, D)
        self.test_y = dataset.test_y[:limit]
        self.in_features = self.train_x.shape[1]

    def _permute(self, x: torch.Tensor, task: int) -> torch.Tensor:
        perm = task_permutation(self.seed, task, self.in_features)
        return x if perm is None else x[:, perm.to(x.device)]

    def train_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._permute(self.train_x, task), self.train_y

    def test_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._permute(self.test_x, task), self.test_y

    def batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, step: int):
        """The training batch of ``step`` (1-based) from a task's prepared data."""
        return x[index], y[index]  # (B, D), (B,)


def build_stream(cfg, dataset: Dataset):
    if cfg.stream == "permuted":
        return PermutedStream(dataset, cfg.seed, cfg.test_examples)
    if cfg.stream == "incremental":  # iCIFAR: images (N, 3, 32, 32), not flattened
        from trainables.incremental import build_incremental_stream
        return build_incremental_stream(cfg, dataset)
    raise ValueError(f"stream {cfg.stream!r} is not available in this build")
