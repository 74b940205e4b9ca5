"""`psp results` and `psp plots`: registered on the main `psp` parser by orchestrator/cli.py.

Nothing heavy is imported at module level: `psp --help` must stay fast.
"""
from __future__ import annotations

import argparse

from orchestrator.errors import fail, missing_local_path

RESULT_COLUMNS = ["trial_id", "psp", "units", "tasks", "seed", "status", "acc", "steps_done"]


def register(subparsers) -> None:
    results = subparsers.add_parser(
        "results", help="print a table of the trials of a store",
        description="One row per trial: trial_id, psp, units, tasks, seed, status, acc (the final "
                    "average accuracy over all tasks, GEM's ACC) and steps_done.")
    results.add_argument("store", help="store root, sweep directory (holding results/) or a "
                                       "`psp run` Parquet file")
    results.add_argument("--where", metavar="EXPR",
                         help="pandas query over the trial columns, e.g. \"psp == 'binary' and "
                              "units >= 256\"")
    results.add_argument("--csv", metavar="OUT", help="also write the table to this CSV file")
    results.add_argument("--capacity", action="store_true",
                         help="also print K* (model) and K̂ (data) per group with their "
                              "intervals and whether they agree (fits the model: seconds)")
    results.add_argument("--threshold", type=float, default=0.9,
                         help="with --capacity: the threshold as a fraction of each task's "
                              "just-trained accuracy (default 0.9)")
    results.add_argument("--n-boot", type=int, default=200,
                         help="with --capacity: seed-bootstrap resamples (default 200)")
    results.add_argument("--live", action="store_true",
                         help="include the rows of attempts still running (default: the rows of "
                              "attempts that ended, what pandas reads from STORE/steps)")
    results.set_defaults(func=cmd_results)

    plots = subparsers.add_parser(
        "plots", help="write every figure (PNG + SVG), the tables and an index",
        description="Figures of the PSP paper for this store (task-0 accuracy by width and by "
                    "type, accuracy matrices, retention fits, capacity vs width, the paper's "
                    "table) with index.md and index.html.")
    plots.add_argument("store", help="store root, sweep directory or `psp run` Parquet file")
    plots.add_argument("--out", required=True, metavar="DIR", help="directory for the figures")
    plots.add_argument("--threshold", type=float, default=0.9,
                       help="capacity threshold as a fraction of each task's just-trained "
                            "accuracy (default 0.9)")
    plots.add_argument("--chance", type=float, default=0.1,
                       help="chance accuracy (default 0.1: 10 classes)")
    plots.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (default 200)")
    plots.set_defaults(func=cmd_plots)

    from analysis import capacity_cli

    capacity_cli.register(subparsers)


def results_table(store, where: str | None = None, live: bool = False):
    """The trials of ``store`` with their final average accuracy, filtered by ``where``;
    ``live`` counts the rows of attempts still running too."""
    import pandas as pd

    from analysis import metrics
    from analysis.query import QueryError, load, load_trials

    trials = load_trials(store)
    tests = load(store, split="test", columns=["trial_id", "tasks", "steps_per_task", "step",
                                               "split", "eval_task", "accuracy"], live=live)
    if len(tests):
        acc = metrics.summarize(tests)[["trial_id", "acc"]]
    else:
        acc = pd.DataFrame({"trial_id": pd.Series(dtype=trials["trial_id"].dtype),
                            "acc": pd.Series(dtype=float)})
    table = trials.merge(acc, on="trial_id", how="left")
    if where:
        try:
            table = table.query(where)
        except Exception as exc:  # noqa: BLE001 — pandas raises many types for a bad expression
            raise QueryError(f"--where {where!r}: {type(exc).__name__}: {exc}") from None
    return table.sort_values(["psp", "units", "seed", "trial_id"], kind="stable")


def _capacity_text(store, trials, threshold: float, n_boot: int) -> str:
    """K* and K̂ per group of the trials listed (``psp results --capacity``)."""
    from analysis import groups
    from analysis.capacity import capacity_table
    from analysis.query import load
    from analysis.report_text import capacity_text

    tests, by = groups.grouped(load(store, split="test", trial_id=sorted(trials["trial_id"])),
                               trials)
    cap = capacity_table(tests, by=by, trials=trials, threshold=threshold, n_boot=n_boot,
                         errors="note")
    return capacity_text(cap, by)


def cmd_results(args: argparse.Namespace) -> int:
    if missing_local_path(args.store):
        return fail("results", f"{args.store}: no such file or directory")
    if not 0 < args.threshold < 1:
        return fail("results", f"--threshold {args.threshold}: must be in (0, 1)")
    capacity = ""
    try:
        table = results_table(args.store, args.where, live=args.live)
        shown = table[RESULT_COLUMNS]
        if args.csv:
            shown.to_csv(args.csv, index=False)
        if args.capacity and len(table):
            capacity = _capacity_text(args.store, table, args.threshold, args.n_boot)
    except OSError as exc:  # user errors (a bad --where, a broken store) reach `psp`'s handler
        return fail("results", exc)
    if shown.empty:
        print("no trials" + (f" match {args.where!r}" if args.where else ""))
    else:
        print(shown.to_string(index=False, na_rep="—",
                              formatters={"acc": lambda v: "—" if v != v else f"{v:.4f}"}))
        print(f"{len(shown)} trial(s)")
    if capacity:
        print()
        print(capacity)
    if args.csv:
        print(f"wrote {args.csv}")
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    if not 0 < args.threshold < 1:
        return fail("plots", f"--threshold {args.threshold}: must be in (0, 1)")
    if missing_local_path(args.store):
        return fail("plots", f"{args.store}: no such file or directory")
    try:
        from analysis.plots import write_all

        written = write_all(args.store, args.out, args.threshold, chance=args.chance,
                            n_boot=args.n_boot)
    except OSError as exc:  # an unwritable --out; user errors reach `psp`'s handler
        return fail("plots", exc)
    figures = [p for p in written if p.suffix == ".png"]
    index = next(p for p in written if p.name == "index.md")
    print(f"wrote {len(figures)} figures (PNG + SVG) and their tables to {args.out}")
    print(f"index: {index} (and {index.with_suffix('.html')})")
    return 0
