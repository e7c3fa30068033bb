"""The `gpumon-agent` console script: ``report --json`` from a fresh snapshot before anything
else is imported, everything else handed to the full CLI (gpumon_agent.cli).

`gpumon-agent report --json` is what the central poller runs over SSH on every server, every
push, so its fast path — a fresh snapshot exists — only stats and copies a file: no pynvml, no
psutil, not even json, argparse, dataclasses or typing (those alone cost more than the rest of
the command together). Whatever it is not sure of — another command line, a value to judge, no
fresh snapshot — goes to the full CLI, which explains errors and samples once itself.

The two settings it needs are read here with the defaults and bounds of
gpumon_agent.settings, mirrored rather than imported (importing that module costs as much as
the whole fast path; tests keep the two equal). A command, like gpumon_agent.cli: it writes to
stdout and reads argv.

Must stay importable on Python 3.8, and cheap to import: module level imports os and sys and
the snapshot store (``TYPE_CHECKING`` is spelled out so that not even typing is loaded).
"""

from __future__ import annotations

import os
import sys

from gpumon_agent.snapshot import read_snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, List, Mapping, Optional, Tuple

    from gpumon_agent.settings import AgentSettings

# Mirrors gpumon_agent.settings (a test keeps them equal).
DEFAULT_STATE_DIR = "/run/gpumon"
DEFAULT_MAX_AGE_S = 10.0
MAX_AGE_BOUNDS = (0.1, 86400.0)


class _FastSettings:
    """The settings the fast paths need, duck-typed like AgentSettings; ``full()`` gives the
    real ones (environment and these values checked) when a sample must be taken."""

    def __init__(self, state_dir: str, max_age_s: float, claims_dir: Optional[str] = None) -> None:
        self.state_dir = state_dir
        self.max_age_s = max_age_s
        self.claims_dir = claims_dir

    def full(self) -> AgentSettings:
        from gpumon_agent.settings import AgentSettings

        changes = {"state_dir": self.state_dir, "max_age_s": self.max_age_s}
        if self.claims_dir:
            changes["claims_dir"] = self.claims_dir
        return AgentSettings.from_env().checked(changes)

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.state_dir, "report.json")


def fast_report(argv: List[str], environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Print a fresh snapshot for `report --json [--state-dir D] [--claims-dir C] [--max-age N]`
    and return 0; ``None`` for any other command line, a value the full CLI must judge (it
    explains errors), or no fresh snapshot (the full CLI samples once)."""
    env = os.environ if environ is None else environ
    if not argv or argv[0] != "report" or "--json" not in argv:
        return None
    state_dir = env.get("GPUMON_STATE_DIR") or DEFAULT_STATE_DIR
    max_age = env.get("GPUMON_MAX_AGE") or ""
    rest = [a for a in argv[1:] if a != "--json"]
    while rest:
        flag, sep, value = rest.pop(0).partition("=")
        if flag not in ("--state-dir", "--claims-dir", "--max-age"):
            return None
        if not sep:
            if not rest:
                return None
            value = rest.pop(0)
        if flag == "--state-dir":
            state_dir = value
        elif flag == "--max-age":
            max_age = value
    try:
        max_age_s = float(max_age) if max_age else DEFAULT_MAX_AGE_S
    except ValueError:
        return None
    if not MAX_AGE_BOUNDS[0] <= max_age_s <= MAX_AGE_BOUNDS[1]:  # NaN fails this too
        return None  # the full CLI says what is wrong
    data, fresh, _why = read_snapshot(_FastSettings(state_dir, max_age_s))
    if data is None or not fresh:
        return None
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


# --- `gpumon-agent ssh`: the forced command --------------------------------------------------

# The forced command's own flags (the administrator's, in authorized_keys): passed on.
SSH_FLAGS = ("--state-dir", "--claims-dir", "--max-age", "--idle-timeout")


def ssh_command(own: List[str], environ: Optional[Mapping[str, str]] = None) -> int:
    """`gpumon-agent ssh [FLAGS]`, the forced command of the central key: run what
    SSH_ORIGINAL_COMMAND asks if it is `report --json` or `stream`, refuse anything else
    (exit 2, nothing run). ``own`` are the forced command's own flags (SSH_FLAGS)."""
    from gpumon_agent.stream import REQUEST_REPORT, allowed_request, refusal

    env = os.environ if environ is None else environ
    requested = env.get("SSH_ORIGINAL_COMMAND")
    found = allowed_request(requested)
    if found is None:
        sys.stderr.write(refusal(requested) + "\n")
        return 2
    if found == REQUEST_REPORT:
        args = ["report", "--json", *_without_flag(own, "--idle-timeout")]
        code = fast_report(args, env)
        if code is not None:
            return code
        from gpumon_agent.cli import main as cli_main

        return cli_main(args)
    return stream_command(own, env)


def stream_command(own: List[str], environ: Optional[Mapping[str, str]] = None) -> int:
    """`gpumon-agent stream [FLAGS]` on stdin/stdout: started fast (no argparse, no
    dataclasses) when the flags and variables are plain; else the full CLI judges them and
    says what is wrong."""
    from gpumon_agent.stream import DEFAULT_IDLE_TIMEOUT_S, IDLE_TIMEOUT_BOUNDS

    env = os.environ if environ is None else environ
    values = _flags(own, SSH_FLAGS)
    if values is not None:
        max_age = _seconds(values.get("--max-age") or env.get("GPUMON_MAX_AGE") or "")
        idle = _seconds(values.get("--idle-timeout") or "")
        if _within(max_age, MAX_AGE_BOUNDS) and _within(idle, IDLE_TIMEOUT_BOUNDS):
            settings = _FastSettings(
                values.get("--state-dir") or env.get("GPUMON_STATE_DIR") or DEFAULT_STATE_DIR,
                DEFAULT_MAX_AGE_S if max_age is None else max_age,  # type: ignore[arg-type]
                values.get("--claims-dir"),
            )
            return run_stream(settings, DEFAULT_IDLE_TIMEOUT_S if idle is None else idle)  # type: ignore[arg-type]
    from gpumon_agent.cli import main as cli_main

    return cli_main(["stream", *own])


def _within(value: object, bounds: Tuple[float, float]) -> bool:
    """Not given, or a number within ``bounds``."""
    if value is None:
        return True
    return isinstance(value, float) and bounds[0] <= value <= bounds[1]


def run_stream(settings: object, idle_timeout_s: float) -> int:
    from gpumon_agent.stream import session

    code, said = session(settings, idle_timeout_s)  # type: ignore[arg-type]
    if said:
        sys.stderr.write(said + "\n")
    return code


def _without_flag(args: List[str], flag: str) -> List[str]:
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = i + 1 < len(args)
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out


def _flags(args: List[str], known: Tuple[str, ...]) -> Optional[Dict[str, str]]:
    """``--flag value`` / ``--flag=value`` pairs of ``known`` flags; None for anything else."""
    values: Dict[str, str] = {}
    rest = list(args)
    while rest:
        flag, sep, value = rest.pop(0).partition("=")
        if flag not in known:
            return None
        if not sep:
            if not rest:
                return None
            value = rest.pop(0)
        values[flag] = value
    return values


def _seconds(raw: str) -> object:
    """float, None when not given, False when not a number (NaN is not one either)."""
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return False
    return value if value == value else False


def main(argv: Optional[List[str]] = None) -> int:
    """The `gpumon-agent` command: the forced command's dispatcher, the stream and the report
    fast paths, else the full CLI (gpumon_agent.cli)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "ssh" and "-h" not in args and "--help" not in args:
        return ssh_command(args[1:])
    if args and args[0] == "stream" and "-h" not in args and "--help" not in args:
        return stream_command(args[1:])
    code = fast_report(args)
    if code is not None:
        return code
    from gpumon_agent.cli import main as cli_main

    return cli_main(args)
