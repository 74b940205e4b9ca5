"""`psp compact STORE`: merge each finished trial's chunk files into one.

Reading a trial costs about 1 ms per file whatever its size, so a 50-task trial reads in
~80 ms as chunks and ~25 ms compacted (benchmarks/RESULTS.md). Compaction deletes the chunks
it merged, so it is a step for after a sweep, not something trials do as they finish: a trial
that writes again (a resumed sweep re-running a task) would leave rows twice for a plain
`pandas.read_parquet`. Only trials whose row says completed or diverged are touched; running
and errored ones, which a resume writes to, are listed and left alone.
"""
from __future__ import annotations

import argparse

FINISHED = ("completed", "diverged")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact", help="merge each finished trial's chunks into one file (faster reads)",
        description="Merge the chunk files of finished trials (completed or diverged) into one "
                    "file per trial. Run it when no sweep is writing to the store; every read "
                    "returns the same rows before and after.")
    parser.add_argument("store", help="store directory or URI (s3://bucket/sweeps/NAME/results)")
    parser.add_argument("--trial", action="append", metavar="ID",
                        help="compact only this trial (repeatable); default: every finished trial")
    parser.set_defaults(func=cmd_compact)


def cmd_compact(args: argparse.Namespace) -> int:
    from orchestrator.cli import UserError
    from orchestrator.fsck import has_layout, refuse_missing_local

    refuse_missing_local(args.store)
    from orchestrator.store import Store  # pandas and pyarrow only once the path exists

    store = Store(args.store)
    trials = store.read_trials()
    status = dict(zip(trials["trial_id"], trials["status"])) if not trials.empty else {}
    if not status:
        if not has_layout(store):
            raise UserError(f"{args.store}: not a psplab store (no _psplab.json, steps/ or trials/)")
        raise UserError(f"{args.store}: no trials in this store")
    wanted = list(dict.fromkeys(args.trial or status))
    unknown = [trial_id for trial_id in wanted if trial_id not in status]
    if unknown:
        raise UserError(f"--trial {unknown[0]}: no such trial in {args.store}")
    skipped = [trial_id for trial_id in wanted if status[trial_id] not in FINISHED]
    files_before = compacted = 0
    for trial_id in wanted:
        if status[trial_id] in FINISHED:
            files_before += len(store.trial_files(trial_id))
            compacted += store.compact_trial(trial_id) is not None
    print(f"compacted {compacted} trial(s): {files_before} file(s) -> {compacted}")
    if skipped:
        print(f"left alone {len(skipped)} unfinished trial(s) (running or error): "
              + ", ".join(f"{t} ({status[t]})" for t in skipped))
    return 0
