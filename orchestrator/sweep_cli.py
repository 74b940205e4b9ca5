"""`psp sweep launch|resume|status|validate` and `psp cluster validate`: argument parsing only.

The spec is validated (pydantic and yaml only) before anything heavy is imported, so a bad spec
is reported in a fraction of a second, one line per problem, exit code 2. Ray is imported by
orchestrator.launch once there is something to run.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator.spec import SpecError, check_name, load_spec

DEFAULT_STORAGE = "results/sweeps"


def register(subparsers) -> None:
    from orchestrator.cli import OneLineParser

    sweep = subparsers.add_parser("sweep", help="run a sweep spec on Ray: launch, status, resume")
    commands = sweep.add_subparsers(dest="sweep_command", required=True, parser_class=OneLineParser)

    launch = commands.add_parser("launch", help="run every grid point of a sweep spec")
    launch.add_argument("spec", metavar="SPEC", help="sweep spec (YAML), e.g. sweeps/demo.yaml")
    launch.add_argument("--address", default=None,
                        help="Ray cluster: 'auto' (the cluster this node belongs to), "
                             "HOST:PORT or ray://HOST:PORT; default: an embedded local Ray")
    launch.add_argument("--storage", default=None,
                        help="path or URI every node can reach (default: the spec's storage)")
    launch.add_argument("--name", default=None, help="sweep name (default: the spec's name)")
    launch.add_argument("--resume", action="store_true",
                        help="continue the sweep if it exists instead of refusing")
    launch.add_argument("--smoke", action="store_true",
                        help="apply the spec's smoke: overrides (a tiny version of the sweep)")
    launch.add_argument("--quiet", action="store_true", help="no Tune progress table")
    launch.set_defaults(func=cmd_launch)

    resume = commands.add_parser("resume", help="finish a sweep whose driver stopped")
    resume.add_argument("name", metavar="NAME")
    resume.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    resume.add_argument("--address", default=None, help="Ray cluster (default: embedded local Ray)")
    resume.add_argument("--quiet", action="store_true",
                        help="no Tune progress table (a restored sweep keeps the verbosity it "
                             "was launched with)")
    resume.set_defaults(func=cmd_resume)

    status = commands.add_parser("status", help="trials by state, progress and errors")
    status.add_argument("name", metavar="NAME")
    status.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    status.set_defaults(func=cmd_status)

    validate = commands.add_parser("validate", help="check a spec and count its trials")
    validate.add_argument("spec", metavar="SPEC")
    validate.add_argument("--smoke", action="store_true")
    validate.set_defaults(func=cmd_validate)

    cluster = subparsers.add_parser("cluster", help="Ray cluster-launcher configs")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True,
                                              parser_class=OneLineParser)
    check = cluster_commands.add_parser("validate", help="check a config against Ray's schema")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_cluster_validate)


def _load(path: str):
    """The validated spec, or None after printing every problem on stderr, one line each."""
    try:
        return load_spec(path)
    except SpecError as exc:
        _report(exc)
        return None


def _report(exc: SpecError) -> int:
    print("\n".join(exc.problems), file=sys.stderr)
    return 2


def cmd_launch(args: argparse.Namespace) -> int:
    spec = _load(args.spec)
    if spec is None:
        return 2
    if args.name is not None and not _valid_name(args.name):
        return 2
    from orchestrator.launch import launch

    return launch(spec, name=args.name, storage=args.storage, address=args.address,
                  resume=args.resume, smoke=args.smoke, verbose=0 if args.quiet else 1)


def cmd_resume(args: argparse.Namespace) -> int:
    if not _valid_name(args.name):
        return 2
    from orchestrator.launch import resume_sweep

    return resume_sweep(args.name, args.storage, address=args.address,
                        verbose=0 if args.quiet else 1)


def cmd_status(args: argparse.Namespace) -> int:
    if not _valid_name(args.name):
        return 2
    from orchestrator.launch import sweep_status

    print(sweep_status(args.name, args.storage))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args.spec)
    if spec is None:
        return 2
    print(f"{args.spec}: ok, {len(spec.trials(smoke=args.smoke))} trials")
    return 0


def cmd_cluster_validate(args: argparse.Namespace) -> int:
    from orchestrator.launch import validate_cluster_config

    validate_cluster_config(args.file)
    print(f"{args.file}: ok (Ray's cluster-config schema)")
    return 0


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except SpecError as exc:
        _report(exc)
        return False
    return True
