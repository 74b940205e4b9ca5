"""`psp compact STORE`: fold each finished trial's files into its one ``trial.parquet``.

Trials publish themselves when they end (orchestrator/store.py), so a store this psplab wrote
needs no compaction. It is for stores written before ``trial.parquet`` (one chunk file per
task, ~1 ms per file on every read), and for rows left in flight by an attempt that ended
without publishing them (killed, or its storage failed). Only trials whose row says completed
or diverged are folded unless ``--trial`` names one; running and errored trials, which a resume
writes to, are listed and left alone. Run it when no sweep writes to the store; every read
returns the same rows before and after, except that rows left in flight become visible.
"""
from __future__ import annotations

import argparse

FINISHED = ("completed", "diverged")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact", help="fold each finished trial's files into one (stores from older psplab)",
        description="Fold the files of finished trials (completed or diverged) into one "
                    "trial.parquet each, publishing rows left in flight. Run it when no sweep "
                    "is writing to the store.")
    parser.add_argument("store", help="store directory or URI (s3://bucket/sweeps/NAME/results)")
    parser.add_argument("--trial", action="append", metavar="ID",
                        help="fold this trial (repeatable), whatever its status: you say nothing "
                             "writes to it; default: every finished trial")
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
    unknown = [trial_id for trial_id in args.trial or [] if trial_id not in status]
    if unknown:
        raise UserError(f"--trial {unknown[0]}: no such trial in {args.store}")
    wanted = list(dict.fromkeys(args.trial or [t for t in status if status[t] in FINISHED]))
    skipped = [] if args.trial else [t for t in status if status[t] not in FINISHED]
    files_before = compacted = 0
    for trial_id in wanted:
        files_before += len(store.trial_files(trial_id)) + len(store.inflight_chunks(trial_id))
        compacted += store.publish(trial_id) is not None
    print(f"compacted {compacted} trial(s): {files_before} file(s) -> {compacted}")
    if skipped:
        print(f"left alone {len(skipped)} unfinished trial(s) (running or error): "
              + ", ".join(f"{t} ({status[t]})" for t in skipped))
    return 0
