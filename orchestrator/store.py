"""The results store: the only writer and the canonical reader of per-step data.

Layout under the store root (a local path or a ``pyarrow.fs`` URI such as ``s3://bucket/x``)::

    _psplab.json                           # schema version; '_' keeps it out of dataset reads
    steps/<trial_id>/trial.parquet         # a trial's published rows: one file, replaced whole
    _inflight/<trial_id>/task-000003.parquet  # one task's rows, written while the trial runs
    trials/<trial_id>.parquet              # one row: the trial's parameters and status
    _quarantine/<timestamp>/...            # files `psp fsck --repair` moved aside

Stores written before this layout hold ``steps/<trial_id>/task-000003.parquet`` (one per task)
and ``task-000000-000049.parquet`` (merged) files; they are read as before, and a trial's next
publication (or `psp compact`) folds them into its ``trial.parquet``.

Exactly once for every reader, in every state
---------------------------------------------
``pandas.read_parquet(root/"steps")``, DuckDB's and polars' ``steps/*/*.parquet`` see each
(trial_id, step, split, eval_task) once, and the same rows as `Store.read_steps`, whatever a
sweep, a resume, a publication or a killed process left behind. The design follows from what
object stores offer: one PUT is atomic, nothing else is — there is no rename, and "write the
merged file, then delete the chunks" leaves a moment (or, after a kill, forever) in which a
reader of the directory sees both. So rows never move from one visible file to another:

* While a trial runs, each task's rows go to ``_inflight/<trial>/task-K.parquet``. The leading
  '_' hides them from pandas/pyarrow, and they are outside ``steps/``, so globs over it never
  meet them. A task run again (a restore from a checkpoint) replaces its chunk by name.
* When an attempt ends (completed, diverged, or failed with an error), the trial *publishes*:
  ``steps/<trial>/trial.parquet`` is rewritten whole, in one atomic step (one PUT; locally a
  rename), as its previous content with the rows of every task found in flight replaced by
  that task's chunk; only then are the in-flight chunks deleted. A re-run of a published trial
  therefore replaces its file instead of adding a second one beside it.
* A process killed anywhere leaves the previous ``trial.parquet`` or the new one, never both
  and never a part: killed before the PUT, the chunks stay in flight and the next publication
  (the resumed attempt's end, or `psp compact`) applies them; killed after it, the leftover
  chunks hold exactly what was published and applying them again changes nothing.

The price is visibility, not correctness: the rows of an attempt that is still running (or was
killed and not yet resumed) are not in ``steps/``. ``read_steps(live=True)`` (``analysis.load
(..., live=True)``, ``psp results --live``) adds them. A finished trial is one file, so reading
it costs one open (compaction happens at every publication; `psp compact` remains for stores
written before this layout). Folding such a store's legacy files is the one step that is not
atomic: between the new file's PUT and the old files' deletion, plain readers see that trial
twice; `psp fsck` names it and running `psp compact` again finishes it.

Other guarantees (each proved by a test, see tests/test_killed_writers.py and friends):

* All-or-nothing files. Locally each file is written under a hidden temporary name
  (``.tmp-…``, not ending in ``.parquet``, so no glob reads it) and renamed; on object stores a
  file is one PUT. ``psp fsck`` reports a temporary leftover and ``--repair`` moves it aside.
* Bounded retries. A failed write is retried ``write_retries`` times with exponential backoff,
  then raises StoreError naming the file; a write that raised left nothing new visible.
"""
from __future__ import annotations

import json
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables import schema

MANIFEST = "_psplab.json"
QUARANTINE = "_quarantine"
INFLIGHT = "_inflight"
TRIAL_FILE = "trial.parquet"
TMP_PREFIX = ".tmp-"
# task-000003.parquet: one task's chunk (in flight; or visible in a store written before
# trial.parquet); task-000000-000049.parquet: such chunks merged by an older `psp compact`.
CHUNK_NAME = re.compile(r"task-(\d{6})(?:-(\d{6}))?\.parquet")
OBJECT_STORES = {"s3", "gcs"}
# A trial id becomes a directory and a file name: no separators, no leading '.'/'_' (which
# would hide it from readers) and no '=' (which pandas would read as a hive partition).
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Query parameters psplab takes off an s3:// URI and applies itself (pyarrow rejects them).
S3_TIMEOUTS = ("connect_timeout", "request_timeout", "retries")

_sleep = time.sleep  # the backoff's clock; tests replace it to observe the delays


class StoreError(RuntimeError):
    """The store cannot be read or written; the message names the URI or file."""


# ---- resolving a URI -------------------------------------------------------------------------
def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A store URI or local path → (filesystem, path inside it).

    ``s3://`` URIs may carry ``connect_timeout``, ``request_timeout`` (seconds) and ``retries``
    (attempts per request, at least 1): without them an unreachable endpoint costs the AWS SDK's
    default retries, several seconds per request, before it fails.
    """
    target, timeouts = _split_s3_timeouts(uri) if "://" in uri else (_abspath(uri), {})
    try:
        fs, path = pafs.FileSystem.from_uri(target)
        if timeouts:
            fs = _s3_with_timeouts(fs, timeouts)
    except (pa.ArrowInvalid, OSError, ValueError, TypeError) as exc:
        raise StoreError(f"storage {uri!r}: {_one_line(exc)}") from exc
    return fs, path


def _split_s3_timeouts(uri: str) -> tuple[str, dict[str, float]]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.query:
        return uri, {}
    query = parse_qsl(parts.query, keep_blank_values=True)
    timeouts = {}
    for key, value in query:
        if key in S3_TIMEOUTS:
            try:
                timeouts[key] = float(value)
            except ValueError:
                raise StoreError(f"storage {uri!r}: {key} must be a number, got {value!r}") from None
    rest = urlencode([(k, v) for k, v in query if k not in S3_TIMEOUTS])
    return urlunsplit(parts._replace(query=rest)), timeouts


def _s3_with_timeouts(fs: pafs.FileSystem, timeouts: Mapping[str, float]) -> pafs.FileSystem:
    """The same S3 filesystem (credentials, region, endpoint) with psplab's timeouts applied."""
    rebuild, args = fs.__reduce__()  # S3FileSystem pickles as (reconstruct, (options,))
    options = dict(args[0])
    for key in ("connect_timeout", "request_timeout"):
        if key in timeouts:
            options[key] = timeouts[key]
    if "retries" in timeouts:
        options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(
            max_attempts=max(1, int(timeouts["retries"])))
    return rebuild(options)


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line short enough to read (libhdfs lists every path it tried)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_trial_id(trial_id: str) -> str:
    """Refuse a trial id that would escape its directory or hide from readers."""
    if not isinstance(trial_id, str) or not TRIAL_ID.fullmatch(trial_id):
        raise StoreError(
            f"trial_id {trial_id!r}: must be 1-200 of [A-Za-z0-9._-], starting with a letter or "
            f"digit (it names a directory)"
        )
    return trial_id


class Store:
    """A results store at ``uri``. Cheap to construct; nothing is touched until used."""

    def __init__(self, uri: str, *, filesystem: pafs.FileSystem | None = None,
                 write_retries: int = 3, retry_backoff_s: float = 0.2):
        self.uri = uri
        if filesystem is None:
            self.fs, self.root = resolve(uri)
        else:  # e.g. orchestrator.faults wraps the filesystem to inject faults
            self.fs = filesystem
            self.root = resolve(uri)[1] if "://" in uri else _abspath(uri)
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

    def inflight_path(self, trial_id: str, task: int) -> str:
        """Where ``write_chunk`` puts one task's rows until the trial publishes them."""
        return self.path(INFLIGHT, check_trial_id(trial_id), f"task-{int(task):06d}.parquet")

    def published_path(self, trial_id: str) -> str:
        """The one visible file of a trial's rows."""
        return self.path("steps", check_trial_id(trial_id), TRIAL_FILE)

    def chunk_path(self, trial_id: str, task: int) -> str:
        """A visible per-task chunk, as stores written before ``trial.parquet`` hold them."""
        return self.path("steps", check_trial_id(trial_id), f"task-{int(task):06d}.parquet")

    def trial_path(self, trial_id: str) -> str:
        return self.path("trials", f"{check_trial_id(trial_id)}.parquet")

    @staticmethod
    def tmp_path(path: str) -> str:
        """Where ``path`` is written before its rename: same directory, hidden from dataset
        reads by its '.', and not ending in '.parquet', which DuckDB's and polars' globs match
        whatever the name starts with."""
        directory, name = posixpath.split(path)
        return posixpath.join(directory, f"{TMP_PREFIX}{name}-{uuid.uuid4().hex}")

    # ---- writing -----------------------------------------------------------------------
    def initialise(self) -> None:
        """Create the layout and the manifest; refuse a store written by a newer psplab."""
        self.check_version()
        for directory in (self.steps_dir, self.trials_dir):
            self._retry(lambda d=directory: self.fs.create_dir(d, recursive=True), directory)
        manifest = self.path(MANIFEST)
        if self.fs.get_file_info(manifest).type == pafs.FileType.NotFound:
            body = json.dumps({"schema_version": schema.SCHEMA_VERSION}).encode()
            self._retry(lambda: self._atomic_put(manifest, body), manifest)

    def manifest_version(self) -> int | None:
        """The schema version in the manifest (None: no manifest yet)."""
        manifest = self.path(MANIFEST)
        try:
            info = self.fs.get_file_info(manifest)
            if info.type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(manifest) as handle:
                body = handle.read()
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r} is unreachable: {_one_line(exc)}") from exc
        try:
            return int(json.loads(body)["schema_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{manifest}: not a psplab manifest ({_one_line(exc)})") from exc

    def check_version(self) -> None:
        version = self.manifest_version()
        if version is not None and version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path(MANIFEST)}: store written with schema version {version}; this psplab "
                f"reads up to {schema.SCHEMA_VERSION}; upgrade psplab"
            )

    def prepare_chunk(self, trial_id: str, table: pa.Table) -> pa.Table:
        """``table`` as it is stored: STEPS_SCHEMA, this version's metadata, rows of one trial."""
        check_trial_id(trial_id)
        if table.schema != schema.STEPS_SCHEMA:
            try:
                table = table.cast(schema.STEPS_SCHEMA)
            except (ValueError, pa.ArrowNotImplementedError) as exc:
                raise schema.SchemaError(f"chunk of trial {trial_id!r}: {_one_line(exc)}") from exc
        others = pc.unique(table["trial_id"]).to_pylist()
        if any(other != trial_id for other in others):
            raise schema.SchemaError(
                f"chunk of trial {trial_id!r} holds rows of trial(s) "
                f"{sorted(map(str, set(others) - {trial_id}))}"
            )
        return table.replace_schema_metadata(schema.STEPS_SCHEMA.metadata)

    def write_chunk(self, trial_id: str, task: int, table: pa.Table) -> str:
        """Write (or replace) the in-flight chunk of ``trial_id`` for ``task``; all-or-nothing.
        Readers see its rows once the trial publishes (`publish`), or with ``live=True``."""
        table = self.prepare_chunk(trial_id, table)
        path = self.inflight_path(trial_id, task)
        self._retry(lambda: self._atomic_write(path, table), path)
        return path

    def write_trial(self, record: Mapping[str, Any]) -> str:
        """Write (or replace) the one-row trials file of ``record['trial_id']``."""
        path = self.trial_path(record.get("trial_id"))
        table = schema.trials_table([record])
        self._retry(lambda: self._atomic_write(path, table), path)
        return path

    def _atomic_write(self, path: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._atomic_put(path, sink.getvalue())

    def _atomic_put(self, path: str, body: bytes | pa.Buffer) -> None:
        """Make ``body`` appear at ``path`` whole or not at all."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if self.fs.type_name in OBJECT_STORES:
            # An object-store PUT is atomic and there is no rename: write in place.
            self._put(path, body)
            return
        tmp = self.tmp_path(path)
        try:
            self._put(tmp, body)
            self.fs.move(tmp, path)
        except BaseException:
            _quiet_delete(self.fs, tmp)
            raise

    def _put(self, path: str, body: bytes | pa.Buffer) -> None:
        with self.fs.open_output_stream(path) as handle:
            handle.write(body)

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        """Run a storage action with bounded retries and exponential backoff."""
        for attempt in range(self.write_retries + 1):
            try:
                return action()
            except OSError as exc:
                if attempt == self.write_retries:
                    raise StoreError(
                        f"{what}: write failed after {attempt + 1} tries: {_one_line(exc)}"
                    ) from exc
                _sleep(self.retry_backoff_s * 2**attempt)

    def trial_files(self, trial_id: str) -> list[str]:
        """The visible Parquet files of ``trial_id`` (its ``trial.parquet``, or older chunks)."""
        try:
            return sorted(self._visible_files(self.path("steps", check_trial_id(trial_id))))
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r}: {_one_line(exc)}") from exc

    def inflight_chunks(self, trial_id: str) -> dict[int, str]:
        """task → path of ``trial_id``'s chunks written since it last published."""
        directory = self.path(INFLIGHT, check_trial_id(trial_id))
        try:
            return _chunks_by_task(self._visible_files(directory))
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r}: {_one_line(exc)}") from exc

    def inflight_trials(self) -> list[str]:
        """Trials with chunks in flight (running, killed, or whose publication failed)."""
        try:
            return sorted({posixpath.basename(posixpath.dirname(path))
                           for path in self._visible_files(self.path(INFLIGHT))})
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r}: {_one_line(exc)}") from exc

    def publish(self, trial_id: str) -> str | None:
        """Make ``trial_id``'s rows visible as its one ``trial.parquet``; returns its path
        (None: the trial has no rows). Safe to repeat, and to kill at any point (see the
        module docstring); only for a trial no writer is touching.

        The new file is the old one (or a store's older chunk files, latest attempt kept) with
        the rows of every in-flight task replaced by that task's chunk, sorted by step.
        """
        visible, inflight = self.trial_files(trial_id), self.inflight_chunks(trial_id)
        target = self.published_path(trial_id)
        if not inflight and visible in ([], [target]):
            return visible[0] if visible else None
        table = self._fold(trial_id, visible, inflight)
        self._retry(lambda: self._atomic_write(target, table), target)
        for old in [*inflight.values(), *visible]:
            if old != target:
                self._retry(lambda old=old: self.fs.delete_file(old), old)
        if inflight:
            _quiet_delete_empty_dir(self.fs, self.path(INFLIGHT, trial_id))
        return target

    compact_trial = publish  # `psp compact` on a store written before trial.parquet

    def _fold(self, trial_id: str, visible: list[str], inflight: dict[int, str]) -> pa.Table:
        base = self._read_files(visible)
        if len(visible) > 1:  # an older layout: chunks and merged files may overlap
            base = pa.Table.from_pandas(latest_attempt(base.to_pandas()),
                                        schema=schema.STEPS_SCHEMA, preserve_index=False)
        replaced = pc.is_in(base["task"], value_set=pa.array(list(inflight), pa.int32()))
        parts = [base.filter(pc.invert(replaced)), self._read_files(list(inflight.values()))]
        table = self.prepare_chunk(trial_id, pa.concat_tables(parts))
        return table.sort_by([("step", "ascending")])

    def _read_files(self, paths: list[str]) -> pa.Table:
        return self._read(self._checked_dataset(sorted(paths), schema.STEPS_SCHEMA))

    def _checked_dataset(self, paths: list[str], table_schema: pa.Schema) -> ds.Dataset:
        """``paths`` (in this order) as one dataset of ``table_schema``, every file's schema
        and version checked first, as dataset discovery's reads are (``_dataset``)."""
        dataset = ds.FileSystemDataset.from_paths(
            paths, schema=table_schema, format=ds.ParquetFileFormat(), filesystem=self.fs)
        for fragment in dataset.get_fragments():
            self._check_fragment(fragment)
        return dataset

    # ---- reading -----------------------------------------------------------------------
    def _dataset(self, directory: str, table_schema: pa.Schema,
                 filter: ds.Expression | None) -> ds.Dataset | None:
        """The files under ``directory``, each checked for a readable footer and version."""
        self.check_version()
        try:
            if self.fs.get_file_info(directory).type == pafs.FileType.NotFound:
                return None
            # The schema is given, not inferred from whichever file comes first.
            dataset = ds.dataset(directory, schema=table_schema, format="parquet",
                                 filesystem=self.fs, exclude_invalid_files=False)
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r}: {_one_line(exc)}") from exc
        for fragment in dataset.get_fragments(filter=filter):
            self._check_fragment(fragment)
        return dataset

    def _check_fragment(self, fragment: ds.ParquetFileFragment) -> None:
        try:
            file_schema = fragment.physical_schema  # reads and caches the footer
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(
                f"{fragment.path}: not a readable Parquet file ({_one_line(exc)}); "
                f"`psp fsck {self.uri} --repair` moves it aside"
            ) from exc
        try:
            schema.check_readable(file_schema, fragment.path)
        except schema.SchemaError as exc:
            raise StoreError(str(exc)) from exc

    def _read(self, dataset: ds.Dataset, **scan: Any) -> pa.Table:
        try:
            return dataset.to_table(**scan)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(
                f"{self.uri}: {_one_line(exc)}; `psp fsck {self.uri}` names the bad file"
            ) from exc

    def read_steps(self, filter: ds.Expression | None = None,
                   columns: list[str] | None = None, *,
                   trial_id: str | Iterable[str] | None = None,
                   live: bool = False) -> pd.DataFrame:
        """Every published measurement once (latest attempt wins), filters pushed down to
        pyarrow: exactly what a plain reader of ``steps/`` sees, sorted.

        ``live`` adds the rows of attempts still in flight (running, or killed and not yet
        resumed), each in-flight task replacing that task's published rows, as publishing
        will. ``trial_id`` (one id or several) keeps only those trials, like a ``trial_id``
        filter, but opens only their directories. A trial's rows live under
        ``steps/<trial_id>/`` and nowhere else (``write_chunk`` refuses other rows there,
        ``psp fsck`` reports a file holding another trial's rows), so discovering and checking
        every other trial's files would change nothing but the time: ~1 s at 2,000 files,
        against ~50 ms for one trial.
        """
        ids = None
        if trial_id is None:
            dataset = self._dataset(self.steps_dir, schema.STEPS_SCHEMA, filter)
        else:
            ids = [trial_id] if isinstance(trial_id, str) else list(dict.fromkeys(trial_id))
            dataset = self._trial_steps(ids)
        if columns is not None:
            extra = ["task"] if live else []
            columns = list(dict.fromkeys([*columns, *schema.KEY_COLUMNS, "attempt", *extra]))
        table = (schema.STEPS_SCHEMA.empty_table().select(columns or schema.STEPS_SCHEMA.names)
                 if dataset is None else self._read(dataset, filter=filter, columns=columns))
        if live:
            table = self._with_inflight(table, ids, filter, columns)
        if ids is not None:
            table = _only_trials(table, ids)
        return latest_attempt(table.to_pandas())

    def _with_inflight(self, table: pa.Table, ids: list[str] | None,
                       filter: ds.Expression | None, columns: list[str] | None) -> pa.Table:
        """``table`` with each in-flight task's rows in place of that task's published ones."""
        trials = self.inflight_trials() if ids is None else [
            t for t in ids if isinstance(t, str) and TRIAL_ID.fullmatch(t)]
        chunks = {t: self.inflight_chunks(t) for t in trials}
        chunks = {t: tasks for t, tasks in chunks.items() if tasks}
        if not chunks:
            return table
        replaced = None
        for trial_id, tasks in chunks.items():
            term = pc.and_(pc.equal(table["trial_id"], trial_id),
                           pc.is_in(table["task"], value_set=pa.array(list(tasks), pa.int32())))
            replaced = term if replaced is None else pc.or_(replaced, term)
        dataset = self._checked_dataset(
            sorted(p for tasks in chunks.values() for p in tasks.values()), schema.STEPS_SCHEMA)
        fresh = self._read(dataset, filter=filter, columns=columns)
        return pa.concat_tables([table.filter(pc.invert(pc.fill_null(replaced, False))), fresh])

    def _trial_steps(self, trial_ids: list[str]) -> ds.Dataset | None:
        """The chunk files of ``trial_ids`` as a dataset, with the checks ``_dataset`` makes.

        The files are those dataset discovery of ``steps/`` would find for these trials (hidden
        names skipped, sorted by path), so duplicate measurements resolve in the same order.
        """
        self.check_version()
        paths = []
        try:
            for trial_id in trial_ids:
                if not (isinstance(trial_id, str) and TRIAL_ID.fullmatch(trial_id)):
                    continue  # no directory can hold it, so no rows can carry it
                paths += self._visible_files(self.path("steps", trial_id))
            if not paths and self.fs.get_file_info(self.steps_dir).type == pafs.FileType.NotFound:
                return None
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r}: {_one_line(exc)}") from exc
        return self._checked_dataset(sorted(paths), schema.STEPS_SCHEMA)

    def _visible_files(self, directory: str) -> list[str]:
        """Files below ``directory`` that a dataset read sees: no path part under it starting
        with '.' or '_' (temporary and quarantined files)."""
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
        found = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            relative = info.path[len(directory):].lstrip("/")
            if not any(part.startswith((".", "_")) for part in relative.split("/")):
                found.append(info.path)
        return found

    def read_trials(self, filter: ds.Expression | None = None, *,
                    trial_id: str | Iterable[str] | None = None) -> pd.DataFrame:
        """The trials table; ``trial_id`` (one id or several) opens only those trials' files."""
        if trial_id is None:
            dataset = self._dataset(self.trials_dir, schema.TRIALS_SCHEMA, filter)
        else:
            ids = [trial_id] if isinstance(trial_id, str) else list(dict.fromkeys(trial_id))
            wanted = ds.field("trial_id").isin(pa.array(ids, pa.string()))
            filter = wanted if filter is None else filter & wanted
            dataset = self._trial_rows(ids)
        if dataset is None:
            return schema.TRIALS_SCHEMA.empty_table().to_pandas()
        return self._read(dataset, filter=filter).to_pandas()

    def _trial_rows(self, trial_ids: list[str]) -> ds.Dataset | None:
        self.check_version()
        candidates = sorted({self.path("trials", f"{t}.parquet") for t in trial_ids
                             if isinstance(t, str) and TRIAL_ID.fullmatch(t)})
        try:
            infos = self.fs.get_file_info([self.trials_dir, *candidates])
            if infos[0].type == pafs.FileType.NotFound:
                return None
            paths = [i.path for i in infos[1:] if i.type == pafs.FileType.File]
        except OSError as exc:
            raise StoreError(f"storage {self.uri!r}: {_one_line(exc)}") from exc
        return self._checked_dataset(paths, schema.TRIALS_SCHEMA)


def _only_trials(table: pa.Table, trial_ids: list[str]) -> pa.Table:
    """``table`` without rows of other trials: a misplaced file must not leak rows into a
    per-trial read. Checked after the read, not pushed down with the filter: a pushed-down
    term costs ~6 ms over 50 chunks, the check well under 1 ms."""
    wanted = pa.array(trial_ids, pa.string())
    found = pc.unique(table["trial_id"])
    if pc.all(pc.is_in(found, value_set=wanted)).as_py() is not False:
        return table
    return table.filter(pc.is_in(table["trial_id"], value_set=wanted))


def latest_attempt(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated measurements, keeping the row of the highest attempt.

    Key: (trial_id, step, split, eval_task). Rows are returned sorted by trial and step, in
    the order of a stable sort on the key and ``attempt`` with nulls first; of rows equal in
    all five, the last read wins.
    """
    if df.empty:
        return df.reset_index(drop=True)
    keys = list(schema.KEY_COLUMNS)
    # One stable numpy lexsort on integer codes instead of pandas' sort_values + duplicated,
    # which factorise the key twice and reorder all ~35 columns before dropping anything:
    # about half the time on a trial's 50,000 rows.
    sort_keys = [_sort_codes(df[name]) for name in (*keys, "attempt")]
    order = np.lexsort([a for codes in reversed(sort_keys) for a in reversed(codes)])
    same_as_next = np.ones(len(order) - 1, dtype=bool)
    for codes in sort_keys[:-1]:
        for values in codes:
            ordered = values[order]
            same_as_next &= ordered[1:] == ordered[:-1]
    keep = order[np.append(~same_as_next, True)]  # the last of each key: highest attempt
    if len(keep) == len(df) and bool((keep == np.arange(len(df))).all()):
        return df.reset_index(drop=True)  # already sorted and unique: nothing to move
    return df.take(keep).reset_index(drop=True)


def _sort_codes(column: pd.Series) -> list[np.ndarray]:
    """Arrays that order ``column`` as ``sort_values(na_position="first")`` does and are
    equal exactly where ``duplicated`` counts values equal (NA equal to NA)."""
    if is_numeric_dtype(column.dtype) and not is_bool_dtype(column.dtype):
        missing = column.isna().to_numpy()
        if not missing.any():
            return [column.to_numpy()]
        # A leading is-present flag sorts NA first; every NA gets the same filled value, so
        # NAs tie with each other, as duplicated() counts them.
        return [~missing, column.fillna(0).to_numpy()]
    codes, _ = pd.factorize(column, sort=True, use_na_sentinel=True)  # NA → -1: first
    return [codes]


def _chunks_by_task(paths: Iterable[str]) -> dict[int, str]:
    """task → path of the per-task chunks among ``paths`` (other names are not chunks)."""
    chunks = {}
    for path in paths:
        match = CHUNK_NAME.fullmatch(posixpath.basename(path))
        if match and match.group(2) is None:
            chunks[int(match.group(1))] = path
    return dict(sorted(chunks.items()))


def _quiet_delete_empty_dir(fs: pafs.FileSystem, path: str) -> None:
    """Remove ``path`` if nothing is left in it (object stores have no directories to leave)."""
    try:
        if not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            fs.delete_dir(path)
    except OSError:
        pass


def _quiet_delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
