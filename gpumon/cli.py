"""The `gpumon` command: argument parsing and dispatch only; the work lives in its modules.

Ctrl-C ends any command at once with exit status 130 and no traceback; a closed stdout
(`gpumon status --json | head`) ends it with 141, quietly. The help texts are in gpumon.help.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from gpumon import __version__

if TYPE_CHECKING:
    import argparse

# Delegated verbatim to the agent's own CLI (kept first: `gpumon agent report --json` is hot).
AGENT_COMMANDS = {"agent": None, "claim": "claim"}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program Ctrl-C ended
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a program whose reader went away
COLOR_MODES = ("auto", "always", "never")
DEFAULT_WATCH_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from gpumon import help as texts

    parser = argparse.ArgumentParser(
        prog="gpumon",
        description=texts.MAIN.description,
        epilog=texts.MAIN.epilog(),
        formatter_class=texts.HelpFormatter,
    )
    parser.add_argument("--version", action="version", version="gpumon " + __version__)
    _add_common(parser, suppress=False)
    # The same options after the command (`gpumon push --config X -v`): given there, they win.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, **kwargs: object) -> argparse.ArgumentParser:
        text = texts.COMMANDS[name]
        return sub.add_parser(
            name,
            help=text.summary,
            description=text.description,
            epilog=text.epilog(),
            formatter_class=texts.HelpFormatter,
            **kwargs,  # type: ignore[arg-type]
        )

    push = command("push", parents=[common])
    push.add_argument("--dry-run", action="store_true", help="print the planned cell changes only")
    push.add_argument(
        "--add-rows", action="store_true", help="insert rows for GPUs the sheet does not list"
    )

    command("serve", parents=[common])

    status = command("status", parents=[common])
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--watch",
        nargs="?",
        type=_seconds,
        const=DEFAULT_WATCH_S,
        metavar="SECONDS",
        help=f"redraw the table every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C, "
        "with the SSH connections kept open",
    )

    command("check", parents=[common])

    free = command("free", parents=[common])
    free.add_argument(
        "--count", type=_count, metavar="N", help="only servers with N free GPUs, N each"
    )
    free.add_argument(
        "--for",
        dest="person",
        metavar="PERSON",
        help="a [people] name or Unix user: GPUs reserved for them count as free (default: you)",
    )
    free.add_argument("--json", action="store_true", help="a JSON list, one object per GPU")

    trust = command("trust", parents=[common])
    trust.add_argument("host", metavar="HOST", help="server name as in the sheet or config")
    trust.add_argument("--yes", action="store_true", help="record without asking")

    targets = command("prometheus-targets", parents=[common])
    targets.add_argument(
        "--out",
        metavar="FILE",
        help="replace FILE atomically when the fleet changed (default: print to stdout)",
    )

    history = command("history", parents=[common])
    period = history.add_mutually_exclusive_group()
    period.add_argument(
        "--since",
        metavar="SPAN",
        help="from SPAN ago until now: 7d (the default), 36h, 2w, 90m, or a date 2026-11-23",
    )
    period.add_argument("--week", metavar="WEEK", help="an ISO week, Monday to Monday: 2026-W48")
    history.add_argument(
        "--by",
        choices=("person", "server", "gpu"),
        help="one table: per person, per server or per GPU (default: person and server)",
    )
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument(
        "--png",
        metavar="FILE",
        help="also draw a chart into FILE (needs matplotlib: pip install 'gpumon[charts]')",
    )
    alerts = command("alerts", parents=[common])
    alerts.add_argument(
        "action",
        nargs="?",
        choices=("list", "test"),
        default="list",
        help="list (the default): what is active now and each channel's state; test: send a "
        "test message through every channel",
    )
    alerts.add_argument("--json", action="store_true", help="machine-readable output (list)")

    completion = command("completion")
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")

    # Their --help is the agent's own (gpumon_agent.cli), reached before this parser runs.
    command("agent", add_help=False)
    command("claim", add_help=False)
    return parser


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    import argparse

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    config = parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="the config file (else $GPUMON_CONFIG, $XDG_CONFIG_HOME/gpumon/gpumon.toml, "
        "/etc/gpumon/gpumon.toml, the embedded default)",
    )
    config.complete = {"bash": "_shtab_compgen_files", "zsh": "_files"}  # type: ignore[attr-defined]
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="say what gpumon does: SSH stages and Sheets requests with their times (-vv: more)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="everything -vv shows (never keys, tokens or Authorization headers)",
    )
    parser.add_argument(
        "--color",
        choices=COLOR_MODES,
        default=default("auto"),
        help="colour the table: auto (a terminal, unless NO_COLOR is set), always, never",
    )


def _count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{value}: give 1 to 1024 GPUs")
    return value


def _seconds(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text}: give seconds from 0.1 to 86400")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one command; 130 on Ctrl-C, 141 when stdout's reader went away."""
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_PIPE_CLOSED


def entry() -> None:
    """The console script: main(), then at once out (threads still blocked on a silent server
    are not waited for: everything they hold is closed with the process)."""
    code = main()
    if code == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def _main(argv: list[str]) -> int:
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
    from gpumon import logs
    from gpumon.table import set_color_mode

    logs.setup(verbosity=2 if args.debug else args.verbose)
    set_color_mode(args.color)
    if args.command == "completion":
        from gpumon.completion import script

        sys.stdout.write(script(build_parser(), args.shell))
        return 0

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

        warnings: list[str] = []
        try:
            names = fleet_names(config, warnings)
        except ConfigError as e:
            print(f"gpumon: {e}", file=sys.stderr)
            return 2
        for warning in warnings:
            print(f"gpumon: warning: {warning}", file=sys.stderr)
        if args.watch is not None:
            from gpumon.watch import watch

            return watch(config, names, interval_s=args.watch, as_json=args.json)
        from gpumon.status import status

        return status(config, as_json=args.json, names=names)
    if args.command == "check":
        from gpumon.check import check

        return check(config)
    if args.command == "free":
        from gpumon.free import free

        return free(config, count=args.count, person=args.person, as_json=args.json)
    if args.command == "prometheus-targets":
        from gpumon.targets import prometheus_targets

        return prometheus_targets(config, args.out)
    if args.command == "history":
        from gpumon.history_command import run

        return run(
            config, since=args.since, week=args.week, by=args.by, as_json=args.json, png=args.png
        )
    if args.command == "alerts":
        from gpumon.alerts_command import alerts, alerts_test

        if args.action == "test":
            return alerts_test(config)
        return alerts(config, as_json=args.json)
    if args.command == "trust":
        from gpumon.trust import trust

        return trust(config, args.host, assume_yes=args.yes)
    raise AssertionError(args.command)


def _say(text: str) -> None:
    from gpumon.table import is_terminal

    # On a terminal, off the line the ^C was echoed on.
    lead = "\n" if is_terminal(sys.stderr) else ""
    try:
        print(f"{lead}gpumon: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _stdout_to_devnull() -> None:
    """Whatever is still buffered for the closed pipe goes nowhere (no 'Exception ignored'
    message at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    entry()
