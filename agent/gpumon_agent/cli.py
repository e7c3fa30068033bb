"""`gpumon-agent` (also `gpumon agent …` and `gpumon claim …`): the agent's commands.

The agent's modules are a library — they print nothing, read no argv or stdin and never exit
(tests/test_layering.py checks) — except this module and the console script's entry
(gpumon_agent.entry), which are its commands: argument parsing, what each subcommand prints,
its exit status, and the daemon's logging set-up. Each subcommand imports its library modules
only when chosen.

Exit status: 0 done; 1 the command failed (the report could not sample, the claims registry is
unreadable or refused, a claim error); 2 a bad flag or GPUMON_* variable (the message names it).
`claim` returns its command's status, or 75 (EX_TEMPFAIL, sysexits.h) when the GPUs are taken
or the registry lock is busy, 127 / 126 when the command cannot be started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from typing import TYPE_CHECKING, List, Optional

from gpumon_agent import __version__
from gpumon_agent.settings import AgentSettings, SettingsError

if TYPE_CHECKING:
    from gpumon_agent.report import Report

# `gpumon claim` exit status when it could not claim for a reason that may pass (sysexits.h).
EX_TEMPFAIL = 75

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
        "claim error; 2 a bad flag (--cpu with --gpus or --count)",
        "gpumon claim --gpus auto --count 2 --job kws -- python train.py\n"
        "  gpumon claim --cpu --job 'kws ch32' -- python -m kws train …",
    ),
    "claims": (
        "0 listed; 1 some claim file could not be read (listed as such)",
        "gpumon-agent claims --json",
    ),
    "stream": (
        "0 the channel closed, or no request came within --idle-timeout; 1 a bad setting; "
        "2 a request other than 'report', longer than 256 bytes, or sent before the last was "
        "answered",
        "printf 'report\\n' | gpumon-agent stream",
    ),
    "ssh": (
        "what the command run exits with; 2 anything else asked (nothing is run)",
        'restrict,command="gpumon-agent ssh" ssh-ed25519 AAAA... gpumon-central',
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

    age = argparse.ArgumentParser(add_help=False)
    age.add_argument(
        "--max-age",
        type=float,
        help="a snapshot older than this many seconds is stale and re-sampled (default 10)",
    )

    report = sub.add_parser(
        "report",
        parents=[common, age],
        help="print the latest Report",
        description="Print the latest Report: the daemon's snapshot when fresh, else one "
        "sample taken now (slower, and it says so). --json is what the central poller reads.",
        epilog=_epilog("report"),
        formatter_class=raw,
    )
    report.add_argument("--json", action="store_true", help="the Report as JSON (for the poller)")

    claim = sub.add_parser(
        "claim",
        parents=[common],
        help="run a command with GPUs (or, with --cpu, none) claimed for it",
        description="Run a command with GPUs claimed for it: CUDA_VISIBLE_DEVICES is set to "
        "them, the sheet shows the job, and the claim ends with the command. With --cpu, a "
        "CPU-only job: no GPU is claimed, and the server's Job cell shows it.",
        epilog=_epilog("claim"),
        formatter_class=raw,
        usage="%(prog)s [--gpus auto|0,1|GPU-UUID,...] [--count N] [--job NAME] -- CMD [ARGS...]\n"
        "       %(prog)s --cpu [--job NAME] -- CMD [ARGS...]",
    )
    claim.add_argument(
        "--gpus", help="'auto' (free GPUs, the default), or indices / UUIDs, comma-separated"
    )
    claim.add_argument(
        "--cpu",
        action="store_true",
        help="a CPU-only job: claims no GPU (CUDA_VISIBLE_DEVICES=''), shown in the server's "
        "Job cell as 'USER: JOB (CPU)'",
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

    stream = sub.add_parser(
        "stream",
        parents=[common, age],
        help="answer each 'report' line on stdin with the latest Report (for the poller)",
        description="A long-lived session for the central poller: the first line out is a "
        "hello, then each 'report' line in is answered with the latest Report as one line of "
        "JSON (the snapshot when fresh, else one sampled now). One request at a time; it ends "
        "when stdin closes or no request comes within --idle-timeout.",
        epilog=_epilog("stream"),
        formatter_class=raw,
    )
    stream.add_argument(
        "--idle-timeout",
        type=float,
        help="end the session after this many seconds without a request (default 600)",
    )

    ssh = sub.add_parser(
        "ssh",
        parents=[common, age],
        help="the central key's forced command: runs `report --json` or `stream`, nothing else",
        description="The forced command of the central key (authorized_keys command=): runs "
        "what SSH_ORIGINAL_COMMAND asks when it is `report --json` or `stream` (with or without "
        "`gpumon-agent` in front) and refuses anything else. Its own flags go to the command "
        "run. See deploy/ssh/README.md.",
        epilog=_epilog("ssh"),
        formatter_class=raw,
    )
    ssh.add_argument("--idle-timeout", type=float, help="passed to `stream` (default 600)")
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
        return report_command(settings, as_json=args.json)
    if command == "run":
        from gpumon_agent.daemon import run

        _log_to_stderr()
        return run(settings, metrics=args.metrics)
    if command == "claim":
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print(f"{prog} claim: give the command after --, e.g. -- python train.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        if args.cpu and (args.gpus is not None or args.count != 1):
            print(f"{prog} claim: --cpu claims no GPU; leave out --gpus and --count",
                  file=sys.stderr)  # fmt: skip
            return 2
        return claim_command(cmd, args, settings)
    if command == "claims":
        return claims_command(settings, as_json=args.json)
    if command in ("stream", "ssh"):
        return stream_or_ssh(command, args, settings, prog)
    raise AssertionError(command)  # argparse rejects anything else


# --- `stream`, `ssh` -------------------------------------------------------------------------


def stream_or_ssh(
    command: str, args: argparse.Namespace, settings: AgentSettings, prog: str
) -> int:
    """`stream`, and `ssh` (the forced command), when gpumon_agent.entry's fast start handed
    them over (a flag or variable to judge) or through `gpumon agent …`: the values checked
    here, then what the request asks for run."""
    from gpumon_agent.stream import (
        DEFAULT_IDLE_TIMEOUT_S,
        IDLE_TIMEOUT_BOUNDS,
        REQUEST_REPORT,
        allowed_request,
        refusal,
        session,
    )

    idle = DEFAULT_IDLE_TIMEOUT_S if args.idle_timeout is None else args.idle_timeout
    low, high = IDLE_TIMEOUT_BOUNDS
    if not low <= idle <= high:  # NaN fails this too
        print(f"{prog} {command}: --idle-timeout={idle!r}: give seconds from {low:g} to {high:g}",
              file=sys.stderr)  # fmt: skip
        return 2
    if command == "ssh":
        requested = os.environ.get("SSH_ORIGINAL_COMMAND")
        found = allowed_request(requested)
        if found is None:
            print(refusal(requested), file=sys.stderr)
            return 2
        if found == REQUEST_REPORT:
            return report_command(settings, as_json=True)
    code, said = session(settings, idle)
    if said:
        print(said, file=sys.stderr)
    return code


# --- `report` ---------------------------------------------------------------------------------


def report_command(settings: AgentSettings, as_json: bool) -> int:
    """`gpumon-agent report [--json]` when the fast path (gpumon_agent.entry) did not answer:
    a fresh snapshot copied as is, else one sampled now."""
    from gpumon_agent.snapshot import latest_report, read_snapshot, sample_once

    try:
        if as_json:
            data, fresh, why = read_snapshot(settings)
            if data is not None and fresh:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
                return 0
            report = sample_once(settings, why, data)
        else:
            report = latest_report(settings)
    except Exception as e:  # a bug or a broken install: say what; the poller shows it
        print(f"gpumon-agent report: could not sample: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        sys.stdout.write(summarize(report))
    sys.stdout.flush()
    return 0


def summarize(report: Report, now: Optional[float] = None) -> str:
    """A few lines for a person at a terminal; the poller reads --json instead."""
    from gpumon_agent.report import GPU_OK, parse_utc_iso
    from gpumon_agent.text import cut

    h = report.host
    age = (time.time() if now is None else now) - parse_utc_iso(report.generated_at).timestamp()
    lines = [
        "{}{}  {} ({}, {:.0f} s ago)".format(
            h.hostname,
            "  " + h.primary_ip if h.primary_ip else "",
            report.generated_at,
            report.source,
            max(age, 0.0),
        )
    ]
    host_bits = []
    if h.load_avg:
        host_bits.append("load " + " ".join(f"{x:.2f}" for x in h.load_avg))
    if h.memory_total_bytes:
        host_bits.append(f"mem {_gib(h.memory_used_bytes)} / {_gib(h.memory_total_bytes)}")
    if h.users:
        host_bits.append("users " + ",".join(sorted({u.name for u in h.users})))
    if host_bits:
        lines.append("  " + "  ".join(host_bits))
    if report.nvml.available:
        lines.append("  NVML driver {}".format(report.nvml.driver_version or "?"))
    else:
        lines.append("  NVML unavailable: {}".format(report.nvml.error or "unknown error"))
    for g in report.gpus:
        head = "  GPU {} {}".format(g.index, g.name or "?")
        if g.state != GPU_OK:
            lines.append("{}  {}: {}".format(head, g.state.upper(), g.error or ""))
            continue
        bits = [head]
        if g.utilization_pct is not None:
            mean = g.utilization_mean_pct
            bits.append(
                f"util {g.utilization_pct:.0f}%"
                + (f" (mean {mean:.0f}%)" if mean is not None else "")
            )
        if g.memory_total_bytes:
            bits.append(f"mem {_gib(g.memory_used_bytes)} / {_gib(g.memory_total_bytes)}")
        if g.temperature_c is not None:
            bits.append(f"{g.temperature_c:.0f} C")
        if g.power_w is not None:
            bits.append(f"{g.power_w:.0f} W")
        lines.append("  ".join(bits))
        for p in g.processes or []:
            lines.append(f"      pid {p.pid} {p.user}: {cut(p.command, 60)}")
        if g.processes_error:
            known = "unknown" if g.processes is None else "incomplete"
            lines.append(f"      processes {known}: {g.processes_error}")
        for c in g.claims:
            lines.append(f"      claimed by {c.user} for {c.job!r} (pid {c.pid})")
        if g.unclaimed_use:
            lines.append("      in use without a claim")
        if g.claimed_idle:
            lines.append("      claimed but idle since {}".format(g.idle_since or "?"))
    for w in report.warnings:
        where = f"GPU {w.gpu_index}: " if w.gpu_index is not None else ""
        lines.append(f"  warning {where}{w.message} ({w.code})")
    for e in report.claim_errors:
        lines.append(f"  bad claim file {e.path}: {e.error}")
    for n in report.notes:
        lines.append("  note: " + n)
    return "\n".join(lines) + "\n"


def _gib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


# --- `claims` ---------------------------------------------------------------------------------


def claims_command(settings: AgentSettings, as_json: bool = False) -> int:
    """List the live claims (and unreadable claim files) of this server. Returns 0, or 1 when
    the registry cannot be read (or is refused as unsafe)."""
    from gpumon_agent.claims import ClaimRegistry

    registry = ClaimRegistry.for_settings(settings)
    scan = registry.scan()
    claims, errors = scan.claims, scan.errors
    if as_json:
        out = {
            "registry": registry.path,
            "claims": [
                dict(c.to_dict(), file=c.file_name)
                for c in sorted(claims, key=lambda c: c.started_at)
            ],
            "errors": [{"path": e.path, "error": e.error} for e in errors],
        }
        print(json.dumps(out, indent=2))
    else:
        if not os.path.isdir(registry.path):
            print(f"no claims registry at {registry.path} (the gpumon agent creates it)")
        elif not claims:
            print(f"no live claims in {registry.path}")
        else:
            rows = [("GPUS", "USER", "PID", "STARTED", "JOB", "PROGRESS")]
            for c in sorted(claims, key=lambda c: c.started_at):
                rows.append(
                    (
                        "CPU" if c.cpu else ",".join(str(g.index) for g in c.gpus),
                        _printable(c.user),
                        str(c.pid),
                        _printable(c.started_at),
                        _printable(c.job),
                        _printable(" ".join(f"{k}={v}" for k, v in c.progress.items())),
                    )
                )
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for r in rows:
                print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
        for e in errors:
            print(f"bad claim file {_printable(e.path)}: {_printable(e.error)}", file=sys.stderr)
    return 1 if scan.refused is not None else 0


def _printable(text: str) -> str:
    """Users write claim files: never let their control characters reach a terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# --- `claim -- CMD` ---------------------------------------------------------------------------


def claim_command(
    cmd: List[str], args: argparse.Namespace, settings: AgentSettings, prog: str = "gpumon claim"
) -> int:
    """`gpumon claim -- CMD`: the command's exit status, or why it could not be run."""
    from gpumon_agent.claims import ClaimError, LockTimeout, NoFreeGpu
    from gpumon_agent.hook import CannotRun, GpusUnavailable, run_claimed

    try:
        return run_claimed(
            cmd,
            gpus=args.gpus or "auto",
            count=args.count,
            job=args.job,
            settings=settings,
            cpu=args.cpu,
        )
    except GpusUnavailable as e:
        print(f"{prog}: {e.reason} (for a CPU-only job, use `{prog} --cpu -- …`)", file=sys.stderr)
        return 1
    except ClaimError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EX_TEMPFAIL if isinstance(e, (NoFreeGpu, LockTimeout)) else 1
    except CannotRun as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.status


# --- `run` ------------------------------------------------------------------------------------


def _log_to_stderr() -> None:
    """The daemon's log lines on stderr: under journald, which stamps each line, a prefix gives
    its priority (so `journalctl -p warning` works); by hand, a time helps."""
    from gpumon_agent.journal import PriorityFormatter, under_journal

    log = logging.getLogger("gpumon_agent")
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(message)s"
    if under_journal(sys.stderr):
        handler.setFormatter(PriorityFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s " + fmt))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
