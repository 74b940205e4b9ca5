"""One trial's configuration: every knob of the training loop, validated in one place.

`psp run` builds it from command-line flags, the sweep spec builds one per grid point, and the
training loop receives it as its only configuration (torch code never reads argv or globals).
Defaults are the reference code's permuted-MNIST settings.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

PSP_TYPES = ("none", "binary", "complex", "onepower", "rotation")
DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar")
ROTATION_PERIOD = 1000  # rotating streams turn 360° every this many steps (PSP §4.1.3)


# What the packed trainer (trainables/packed.py) takes, and so packs and the CUDA-graph step.
PACKED_TRAINER_TAKES = {"model": "mlp", "heads": "single", "stream": "permuted", "penalty": "none"}


class TrialConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- identity of the experiment (these are the Parquet parameter columns) ---
    model: Literal["mlp", "resnet18", "supsup"] = Field(
        "mlp", description="network: fully connected, superposed ResNet-18, or SupSup supermasks")
    psp: Literal["none", "binary", "complex", "onepower", "rotation"] = Field(
        "binary", description="superposition type: the context each task binds ('none': the "
                              "standard network)")
    units: int = Field(256, ge=1, le=1 << 16, description="width: units per hidden layer")
    depth: int = Field(2, ge=0, le=64, description="hidden layers")
    tasks: int = Field(10, ge=1, le=100_000, description="tasks trained one after another")
    steps_per_task: int = Field(1000, ge=1, description="optimizer updates per task")
    batch_size: int = Field(128, ge=1, description="training examples per update (at most a "
                                                   "task's training split)")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    optimizer: Literal["rmsprop", "sgd", "adam"] = Field("rmsprop", description="optimizer")
    seed: int = Field(0, ge=0, lt=2**62, description="seed of the weights, contexts, task "
                                                     "permutations and batches")
    dataset: Literal["mnist5k", "mnist", "fashion_mnist", "cifar"] = Field(
        "mnist5k", description="data: mnist5k ships with psplab; the others load from --data-dir")
    stream: Literal["permuted", "rotating", "incremental"] = Field(
        "permuted", description="how tasks differ: permuted pixels, rotated images, or new "
                                "classes (CIFAR)")
    learn_context: bool = Field(False, description="train the contexts too (default: fixed "
                                                   "random contexts, as in the paper)")
    context_schedule: Literal["task", "cycle", "fast", "local_mix"] = Field(
        "task", description="when the context changes: with the task, every --context-every "
                            "steps (cycle), or every step (fast, local_mix)")
    context_every: int = Field(100, ge=1, description="cycle schedule: steps per context")
    # Contexts of the cycle/fast/local_mix schedules. When not given: one rotation period holds
    # them all, ROTATION_PERIOD // context_every for cycle (10) and ROTATION_PERIOD for
    # fast/local_mix (1000); under the task schedule it is unused (10).
    n_contexts: int = Field(10, ge=1, description="contexts the cycle/fast/local_mix schedules "
                                                  "reuse")
    penalty: Literal["none", "ewc", "si"] = Field("none", description="consolidation baseline: "
                                                  "EWC or SI penalty")
    penalty_strength: float = Field(0.0, ge=0, description="weight of the EWC/SI penalty")
    heads: Literal["single", "multi"] = Field("single", description="one output head shared by "
                                              "all tasks, or one per task")
    output_units: int = Field(10, ge=2, description="output units (SupSup: more than the classes "
                                                    "helps task inference)")
    mask_density: float = Field(0.5, gt=0, le=1, description="SupSup: fraction of weights each "
                                                             "mask keeps")
    eval_every: int = Field(100, ge=0, description="test task 0 and the current task every this "
                                                   "many steps; 0: never (default: 100, or once "
                                                   "per task when 100 does not divide "
                                                   "steps_per_task)")
    eval_all_every: int | None = Field(None, ge=1, description="also test every seen task every "
                                                               "this many steps (default: at task "
                                                               "ends only)")

    # --- how to run it (not part of the experiment's identity) ---
    data_dir: str | None = Field(None, description="directory or URI holding the dataset files")
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:1, …")
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's own; in "
                                                        "a sweep, the trial's CPUs)")
    test_examples: int | None = Field(None, ge=1, description="cap on test images per task "
                                                              "(default: all)")
    # Replay each training step as one CUDA graph: a small net's eager step is launch-bound on
    # a GPU. The graphed step is the packed one (trainables/packed.py), so it takes what a
    # pack takes: the FC net on the permuted stream, fixed contexts, no penalty.
    cuda_graph: bool = Field(False, description="replay each training step as one CUDA graph "
                                                "(GPU; FC net, permuted stream)")

    @model_validator(mode="before")
    @classmethod
    def _default_n_contexts(cls, data):
        if isinstance(data, dict) and data.get("n_contexts") is None:
            schedule = data.get("context_schedule", "task")
            every = data.get("context_every", 100)
            if schedule == "cycle" and isinstance(every, int) and every >= 1:
                data = {**data, "n_contexts": max(1, ROTATION_PERIOD // every)}
            elif schedule in ("fast", "local_mix"):
                data = {**data, "n_contexts": ROTATION_PERIOD}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_eval_every(cls, data):
        # Every 100 steps where that divides the task, else once per task: any task length
        # runs without the user choosing eval_every.
        if isinstance(data, dict) and data.get("eval_every") is None:
            steps = data.get("steps_per_task", 1000)
            fits = not (isinstance(steps, int) and steps >= 1 and steps % 100)
            data = {**data, "eval_every": 100 if fits else steps}
        return data

    @model_validator(mode="after")
    def _schedules_and_penalties(self) -> "TrialConfig":
        if self.stream == "rotating" and self.dataset not in ("mnist5k", "mnist", "fashion_mnist"):
            raise ValueError(f"stream 'rotating' needs dataset mnist5k, mnist or fashion_mnist, "
                             f"not {self.dataset!r}")
        if self.context_schedule == "local_mix" and (self.psp != "complex" or self.learn_context):
            raise ValueError("context_schedule 'local_mix' mixes fixed complex phases: it needs "
                             "psp 'complex' and learn_context false")
        if self.penalty == "none" and self.penalty_strength:
            raise ValueError("penalty_strength is set but penalty is 'none'")
        return self

    @field_validator("cuda_graph")
    @classmethod
    def _graphable(cls, cuda_graph: bool, info: ValidationInfo) -> bool:
        """A field validator (it runs after every other field) so errors name cuda_graph."""
        if not cuda_graph:
            return cuda_graph
        if info.data.get("device") == "cpu":
            raise ValueError("needs a CUDA device (device is 'cpu')")
        for name, allowed in {**PACKED_TRAINER_TAKES, "learn_context": False}.items():
            if name in info.data and info.data[name] != allowed:
                raise ValueError(f"supports {name}={allowed!r} only (got {info.data[name]!r})")
        return cuda_graph

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
