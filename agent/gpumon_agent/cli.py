"""`gpumon-agent` (also `gpumon agent …` and `gpumon claim …`): a thin argparse front.

Each subcommand imports its module only when chosen, so `report --json` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import List, Optional

from gpumon_agent import __version__
from gpumon_agent.settings import AgentSettings, SettingsError

# Each command's --help ends with its exit codes and an example (as gpumon's commands do).
_EXITS = {
    "": (
        "0 done; 1 the command failed (the message says why); 2 a bad option",
        "gpumon-agent report          # this server's GPUs, who runs what",
    ),
    "run": (
        "0 stopped by SIGTERM or Ctrl-C; 1 cannot start (state directory not writable, "
        "another daemon holds it, the metrics port taken); 2 a bad --metrics address",
        "gpumon-agent run --metrics 9835",
    ),
    "report": (
        "0 printed; 1 could not sample (the message says why)",
        "gpumon-agent report --json | python3 -m json.tool",
    ),
    "claim": (
        "the command's own; 128+N when signal N ended it; 127 command not found; 126 cannot "
        "run it; 75 the GPUs are taken or the registry is busy (try again later); 1 another "
        "claim error",
        "gpumon claim --gpus auto --count 2 --job kws -- python train.py",
    ),
    "claims": (
        "0 listed; 1 some claim file could not be read (listed as such)",
        "gpumon-agent claims --json",
    ),
}


def _epilog(command: str) -> str:
    exits, example = _EXITS[command]
    wrapped = textwrap.fill(exits, 76, initial_indent="  ", subsequent_indent="  ")
    return "exit status:\n" + wrapped + "\n\nexample:\n  " + example


def build_parser(prog: str = "gpumon-agent") -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=prog,
        description="gpumon agent: samples this server's GPUs and keeps the latest Report.",
        epilog=_epilog(""),
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version="gpumon-agent " + __version__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", help="where the snapshot lives (env GPUMON_STATE_DIR, default /run/gpumon)"
    )
    common.add_argument(
        "--claims-dir", help="the claims registry (env GPUMON_CLAIMS_DIR, default STATE_DIR/claims)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="the daemon (the default): sample every --interval seconds",
        description="The daemon: sample NVML and the host every --interval seconds and keep "
        "the latest Report in STATE_DIR/report.json (what `report --json` prints).",
        epilog=_epilog("run"),
        formatter_class=raw,
    )
    run.add_argument("--interval", type=float, help="seconds between samples (default 2)")
    run.add_argument("--window", type=float, help="seconds of the utilization mean (default 60)")
    run.add_argument(
        "--idle-after",
        type=float,
        help="a claimed GPU with no process this many seconds is 'claimed but idle' (default 600)",
    )
    run.add_argument(
        "--metrics",
        metavar="[ADDR:]PORT",
        help="serve Prometheus /metrics here (default address 127.0.0.1; off unless given)",
    )
    run.add_argument(
        "--metrics-dcgm-names",
        action="store_true",
        default=None,
        help="/metrics also under dcgm-exporter's names and labels (env "
        "GPUMON_METRICS_DCGM_NAMES=1), for dashboards made for it",
    )

    report = sub.add_parser(
        "report",
        parents=[common],
        help="print the latest Report",
        description="Print the latest Report: the daemon's snapshot when fresh, else one "
        "sample taken now (slower, and it says so). --json is what the central poller reads.",
        epilog=_epilog("report"),
        formatter_class=raw,
    )
    report.add_argument("--json", action="store_true", help="the Report as JSON (for the poller)")
    report.add_argument(
        "--max-age",
        type=float,
        help="a snapshot older than this many seconds is stale and re-sampled (default 10)",
    )

    claim = sub.add_parser(
        "claim",
        parents=[common],
        help="run a command with GPUs claimed for it",
        description="Run a command with GPUs claimed for it: CUDA_VISIBLE_DEVICES is set to "
        "them, the sheet shows the job, and the claim ends with the command.",
        epilog=_epilog("claim"),
        formatter_class=raw,
        usage="%(prog)s [--gpus auto|0,1|GPU-UUID,...] [--count N] [--job NAME] -- CMD [ARGS...]",
    )
    claim.add_argument(
        "--gpus", default="auto", help="'auto' (free GPUs), or indices / UUIDs, comma-separated"
    )
    claim.add_argument("--count", type=int, default=1, help="how many GPUs 'auto' picks")
    claim.add_argument("--job", help="job name shown in the sheet (default: the command)")
    claim.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    claims = sub.add_parser(
        "claims",
        parents=[common],
        help="list the live claims",
        description="List the live claims on this server: GPU, job, user, process, since when.",
        epilog=_epilog("claims"),
        formatter_class=raw,
    )
    claims.add_argument("--json", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> AgentSettings:
    """Environment first, then the flags given; both checked (raises SettingsError)."""
    overrides = {}
    for attr, name in (
        ("state_dir", "state_dir"),
        ("claims_dir", "claims_dir"),
        ("interval", "interval_s"),
        ("window", "window_s"),
        ("idle_after", "idle_after_s"),
        ("max_age", "max_age_s"),
        ("metrics_dcgm_names", "metrics_dcgm_names"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[name] = value
    return AgentSettings.from_env().checked(overrides)


def main(argv: Optional[List[str]] = None, prog: str = "gpumon-agent") -> int:
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command or "run"
    if command == "run" and args.command is None:
        # Bare `gpumon-agent`: the daemon with default options.
        args = build_parser(prog).parse_args(["run"])
    try:
        settings = settings_from(args)
    except SettingsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2

    if command == "report":
        from gpumon_agent.snapshot import print_report

        return print_report(settings, as_json=args.json)
    if command == "run":
        from gpumon_agent.daemon import run

        return run(settings, metrics=args.metrics)
    if command == "claim":
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise SystemExit(f"{prog} claim: give the command after --, e.g. -- python train.py")
        from gpumon_agent.hook import run_claimed

        return run_claimed(cmd, gpus=args.gpus, count=args.count, job=args.job, settings=settings)
    if command == "claims":
        from gpumon_agent.claims import print_claims

        return print_claims(settings, as_json=args.json)
    raise AssertionError(command)  # argparse rejects anything else


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
