"""`psp`: the command line. Each subcommand lives with its module and registers itself here.

Imports are deferred to the subcommand that needs them, so that a bad argument is reported
in well under a second (torch and Ray take seconds to import).
"""
from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence


class OneLineParser(argparse.ArgumentParser):
    """Bad input gets one line naming the argument, exit code 2, no usage dump or traceback."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def add_trial_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrialConfig field (--steps-per-task for steps_per_task); its help is the
    field's description and default, so the config is the one place both are written."""
    from trainables.config import TrialConfig

    for name, field in TrialConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        default = "" if field.default is None else f" (default {field.default})"
        help_text = f"{field.description}{default}".replace("%", "%%")
        if annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif choices:
            parser.add_argument(flag, dest=name, choices=choices, default=None, help=help_text)
        else:
            base = _scalar_type(annotation)
            parser.add_argument(flag, dest=name, type=base, default=None, metavar=base.__name__.upper(),
                                help=help_text)


def _scalar_type(annotation) -> type:
    for candidate in (int, float, str):
        if annotation is candidate or candidate in typing.get_args(annotation):
            return candidate
    return str


def trial_config_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from trainables.config import TrialConfig

    given = {name: getattr(args, name) for name in TrialConfig.model_fields
             if getattr(args, name, None) is not None}
    try:
        return TrialConfig(**given)
    except ValidationError as exc:
        raise UserError(_first_validation_message(exc, flag_style=True)) from None


def _first_validation_message(exc, *, flag_style: bool) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        if flag_style and location:
            location = "--" + location.replace("_", "-")
        problems.append(f"{location or 'config'}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.local_run import run_into_store, run_one

    cfg = trial_config_from_args(args)
    if args.store is not None:
        return run_into_store(cfg, args.store, progress=not args.quiet)
    return run_one(cfg, args.out, force=args.force, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="psp", description="psplab: superposition continual-learning sweeps")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="train one trial locally, without Ray, into a Parquet file "
                                     "or a store")
    add_trial_arguments(run)
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="Parquet file to write (refuses to overwrite; its directory "
                                     "is created)")
    where.add_argument("--store", metavar="DIR",
                       help="results store to add this run to as a trial (created if missing): "
                            "runs side by side, read by psp results/plots and analysis.load")
    run.add_argument("--force", action="store_true", help="replace --out if it exists")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    for module_name in ("orchestrator.sweep_cli", "analysis.cli", "orchestrator.fsck",
                        "orchestrator.compact", "trainables.download"):
        module = _optional_import(module_name)
        if module is not None and hasattr(module, "register"):
            module.register(sub)
    return parser


def _optional_import(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:  # that subcommand's module is not part of this build
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"psp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"psp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        from orchestrator.errors import user_facing

        message = user_facing(exc)
        if message is None:
            raise
        print(f"psp {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
