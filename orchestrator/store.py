"""The results store: the only writer and the canonical reader of per-step data.

Layout under the store root (a local path or a ``pyarrow.fs`` URI such as ``s3://bucket/x``)::

    _psplab.json                        # schema version; '_' keeps it out of dataset reads
    steps/<trial_id>/task-000003.parquet   # one file per (trial, task chunk)
    trials/<trial_id>.parquet              # one row: the trial's parameters and status

Exactly-once by construction: a chunk's name is a function of (trial, task), so a trial that is
retried from a checkpoint *replaces* the chunks it writes again instead of adding to them. Each
file is written under a hidden temporary name and renamed (readers skip names starting with '.'),
or, on object stores, written with a single PUT, so a killed writer never leaves a partial
file where readers look. ``pandas.read_parquet(root / "steps")`` works with no psplab code.
"""
from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables import schema

MANIFEST = "_psplab.json"
OBJECT_STORES = {"s3", "gcs"}


class StoreError(RuntimeError):
    """The store cannot be read or written; the message names the URI or file."""


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A store URI or local path → (filesystem, path inside it)."""
    try:
        return pafs.FileSystem.from_uri(uri if "://" in uri else _abspath(uri))
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise StoreError(f"storage {uri!r}: {exc}") from exc


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


class Store:
    """A results store at ``uri``. Cheap to construct; nothing is touched until used."""

    def __init__(self, uri: str, *, filesystem: pafs.FileSystem | None = None,
                 write_retries: int = 3, retry_backoff_s: float = 0.2):
        self.uri = uri
        if filesystem is None:
            self.fs, self.root = resolve(uri)
        else:  # tests wrap the filesystem to inject faults
            self.fs, self.root = filesystem, _abspath(uri) if "://" not in uri else resolve(uri)[1]
        self.write_retries = write_retries
        self.retry_backoff_s = retry_backoff_s

    # ---- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def steps_dir(self) -> str:
        return self.path("steps")

    @property
    def trials_dir(self) -> str:
        return self.path("trials")

    def chunk_path(self, trial_id: str, task: int) -> str:
        return self.path("steps", trial_id, f"task-{task:06d}.parquet")

    # ---- writing -----------------------------------------------------------------------
    def initialise(self) -> None:
        """Create the layout and the manifest; refuse a store written by a newer psplab."""
        self.check_version()
        for directory in (self.steps_dir, self.trials_dir):
            self._retry(lambda d=directory: self.fs.create_dir(d, recursive=True), directory)
        manifest = self.path(MANIFEST)
        if self.fs.get_file_info(manifest).type == pafs.FileType.NotFound:
            body = json.dumps({"schema_version": schema.SCHEMA_VERSION}).encode()
            self._retry(lambda: self._put_bytes(manifest, body), manifest)

    def check_version(self) -> None:
        manifest = self.path(MANIFEST)
        try:
            info = self.fs.get_file_info(manifest)
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r} is unreachable: {exc}") from exc
        if info.type == pafs.FileType.NotFound:
            return
        with self.fs.open_input_stream(manifest) as handle:
            try:
                version = int(json.loads(handle.read())["schema_version"])
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{manifest}: not a psplab manifest ({exc})") from exc
        if version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"{manifest}: store written with schema version {version}; this psplab reads up "
                f"to {schema.SCHEMA_VERSION}; upgrade psplab"
            )

    def write_chunk(self, trial_id: str, task: int, table: pa.Table) -> str:
        """Write (or replace) the chunk of ``trial_id`` for ``task``; all-or-nothing."""
        if table.schema != schema.STEPS_SCHEMA:
            table = table.cast(schema.STEPS_SCHEMA)
        path = self.chunk_path(trial_id, task)
        self._retry(lambda: self._atomic_write(path, table), path)
        return path

    def write_trial(self, record: Mapping[str, Any]) -> str:
        """Write (or replace) the one-row trials file of ``record['trial_id']``."""
        table = schema.trials_table([record])
        path = self.path("trials", f"{record['trial_id']}.parquet")
        self._retry(lambda: self._atomic_write(path, table), path)
        return path

    def _atomic_write(self, path: str, table: pa.Table) -> None:
        directory, name = posixpath.split(path)
        self.fs.create_dir(directory, recursive=True)
        if self.fs.type_name in OBJECT_STORES:
            # An object-store PUT is atomic and there is no rename: write in place.
            pq.write_table(table, path, filesystem=self.fs)
            return
        tmp = posixpath.join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
        try:
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, path)
        except BaseException:
            _quiet_delete(self.fs, tmp)
            raise

    def _put_bytes(self, path: str, body: bytes) -> None:
        with self.fs.open_output_stream(path) as handle:
            handle.write(body)

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        """Run a storage action with bounded retries and exponential backoff."""
        for attempt in range(self.write_retries + 1):
            try:
                return action()
            except OSError as exc:
                if attempt == self.write_retries:
                    raise StoreError(f"{what}: write failed after {attempt + 1} tries: {exc}") from exc
                time.sleep(self.retry_backoff_s * 2**attempt)

    # ---- reading -----------------------------------------------------------------------
    def _dataset(self, directory: str, table_schema: pa.Schema) -> ds.Dataset | None:
        self.check_version()
        if self.fs.get_file_info(directory).type == pafs.FileType.NotFound:
            return None
        # The schema is given, not inferred from whichever file comes first.
        return ds.dataset(directory, schema=table_schema, format="parquet", filesystem=self.fs,
                          exclude_invalid_files=False)

    def read_steps(self, filter: ds.Expression | None = None,
                   columns: list[str] | None = None) -> pd.DataFrame:
        """Every measurement once (latest attempt wins), filters pushed down to pyarrow."""
        dataset = self._dataset(self.steps_dir, schema.STEPS_SCHEMA)
        if dataset is None:
            return schema.STEPS_SCHEMA.empty_table().to_pandas()
        if columns is not None:
            columns = list(dict.fromkeys([*columns, *schema.KEY_COLUMNS, "attempt"]))
        table = dataset.to_table(filter=filter, columns=columns)
        return latest_attempt(table.to_pandas())

    def read_trials(self, filter: ds.Expression | None = None) -> pd.DataFrame:
        dataset = self._dataset(self.trials_dir, schema.TRIALS_SCHEMA)
        if dataset is None:
            return schema.TRIALS_SCHEMA.empty_table().to_pandas()
        return dataset.to_table(filter=filter).to_pandas()


def latest_attempt(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated measurements, keeping the row of the highest attempt.

    Key: (trial_id, step, split, eval_task). Rows are returned sorted by trial and step.
    """
    if df.empty:
        return df.reset_index(drop=True)
    keys = list(schema.KEY_COLUMNS)
    df = df.sort_values([*keys, "attempt"], kind="stable", na_position="first")
    df = df[~df.duplicated(keys, keep="last")]
    return df.reset_index(drop=True)


def _quiet_delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
