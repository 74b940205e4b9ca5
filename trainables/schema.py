"""The single source of truth for psplab's Parquet columns.

Two tables, both long and tidy, readable by pandas, DuckDB and polars with no project code:

``steps`` — one row per measurement.
    A *train* row is the loss and accuracy of the batch used by optimizer update ``step``
    (1-based: ``step`` updates are done after it). A *test* row is the accuracy on the full
    test split of ``eval_task``, measured after ``step`` updates. SupSup's task inference
    (scenario GNu: the task is not given at test time) adds two rows per tested task, over its
    test split cut into batches of 128: an *infer* row, the fraction of batches whose inferred
    task is ``eval_task`` (task-ID accuracy), and a *test_inferred* row, the test accuracy when
    each batch uses the mask inference picked for it, a batch given another task's mask
    counting as wrong (the SupSup paper's GNu accuracy). Trial parameters are columns,
    so ``df.query("psp == 'binary' and units == 2048")`` just works. A value that was not
    measured is null, never 0.

``trials`` — one row per trial: its parameters, status, timing, device and provenance.

Identity of a measurement: (trial_id, step, split, eval_task). A trial restored from a
checkpoint writes its chunks again with a higher ``attempt``; readers keep the latest attempt.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

# 2: input_norm, augment, cifar100_first_class, superpose_stem, mask_rule, infer_examples,
#    infer_every and permute_task0 joined the parameters (files of version 1 read them as
#    null); split test_inferred joined the measurements.
SCHEMA_VERSION = 2
METADATA_KEY = b"psplab.schema_version"

# Parameters that identify a trial. Every one is a column of both tables.
# The TrialConfig dataclass in trainables.config has exactly these fields (tested).
PARAM_FIELDS: dict[str, pa.DataType] = {
    "model": pa.string(),            # mlp | resnet18 | supsup
    "psp": pa.string(),              # none | binary | complex | onepower | rotation
    "units": pa.int32(),
    "depth": pa.int32(),
    "tasks": pa.int32(),
    "steps_per_task": pa.int32(),
    "batch_size": pa.int32(),
    "lr": pa.float64(),
    "optimizer": pa.string(),
    "seed": pa.int64(),
    "dataset": pa.string(),
    "stream": pa.string(),           # permuted | rotating | incremental
    "learn_context": pa.bool_(),
    "context_schedule": pa.string(), # task | cycle | fast | local_mix
    "context_every": pa.int32(),
    "n_contexts": pa.int32(),
    "penalty": pa.string(),          # none | ewc | si
    "penalty_strength": pa.float64(),
    "heads": pa.string(),            # single | multi
    "output_units": pa.int32(),
    "augment": pa.bool_(),           # iCIFAR crop+flip (added in version 2)
    "cifar100_first_class": pa.int32(),  # iCIFAR: first CIFAR-100 class of task 1 (version 2)
    "superpose_stem": pa.bool_(),    # ResNet-18 stem superposed (added in version 2)
    "mask_density": pa.float64(),   # SupSup, mask_rule topk: fraction each mask keeps (else null)
    "mask_rule": pa.string(),        # SupSup: sign | topk (added in version 2)
    "infer_examples": pa.int32(),    # SupSup: examples per task-inference decision (version 2)
    "infer_every": pa.int32(),       # SupSup: task inference every this many tasks (version 2)
    "permute_task0": pa.bool_(),     # permuted stream: task 0 permuted too (version 2)
    "input_norm": pa.string(),       # standardize | symmetric | unit (added in version 2)
    "eval_every": pa.int32(),
    "eval_all_every": pa.int32(),    # null: all seen tasks at task boundaries only
}

ID_FIELDS: dict[str, pa.DataType] = {
    "sweep": pa.string(),
    "trial_id": pa.string(),
    "attempt": pa.int32(),
}

MEASUREMENT_FIELDS: dict[str, pa.DataType] = {
    "step": pa.int64(),
    "task": pa.int32(),       # the task being trained at this step
    "context": pa.int32(),    # the context index in use (differs from task under schedules)
    "split": pa.string(),     # train | test | infer | test_inferred (SupSup GNu: see above)
    "eval_task": pa.int32(),  # test rows: the task evaluated; train rows: null
    "loss": pa.float32(),
    "accuracy": pa.float32(),
    "n_examples": pa.int32(),
}

TRIAL_FIELDS: dict[str, pa.DataType] = {
    "status": pa.string(),    # running | completed | diverged | error
    "steps_done": pa.int64(),
    "restarts": pa.int32(),
    "restored_from_task": pa.int32(),  # null: started from scratch
    "start_time": pa.timestamp("us", tz="UTC"),
    "end_time": pa.timestamp("us", tz="UTC"),
    "device": pa.string(),
    "psplab_version": pa.string(),
    "git_sha": pa.string(),
    "error": pa.string(),
    "config_json": pa.string(),  # the whole config, for fields added after this schema
}

# Columns a later version added, by the version that added them: files written before it lack
# them (readers get null), which is not schema drift.
ADDED_IN_VERSION = {"input_norm": 2, "augment": 2, "cifar100_first_class": 2,
                    "superpose_stem": 2, "mask_rule": 2, "infer_examples": 2,
                    "infer_every": 2, "permute_task0": 2}

SPLITS = ("train", "test", "infer", "test_inferred")
STATUSES = ("running", "completed", "diverged", "error")
KEY_COLUMNS = ("trial_id", "step", "split", "eval_task")


def _schema(*groups: Mapping[str, pa.DataType]) -> pa.Schema:
    fields = [pa.field(name, typ, nullable=True) for group in groups for name, typ in group.items()]
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()})


STEPS_SCHEMA = _schema(ID_FIELDS, PARAM_FIELDS, MEASUREMENT_FIELDS)
TRIALS_SCHEMA = _schema(ID_FIELDS, PARAM_FIELDS, TRIAL_FIELDS)


class SchemaError(ValueError):
    """A row or a file does not match psplab's schema."""


def file_schema_version(schema: pa.Schema) -> int | None:
    """The schema version a Parquet file was written with (None: not a psplab file)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return int(raw) if raw is not None else None


def check_readable(schema: pa.Schema, where: str) -> None:
    """Refuse files written by a newer psplab, whose columns we cannot interpret."""
    version = file_schema_version(schema)
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: written with schema version {version}, this psplab reads up to "
            f"{SCHEMA_VERSION}; upgrade psplab"
        )


def steps_table(rows: Sequence[Mapping[str, Any]], params: Mapping[str, Any], *,
                sweep: str | None, trial_id: str, attempt: int) -> pa.Table:
    """Measurement rows (from the training loop's sink) plus constant trial columns → a table.

    Rows may only hold MEASUREMENT_FIELDS; the trial parameters are broadcast, which keeps the
    training loop free of bookkeeping. Raises SchemaError naming the bad field.
    """
    for row in rows[:1]:  # the loop emits uniform rows; checking one keeps this O(1)
        extra = set(row) - set(MEASUREMENT_FIELDS)
        if extra:
            raise SchemaError(f"unknown measurement field(s): {sorted(extra)}")
    for row in rows:
        if row.get("split") not in SPLITS:
            raise SchemaError(f"split must be one of {SPLITS}, got {row.get('split')!r}")
    n = len(rows)
    columns: dict[str, pa.Array] = {}
    constants = {"sweep": sweep, "trial_id": trial_id, "attempt": attempt, **_param_values(params)}
    for name in list(ID_FIELDS) + list(PARAM_FIELDS):
        columns[name] = _constant(constants.get(name), STEPS_SCHEMA.field(name).type, n)
    for name, typ in MEASUREMENT_FIELDS.items():
        try:
            columns[name] = pa.array([row.get(name) for row in rows], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise SchemaError(f"field {name!r}: {exc}") from exc
    return pa.table(columns, schema=STEPS_SCHEMA)


def trials_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Trial rows → a table with TRIALS_SCHEMA; unknown keys are a SchemaError."""
    known = set(TRIALS_SCHEMA.names)
    for record in records:
        extra = set(record) - known
        if extra:
            raise SchemaError(f"unknown trial field(s): {sorted(extra)}")
    columns = {}
    for field in TRIALS_SCHEMA:
        try:
            columns[field.name] = pa.array([r.get(field.name) for r in records], type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise SchemaError(f"trial field {field.name!r}: {exc}") from exc
    return pa.table(columns, schema=TRIALS_SCHEMA)


def param_row(params: Mapping[str, Any]) -> dict[str, Any]:
    """The PARAM_FIELDS of a config mapping plus its full JSON (for the trials table)."""
    return {**_param_values(params), "config_json": json.dumps(dict(params), sort_keys=True, default=str)}


def _param_values(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: params.get(name) for name in PARAM_FIELDS}


def _constant(value: Any, typ: pa.DataType, n: int) -> pa.Array:
    try:
        scalar = pa.scalar(value, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise SchemaError(f"value {value!r} does not fit type {typ}: {exc}") from exc
    return pa.repeat(scalar, n)
