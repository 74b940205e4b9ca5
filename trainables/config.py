"""One trial's configuration: every knob of the training loop, validated in one place.

`psp run` builds it from command-line flags, the sweep spec builds one per grid point, and the
training loop receives it as its only configuration (torch code never reads argv or globals).
Defaults are the reference code's permuted-MNIST settings.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PSP_TYPES = ("none", "binary", "complex", "onepower", "rotation")
DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar")


class TrialConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- identity of the experiment (these are the Parquet parameter columns) ---
    model: Literal["mlp", "resnet18", "supsup"] = "mlp"
    psp: Literal["none", "binary", "complex", "onepower", "rotation"] = "binary"
    units: int = Field(256, ge=1, le=1 << 16)
    depth: int = Field(2, ge=0, le=64)
    tasks: int = Field(10, ge=1, le=100_000)
    steps_per_task: int = Field(1000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-4, gt=0)
    optimizer: Literal["rmsprop", "sgd", "adam"] = "rmsprop"
    seed: int = Field(0, ge=0, lt=2**62)
    dataset: Literal["mnist5k", "mnist", "fashion_mnist", "cifar"] = "mnist5k"
    stream: Literal["permuted", "rotating", "incremental"] = "permuted"
    learn_context: bool = False
    context_schedule: Literal["task", "cycle", "fast", "local_mix"] = "task"
    context_every: int = Field(100, ge=1)
    n_contexts: int = Field(10, ge=1)
    penalty: Literal["none", "ewc", "si"] = "none"
    penalty_strength: float = Field(0.0, ge=0)
    heads: Literal["single", "multi"] = "single"
    output_units: int = Field(10, ge=2)
    mask_density: float = Field(0.5, gt=0, le=1)  # SupSup: fraction of weights each mask keeps
    eval_every: int = Field(100, ge=0)          # 0: no periodic evaluation
    eval_all_every: int | None = Field(None, ge=1)  # None: all seen tasks at task boundaries

    # --- how to run it (not part of the experiment's identity) ---
    data_dir: str | None = None
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    test_examples: int | None = Field(None, ge=1)  # cap on test images per task (None: all)

    @model_validator(mode="after")
    def _consistent(self) -> "TrialConfig":
        if self.eval_every and self.steps_per_task % self.eval_every:
            raise ValueError(
                f"eval_every ({self.eval_every}) must divide steps_per_task ({self.steps_per_task})"
            )
        if self.dataset != "mnist5k" and self.dataset != "cifar" and self.stream == "incremental":
            raise ValueError("stream 'incremental' needs dataset 'cifar'")
        return self

    @property
    def total_steps(self) -> int:
        return self.tasks * self.steps_per_task

    def identity(self) -> dict:
        """The fields that define the experiment (the Parquet parameter columns)."""
        from trainables.schema import PARAM_FIELDS

        return {name: getattr(self, name) for name in PARAM_FIELDS}
