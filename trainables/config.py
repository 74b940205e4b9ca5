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
INFER_BATCH = 128       # SupSup: test examples per task-inference decision (the reference's test batch)


# What the packed trainer (trainables/packed.py) takes, and so packs and the CUDA-graph step.
PACKED_TRAINER_TAKES = {"model": "mlp", "heads": "single", "stream": "permuted", "penalty": "none"}


def default_input_norm(stream: str) -> str:
    """The reference code's input scaling for a stream: [−1, 1] for incremental CIFAR (its
    Normalize((0.5,)*3, (0.5,)*3)), MNIST's mean and s.d. for the MNIST-like streams."""
    return "symmetric" if stream == "incremental" else "standardize"


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
        "task", description="when the context changes: with the task, every context_every "
                            "steps (cycle; local_mix mixes neighbouring keys), or every step "
                            "(fast)")
    context_every: int = Field(100, ge=1, description="cycle and local_mix: steps per context "
                               "(100: the paper's 10 contexts per rotation; 1: a new one every step)")
    # The key bank of the cycle/fast/local_mix schedules: step s uses key
    # ((s mod ROTATION_PERIOD) // context_every) mod n_contexts. When not given: the keys one
    # rotation uses, ROTATION_PERIOD // context_every for cycle and local_mix (10) and
    # ROTATION_PERIOD for fast (1000); under the task schedule it is unused (10).
    n_contexts: int = Field(10, ge=1, description="cycle/fast/local_mix: keys in the bank "
                            "(local_mix wraps neighbours around it); default: the keys one "
                            "1000-step rotation uses")
    penalty: Literal["none", "ewc", "si"] = Field("none", description="consolidation baseline: "
                                                  "EWC or SI penalty")
    penalty_strength: float = Field(0.0, ge=0, description="weight of the EWC/SI penalty")
    heads: Literal["single", "multi"] = Field("single", description="one output head shared by "
                                              "all tasks, or one per task")
    output_units: int = Field(10, ge=2, description="output units (SupSup: more than the classes "
                                                    "helps task inference)")
    # Incremental CIFAR (PSP §4.2): the reference code's protocol by default.
    augment: bool = Field(False, description="incremental CIFAR: random crop (4-pixel padding) "
                          "and horizontal flip of training batches; off in the reference code")
    cifar100_first_class: int = Field(10, ge=0, le=90, description="incremental CIFAR: task t>=1 "
                                      "is CIFAR-100 classes f+10(t-1)..f+10(t-1)+9; the reference "
                                      "uses 10 (classes 10-49 for tasks 1-4)")
    superpose_stem: bool = Field(False, description="ResNet-18: superpose the stem convolution "
                                 "too; the reference code leaves it a plain conv")
    # SupSup (model 'supsup'). The defaults are the reference's GNu permuted-MNIST code.
    mask_density: float | None = Field(
        None, gt=0, le=1, description="SupSup, mask_rule topk only: fraction of each layer's "
        "weights a mask keeps (default 0.5)")
    mask_rule: Literal["sign", "topk"] = Field(
        "sign", description="SupSup mask of a layer: sign (score >= 0, the reference's fast "
        "multitask mask) or topk (the mask_density largest |scores|, edge-popup)")
    infer_examples: int = Field(
        1, ge=1, le=INFER_BATCH, description=f"SupSup task inference: examples whose mean "
        f"output entropy decides the task of each {INFER_BATCH}-example test batch (the "
        f"reference: 1, the batch's first)")
    infer_every: int = Field(
        1, ge=1, description="SupSup: infer tasks (split infer, test_inferred) at the "
        "evaluations of every infer_every-th task and of the last one; 1: at every evaluation")
    permute_task0: bool = Field(
        False, description="permuted stream: permute task 0's pixels too (SupSup's reference); "
        "false: task 0 is the plain image (PSP's)")
    # How pixels reach the network; None takes the reference code's choice for the stream
    # (resolved before validation, so the trials table always records a concrete value).
    input_norm: Literal["standardize", "symmetric", "unit"] | None = Field(
        None, description="input scaling: standardize ((x-mean)/sd; MNIST's 0.1307/0.3081 on "
        "grayscale data, as the reference code), symmetric (2x-1, in [-1, 1]) or unit ([0, 1] "
        "pixels); default: symmetric on incremental CIFAR, standardize otherwise")
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
            if schedule in ("cycle", "local_mix") and isinstance(every, int) and every >= 1:
                data = {**data, "n_contexts": max(1, ROTATION_PERIOD // every)}
            elif schedule == "fast":
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

    @model_validator(mode="before")
    @classmethod
    def _default_input_norm(cls, data):
        if isinstance(data, dict) and data.get("input_norm") is None:
            data = {**data, "input_norm": default_input_norm(data.get("stream", "permuted"))}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_mask_density(cls, data):
        if (isinstance(data, dict) and data.get("mask_rule") == "topk"
                and data.get("mask_density") is None):
            data = {**data, "mask_density": 0.5}
        return data

    @field_validator("permute_task0")
    @classmethod
    def _permuted_stream(cls, permute_task0: bool, info: ValidationInfo) -> bool:
        if permute_task0 and info.data.get("stream", "permuted") != "permuted":
            raise ValueError(f"permutes pixels of the permuted stream only, not of stream "
                             f"{info.data['stream']!r}")
        return permute_task0

    @model_validator(mode="after")
    def _mask_density_needs_topk(self) -> "TrialConfig":
        if self.model == "supsup" and self.mask_rule == "sign" and self.mask_density is not None:
            raise ValueError(f"mask_density ({self.mask_density}) applies to mask_rule 'topk' "
                             f"only; mask_rule 'sign' keeps the weights whose score is >= 0")
        return self

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

    @model_validator(mode="after")
    def _incremental_options(self) -> "TrialConfig":
        """The iCIFAR options act on the incremental stream (and the ResNet) only: set elsewhere
        they would be recorded in the trials table without changing anything."""
        if self.augment and self.stream != "incremental":
            raise ValueError(f"augment: crop and flip are the incremental CIFAR stream's; "
                             f"stream is {self.stream!r}")
        if self.superpose_stem and self.model != "resnet18":
            raise ValueError(f"superpose_stem: only model 'resnet18' has a stem, not {self.model!r}")
        if self.stream == "incremental":
            most = 1 + (100 - self.cifar100_first_class) // 10
            if self.tasks > most:
                raise ValueError(f"tasks: incremental CIFAR from CIFAR-100 class "
                                 f"{self.cifar100_first_class} has at most {most} tasks "
                                 f"(CIFAR-10 + {most - 1} ten-class splits), not {self.tasks}")
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
