"""`psp capacity backtest` and `psp capacity report`: registered by analysis/cli.py.

Arguments are checked before pandas and scipy are imported, so a bad one is answered at once.
"""
from __future__ import annotations

import argparse
import os

from orchestrator.errors import fail, missing_local_path

FAMILY_CHOICES = ("auto", "power", "power_half", "exp", "weibull")


def register(subparsers) -> None:
    capacity = subparsers.add_parser(
        "capacity", help="capacity forecasts checked on held-out tasks, and the study report",
        description="Backtest the capacity model's forecasts on a store, or write the whole "
                    "capacity-study report (figures and markdown) from one.")
    # The parser class of `psp`'s own subcommands: one-line errors, exit code 2.
    sub = capacity.add_subparsers(dest="capacity_command", required=True,
                                  parser_class=subparsers._parser_class)

    bt = sub.add_parser(
        "backtest", help="forecast every group from its first tasks and score the forecasts",
        description="For every group (every trial parameter that varies), fit the retention "
                    "model on the measurements taken while the first --fit-tasks tasks trained, "
                    "forecast every later accuracy-matrix entry, and print the error in "
                    "accuracy points (seed means and per trial) and the coverage of the "
                    "prediction intervals.")
    bt.add_argument("store", help="store root, sweep directory or `psp run` Parquet file")
    bt.add_argument("--fit-tasks", type=int, default=10, metavar="M",
                    help="fit on the first M tasks (default 10)")
    _common(bt)
    bt.add_argument("--out", metavar="DIR",
                    help="write the forecast-vs-measured figures and the tables (CSV) here")
    bt.set_defaults(func=cmd_backtest)

    report = sub.add_parser(
        "report", help="write the capacity-study report (markdown + PNG figures)",
        description="K* and K̂ per group with intervals, α against the theory's 1, the backtest "
                    "(held-out seeds and all seeds), Figure 2/3 analogues and the paper's "
                    "claims, each marked reproduced or not by the rule the report states.")
    report.add_argument("store", help="store root or sweep directory")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="directory for README.md and the figures")
    report.add_argument("--fit-tasks", type=int, default=10, metavar="M",
                        help="backtest split (default 10)")
    report.add_argument("--dev-seeds", default="0,1", metavar="LIST",
                        help="seeds the modelling choices were made on (default 0,1); the "
                             "backtest is also scored on the other seeds alone")
    report.add_argument("--threshold", type=float, default=0.9,
                        help="capacity threshold, a fraction of the just-trained accuracy")
    _common(report, where=False)
    report.set_defaults(func=cmd_report)


def _common(parser, where: bool = True) -> None:
    parser.add_argument("--family", choices=FAMILY_CHOICES, default="auto",
                        help="retention curve: auto (chosen by held-out error inside the fit "
                             "window; the default), or one family")
    parser.add_argument("--level", type=float, default=0.9,
                        help="prediction-interval level (default 0.9)")
    parser.add_argument("--n-boot", type=int, default=200,
                        help="seed-bootstrap resamples (default 200)")
    if where:
        parser.add_argument("--where", metavar="EXPR",
                            help="pandas query over the trials table, e.g. \"seed >= 2\"")


def _fail(message: object) -> int:
    return fail("capacity", message)


def _check(args) -> str | None:
    """The first bad argument, in words, or None. Creates --out: a report that cannot be
    written is refused before the minute its computation takes, not after."""
    if args.fit_tasks < 2:
        return f"--fit-tasks {args.fit_tasks}: need at least 2 tasks to fit retention"
    if not 0 < args.level < 1:
        return f"--level {args.level}: must be in (0, 1)"
    if args.n_boot < 0:
        return f"--n-boot {args.n_boot}: must be 0 or more"
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0 < threshold < 1:
        return f"--threshold {threshold}: must be in (0, 1)"
    if missing_local_path(args.store):
        return f"{args.store}: no such file or directory"
    if args.out:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as exc:
            return f"--out {args.out}: cannot create it ({exc.strerror or exc})"
    return None


def load_for_backtest(store, where: str | None, fit_tasks: int):
    """(test rows, trials) of ``store``, filtered by ``where``; refuses a split that leaves
    nothing to compare (``--fit-tasks`` at or beyond the tasks run). Only pandas and pyarrow
    are imported before that answer."""
    import pandas as pd

    from analysis.query import QueryError, load, load_trials
    from orchestrator.cli import UserError

    trials = load_trials(store)
    if where:
        try:
            trials = trials.query(where)
        except Exception as exc:  # noqa: BLE001 — pandas raises many types for a bad expression
            raise QueryError(f"--where {where!r}: {type(exc).__name__}: {exc}") from None
    if trials.empty:
        raise UserError(f"{store}: no trials" + (f" match {where!r}" if where else ""))
    tests = load(store, split="test", trial_id=sorted(trials["trial_id"]))
    most = trials["tasks"].max()
    if pd.isna(most) and len(tests):  # a trials row without its parameters: ask the steps
        most = tests["tasks"].max() if tests["tasks"].notna().any() else tests["eval_task"].max() + 1
    most = 0 if pd.isna(most) else int(most)
    if fit_tasks >= most:
        raise UserError(f"--fit-tasks {fit_tasks}: the store's trials ran at most {most} tasks, "
                        f"so no later task is left to compare the forecast with")
    return tests, trials


def cmd_backtest(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        return _fail(problem)
    try:
        tests, trials = load_for_backtest(args.store, args.where, args.fit_tasks)
        # scipy and the models only now: a bad split or --where is answered without them.
        from analysis.backtesting import backtest
        from analysis.report_text import backtest_text

        result = backtest(tests, args.fit_tasks, trials=trials, family=args.family,
                          level=args.level, n_boot=args.n_boot)
        print(backtest_text(result))
        if args.out:
            from analysis.plots_forecast import write_backtest

            written = write_backtest(result, args.out)
            print(f"wrote {', '.join(str(p) for p in written)}")
    except OSError as exc:  # an unwritable --out; user errors reach `psp`'s handler
        return _fail(exc)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        return _fail(problem)
    try:
        dev = tuple(int(s) for s in args.dev_seeds.split(",") if s.strip())
    except ValueError:
        return _fail(f"--dev-seeds {args.dev_seeds!r}: a comma-separated list of seeds")
    try:
        from analysis.study import write_study

        path = write_study(args.store, args.out, fit_tasks=args.fit_tasks, dev_seeds=dev,
                           threshold=args.threshold, family=args.family, level=args.level,
                           n_boot=args.n_boot)
    except OSError as exc:  # an unwritable --out; user errors reach `psp`'s handler
        return _fail(exc)
    print(f"wrote {path} and its figures")
    return 0
