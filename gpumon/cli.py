"""The `gpumon` command: argument parsing and dispatch only; the work lives in its modules."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from gpumon import __version__

if TYPE_CHECKING:
    import argparse

# Delegated verbatim to the agent's own CLI (kept first: `gpumon agent report --json` is hot).
AGENT_COMMANDS = {"agent": None, "claim": "claim"}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="gpumon",
        description="Keep the 'Server and GPU usage' sheet live from every server's gpumon agent.",
    )
    parser.add_argument("--version", action="version", version="gpumon " + __version__)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default ~/.config/gpumon/gpumon.toml; without one, the embedded "
        "default: this machine into ./gpumon-sheet.xlsx)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    push = sub.add_parser("push", help="poll every server once and write the sheet (for cron)")
    push.add_argument("--dry-run", action="store_true", help="print the planned cell changes only")
    push.add_argument(
        "--add-rows", action="store_true", help="insert rows for GPUs the sheet does not list"
    )

    sub.add_parser("serve", help="push every [serve] interval_s until SIGTERM")

    status = sub.add_parser("status", help="poll the fleet and print a table")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("check", help="check config, credentials, sheet layout and SSH to each server")

    trust = sub.add_parser("trust", help="show a server's SSH host key and record it")
    trust.add_argument("host", metavar="HOST", help="server name as in the sheet or config")
    trust.add_argument("--yes", action="store_true", help="record without asking")

    sub.add_parser("agent", help="the agent (see `gpumon agent --help`)", add_help=False)
    sub.add_parser(
        "claim", help="run a command with GPUs claimed (see `gpumon claim --help`)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in AGENT_COMMANDS:
        from gpumon_agent.entry import fast_report

        # `gpumon agent report --json` with a fresh snapshot: no argparse, no pynvml.
        if argv[0] == "agent" and (code := fast_report(argv[1:])) is not None:
            return code
        from gpumon_agent.cli import main as agent_main

        sub = AGENT_COMMANDS[argv[0]]
        # `gpumon claim` is the agent's `claim` subcommand: its usage reads "gpumon claim".
        prog = "gpumon" if sub else "gpumon agent"
        return agent_main(([sub] if sub else []) + argv[1:], prog=prog)

    args = build_parser().parse_args(argv)
    from gpumon.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"gpumon: {e}", file=sys.stderr)
        return 2

    if args.command == "push":
        from gpumon.push import push

        return push(config, dry_run=args.dry_run, add_rows=args.add_rows)
    if args.command == "serve":
        from gpumon.serve import serve

        return serve(config)
    if args.command == "status":
        from gpumon.fleet import fleet_names
        from gpumon.status import status

        warnings: list[str] = []
        try:
            names = fleet_names(config, warnings)
        except ConfigError as e:
            print(f"gpumon: {e}", file=sys.stderr)
            return 2
        for warning in warnings:
            print(f"gpumon: warning: {warning}", file=sys.stderr)
        return status(config, as_json=args.json, names=names)
    if args.command == "check":
        from gpumon.check import check

        return check(config)
    if args.command == "trust":
        from gpumon.trust import trust

        return trust(config, args.host, assume_yes=args.yes)
    raise AssertionError(args.command)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
