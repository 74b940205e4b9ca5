"""`psp fsck STORE [--repair]`: find the files that would break or skew reads of a store.

One line per problem, ``<kind>: <path>: <detail>``, on stdout. Kinds:

    corrupt       not a Parquet file (no footer, e.g. a copy cut short); breaks every reader
    zero-byte     an empty file; breaks every reader
    partial       a ``.tmp-…`` leftover of a writer killed mid-write; invisible to readers
    schema-drift  columns or types differ from the schema, or written by a newer psplab
    stray         a file where the layout has none (e.g. steps/notes.txt); readers would read it
    misplaced     rows of another trial than the file's name says
    orphan        a chunk whose trial has no trials row
    duplicate     the same measurement (KEY_COLUMNS and attempt) in two files, or twice in one
    overlap       the same measurement in two visible files with different attempts: plain
                  readers (pandas, DuckDB, polars) see it twice; `psp compact STORE --trial ID`
                  folds the trial into one file, latest attempt kept (a store written before
                  trial.parquet, or a fold of one that was killed)

Every visible measurement once is the store's promise to plain readers (orchestrator/store.py),
so any key seen twice in ``steps/`` is a problem. In-flight chunks (``_inflight/``) are checked
like visible files (a bad one breaks the next publication); a trial with rows still in flight is
a warning naming the command that publishes them, as is a trials row with no rows at all.

Exit codes: 0 clean; 1 problems found (also with --repair: run again to confirm it is clean);
2 usage error or a store that cannot be checked (missing, unreachable, newer schema version).

``--repair`` never deletes: it MOVES each bad file to ``STORE/_quarantine/<timestamp>/<its
path>`` (the '_' hides it from readers) and prints what it moved. A duplicate is moved only
when every row of its file is also in a file that stays; otherwise it is left for a person to
decide. Run fsck on a stopped sweep: a trial that is still starting may not have its row yet.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import posixpath
from dataclasses import dataclass, field

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2


@dataclass(frozen=True)
class Finding:
    kind: str
    path: str      # relative to the store root
    detail: str
    fix: str = "move"  # move: --repair quarantines it | none: moving others fixes it | manual


@dataclass
class Report:
    root: str
    problems: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chunks: int = 0
    trials: int = 0
    newer_files: bool = False

    def add(self, kind: str, path: str, detail: str, fix: str = "move") -> None:
        self.problems.append(Finding(kind, path, detail, fix))


# ---- the command ------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fsck", help="check a results store; --repair moves bad files aside",
        description="Check a results store for files that break or skew reads. Exit codes: "
                    "0 clean, 1 problems found, 2 usage error or unreadable store.")
    parser.add_argument("store", help="store directory or URI (e.g. s3://bucket/sweeps)")
    parser.add_argument("--repair", action="store_true",
                        help="move bad files to STORE/_quarantine/<timestamp>/ (never deletes)")
    parser.set_defaults(func=cmd_fsck)


def cmd_fsck(args: argparse.Namespace) -> int:
    refuse_missing_local(args.store)
    from orchestrator.store import Store  # pandas and pyarrow only once the path exists

    store = Store(args.store)
    report = check(store)
    for finding in report.problems:
        print(f"{finding.kind}: {store.path(finding.path)}: {finding.detail}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    if args.repair and report.problems:
        _print_repair(store, report)
    print(_summary(store, report))
    return EXIT_PROBLEMS if report.problems else EXIT_CLEAN


def refuse_missing_local(uri: str) -> None:
    """Fail in milliseconds on a mistyped path, before pyarrow is imported."""
    from orchestrator.cli import UserError

    if "://" in uri:
        return
    if not os.path.exists(uri):
        raise UserError(f"{uri}: no such store (the directory does not exist)")
    if not os.path.isdir(uri):
        raise UserError(f"{uri}: not a store directory (it is a file)")


def _print_repair(store, report: Report) -> None:
    result = repair(store, report)
    for src, dest in result.moved:
        print(f"moved {store.path(src)} -> {store.path(dest)}")
    for finding in result.left:
        print(f"left in place: {store.path(finding.path)} ({finding.kind}: needs a decision)")
    if result.moved:
        print(f"moved {len(result.moved)} file(s) to {store.path(result.quarantine)}; "
              f"nothing was deleted")


def _summary(store, report: Report) -> str:
    checked = f"{report.chunks} chunks, {report.trials} trials checked in {store.uri}"
    if not report.problems:
        return f"clean: {checked}" + (f"; {len(report.warnings)} warning(s)" if report.warnings else "")
    return f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s): {checked}"


# ---- checking ---------------------------------------------------------------------------------
def check(store) -> Report:
    """Every problem of ``store``, without changing anything."""
    import pyarrow.fs as pafs

    from orchestrator.store import StoreError

    report = Report(store.root)
    try:
        root_type = store.fs.get_file_info(store.root).type
    except OSError as exc:
        raise StoreError(f"storage {store.uri!r} is unreachable: {' '.join(str(exc).split())}") from exc
    if root_type == pafs.FileType.NotFound:
        raise StoreError(f"{store.uri}: no such store")
    _check_manifest(store, report)
    files = _list_files(store)
    if not report.problems and not files and not has_layout(store):
        raise StoreError(f"{store.uri}: not a psplab store (no _psplab.json, steps/ or trials/)")
    chunk_keys, trial_ids, inflight = _check_files(store, files, report)
    report.chunks, report.trials = len(chunk_keys), len(trial_ids)
    _check_orphans({**chunk_keys, **inflight}, set(trial_ids.values()), report)
    _check_duplicates(chunk_keys, report)
    _check_overlaps(store, chunk_keys, report)
    _warn_inflight(store, inflight, report)
    return report


def _check_files(store, files: list[tuple[str, int]], report: Report) -> tuple[dict, dict, dict]:
    """Check each file on its own; return the sound visible chunks' identity columns, the
    trial ids, and the sound in-flight chunks' identity columns."""
    chunk_keys: dict[str, object] = {}
    trial_ids: dict[str, str] = {}
    inflight: dict[str, object] = {}
    for rel, size in files:
        kind = _classify_location(rel)
        if kind == "partial":
            report.add("partial", rel, "leftover of a writer killed mid-write (invisible to readers)")
        elif kind in ("chunk", "inflight"):
            table = _check_parquet(store, rel, size, "steps", report)
            if table is not None:
                (chunk_keys if kind == "chunk" else inflight)[rel] = table
        elif kind == "trial":
            table = _check_parquet(store, rel, size, "trials", report)
            if table is not None:
                trial_ids[rel] = posixpath.basename(rel).removesuffix(".parquet")
        elif kind == "stray":
            report.add("stray", rel, "not part of the store layout, but readers of the directory "
                                     "would read it")
    return chunk_keys, trial_ids, inflight


def _check_manifest(store, report: Report) -> None:
    import json

    from orchestrator.store import MANIFEST, StoreError
    from trainables import schema

    path = store.path(MANIFEST)
    try:
        with store.fs.open_input_stream(path) as handle:
            body = handle.read()
    except FileNotFoundError:
        if has_layout(store):
            report.warnings.append(f"{path}: no manifest (written by `Store.initialise`)")
        return
    try:
        version = int(json.loads(body)["schema_version"])
    except (ValueError, KeyError, TypeError) as exc:
        report.add("corrupt", MANIFEST, f"not a psplab manifest ({exc})")
        return
    if version > schema.SCHEMA_VERSION:
        raise StoreError(f"{path}: store written with schema version {version}; this psplab reads "
                         f"up to {schema.SCHEMA_VERSION}; upgrade psplab")


def has_layout(store) -> bool:
    import pyarrow.fs as pafs

    infos = store.fs.get_file_info([store.steps_dir, store.trials_dir])
    return any(info.type == pafs.FileType.Directory for info in infos)


def _list_files(store) -> list[tuple[str, int]]:
    """(path relative to the root, size) of every file under steps/ and trials/, sorted."""
    import pyarrow.fs as pafs

    from orchestrator.store import INFLIGHT

    files = []
    for directory in (store.steps_dir, store.trials_dir, store.path(INFLIGHT)):
        selector = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
        for info in store.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                files.append((posixpath.relpath(info.path, store.root), info.size or 0))
    # the manifest's own temporary files, left by a writer killed in `initialise`
    root = pafs.FileSelector(store.root, recursive=False)
    files += [(posixpath.relpath(info.path, store.root), info.size or 0)
              for info in store.fs.get_file_info(root)
              if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-")]
    return sorted(files)


def _classify_location(rel: str) -> str:
    """partial | chunk | inflight | trial | stray | hidden, from the path alone."""
    from orchestrator.store import CHUNK_NAME, INFLIGHT, TMP_PREFIX, TRIAL_FILE, TRIAL_ID

    parts = rel.split("/")
    if parts[-1].startswith(TMP_PREFIX):
        return "partial"
    if len(parts) == 3 and parts[0] == INFLIGHT and TRIAL_ID.fullmatch(parts[1]) \
            and CHUNK_NAME.fullmatch(parts[2]):
        return "inflight"
    if any(part.startswith((".", "_")) for part in parts):
        return "hidden"  # readers skip it, and so do we
    if len(parts) == 3 and parts[0] == "steps" and TRIAL_ID.fullmatch(parts[1]) \
            and (parts[2] == TRIAL_FILE or CHUNK_NAME.fullmatch(parts[2])):
        return "chunk"
    if len(parts) == 2 and parts[0] == "trials" and parts[1].endswith(".parquet") \
            and TRIAL_ID.fullmatch(parts[1].removesuffix(".parquet")):
        return "trial"
    return "stray"


def _check_parquet(store, rel: str, size: int, table_name: str, report: Report):
    """The file's identity columns if it is sound, else None after reporting why."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainables import schema

    if size == 0:
        report.add("zero-byte", rel, "empty file")
        return None
    try:
        with store.fs.open_input_file(store.path(rel)) as handle:
            parquet = pq.ParquetFile(handle)
            drift = _schema_drift(parquet.schema_arrow, table_name)
            if drift:
                report.newer_files |= drift.startswith("written with schema version")
                report.add("schema-drift", rel, drift)
                return None
            columns = [*schema.KEY_COLUMNS, "attempt"] if table_name == "steps" else ["trial_id"]
            table = parquet.read(columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        report.add("corrupt", rel, f"not a readable Parquet file ({' '.join(str(exc).split())})")
        return None
    return _check_owner(rel, table, table_name, report)


def _schema_drift(file_schema, table_name: str) -> str:
    """'' when the file has the schema's columns and types, else what differs."""
    from trainables import schema

    version = schema.file_schema_version(file_schema)
    if version is not None and version > schema.SCHEMA_VERSION:
        return f"written with schema version {version}; this psplab reads up to {schema.SCHEMA_VERSION}"
    expected = schema.STEPS_SCHEMA if table_name == "steps" else schema.TRIALS_SCHEMA
    found = {f.name: f.type for f in file_schema}
    wanted = {f.name: f.type for f in expected}
    too_new = {name for name, added in schema.ADDED_IN_VERSION.items()
               if version is not None and version < added}
    missing = sorted(set(wanted) - set(found) - too_new)
    extra = sorted(set(found) - set(wanted))
    retyped = [f"{name} is {found[name]}, not {wanted[name]}"
               for name in wanted if name in found and not found[name].equals(wanted[name])]
    parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else []) + retyped
    return "; ".join(parts)


def _check_owner(rel: str, table, table_name: str, report: Report):
    """A file must hold rows of the trial its path names (and a trials file exactly one row)."""
    parts = rel.split("/")
    owner = parts[1] if table_name == "steps" else parts[1].removesuffix(".parquet")
    found = set(table.column("trial_id").to_pylist())
    if found - {owner}:
        report.add("misplaced", rel, f"holds rows of trial(s) {sorted(map(str, found - {owner}))}, "
                                     f"not only {owner!r}")
        return None
    if table_name == "trials" and table.num_rows != 1:
        report.add("schema-drift", rel, f"{table.num_rows} rows; a trials file holds one")
        return None
    return table


def _check_orphans(chunk_keys: dict, trial_ids: set[str], report: Report) -> None:
    chunked: set[str] = set()
    for rel in chunk_keys:
        trial = rel.split("/")[1]
        chunked.add(trial)
        if trial not in trial_ids:
            report.add("orphan", rel, f"trial {trial!r} has no trials row (trials/{trial}.parquet)")
    for trial in sorted(trial_ids - chunked):
        report.warnings.append(f"trials/{trial}.parquet: trial {trial!r} has no chunks")


def _check_duplicates(chunk_keys: dict, report: Report) -> None:
    """Report measurements stored twice with the same attempt, and how --repair can fix each."""
    from orchestrator.store import TRIAL_FILE

    if not chunk_keys:
        return
    paths = list(chunk_keys)
    frame = _identity_frame(list(chunk_keys.values()))
    repeated = frame[frame.duplicated("gid", keep=False)]
    if repeated.empty:
        return
    placed = repeated[["gid", "file"]].drop_duplicates()
    pairs = placed.merge(placed, on="gid")
    pairs = pairs[pairs.file_x != pairs.file_y]
    others = {int(f): sorted(set(g)) for f, g in pairs.groupby("file_x").file_y}
    within = set(frame[frame.duplicated(["gid", "file"])].file.astype(int))
    # A trial's published file is the one to keep: files of the older layout move first.
    published = {i for i, path in enumerate(paths) if path.endswith(f"/{TRIAL_FILE}")}
    fixes = _duplicate_fixes(frame, sorted(set(placed.file.astype(int))), within, published)
    for index, rows in repeated.groupby("file", sort=True):
        index = int(index)
        where = [f"also in {', '.join(paths[i] for i in others[index])}"] if index in others else []
        where += ["repeated within the file"] if index in within else []
        report.add("duplicate", paths[index],
                   f"{len(rows)} row(s) with the same key and attempt {'; '.join(where)}",
                   fix=fixes[index])


def _check_overlaps(store, chunk_keys: dict, report: Report) -> None:
    """Report each trial whose visible files hold a measurement twice with different attempts
    (the same attempt twice is a ``duplicate``, reported above)."""
    if not chunk_keys:
        return
    from trainables import schema

    frame = _identity_frame(list(chunk_keys.values()))
    keys = list(schema.KEY_COLUMNS)
    distinct = frame.drop_duplicates([*keys, "attempt"])
    seen_twice = distinct[distinct.duplicated(keys, keep=False)]
    paths = list(chunk_keys)
    for trial_id, rows in seen_twice.groupby("trial_id", sort=True):
        files = sorted({paths[int(i)] for i in rows.file})
        count = len(rows.drop_duplicates(keys))
        report.add("overlap", posixpath.dirname(files[0]),
                   f"{count} measurement(s) of trial {trial_id!r} appear with different attempts "
                   f"in {', '.join(files)}: plain readers see them twice; `psp compact "
                   f"{store.uri} --trial {trial_id}` folds them into one file (latest attempt kept)",
                   fix="manual")


def _warn_inflight(store, inflight: dict, report: Report) -> None:
    """Trials whose latest rows are still in flight, invisible to plain readers."""
    tasks: dict[str, int] = {}
    for rel in inflight:
        trial = rel.split("/")[1]
        tasks[trial] = tasks.get(trial, 0) + 1
    for trial, count in sorted(tasks.items()):
        report.warnings.append(
            f"trial {trial!r}: {count} task chunk(s) in flight, not yet in steps/ (an attempt "
            f"that is running, was killed, or could not publish): `psp sweep resume` finishes "
            f"and publishes it; `psp compact {store.uri} --trial {trial}` publishes them as they are")


def _identity_frame(tables: list):
    """KEY_COLUMNS + attempt of every chunk, with its file's index and a group id per identity."""
    import pyarrow as pa

    from trainables import schema

    tables = [t.append_column("file", pa.array([i] * t.num_rows, pa.int32()))
              for i, t in enumerate(tables)]
    frame = pa.concat_tables(tables).to_pandas()
    frame["gid"] = frame.groupby([*schema.KEY_COLUMNS, "attempt"], dropna=False, sort=False).ngroup()
    return frame


def _duplicate_fixes(frame, files: list[int], within: set[int],
                     keep: set[int] = frozenset()) -> dict[int, str]:
    """For each file holding duplicates: move (every row is also in a file that stays; later
    paths go first, those in ``keep`` last), none (it stays, and is unique once the others
    moved) or manual."""
    files_per_gid = frame.groupby("gid").file.nunique()
    gids_of = {index: frame.gid[frame.file == index].unique() for index in files}
    fixes: dict[int, str] = {}
    for index in sorted(set(files) - within, key=lambda i: (i not in keep, i), reverse=True):
        if (files_per_gid.loc[gids_of[index]] >= 2).all():
            fixes[index] = "move"
            files_per_gid.loc[gids_of[index]] -= 1
    for index in files:
        if index not in fixes:
            unique_now = (files_per_gid.loc[gids_of[index]] == 1).all() and index not in within
            fixes[index] = "none" if unique_now else "manual"
    return fixes


# ---- repairing --------------------------------------------------------------------------------
@dataclass
class Repair:
    quarantine: str                                   # relative to the store root
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to), relative
    left: list[Finding] = field(default_factory=list)  # problems that need a person


def repair(store, report: Report) -> Repair:
    """Move every file that --repair can fix into a fresh quarantine directory; delete nothing."""
    from orchestrator.store import MANIFEST, QUARANTINE

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    result = Repair(posixpath.join(QUARANTINE, stamp))
    for finding in report.problems:
        if finding.fix == "manual":
            result.left.append(finding)
        if finding.fix != "move" or finding.path in {src for src, _ in result.moved}:
            continue
        dest = posixpath.join(result.quarantine, finding.path)
        store.fs.create_dir(posixpath.dirname(store.path(dest)), recursive=True)
        store.fs.move(store.path(finding.path), store.path(dest))
        result.moved.append((finding.path, dest))
    if any(src == MANIFEST for src, _ in result.moved) and not report.newer_files:
        store.initialise()  # a fresh manifest: every file left is this version's
    return result
