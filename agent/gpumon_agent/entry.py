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
    from typing import List, Mapping, Optional

# Mirrors gpumon_agent.settings (a test keeps them equal).
DEFAULT_STATE_DIR = "/run/gpumon"
DEFAULT_MAX_AGE_S = 10.0
MAX_AGE_BOUNDS = (0.1, 86400.0)


class _FastSettings:
    """The two settings the fast path needs, duck-typed like AgentSettings."""

    def __init__(self, state_dir: str, max_age_s: float) -> None:
        self.state_dir = state_dir
        self.max_age_s = max_age_s

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


def main(argv: Optional[List[str]] = None) -> int:
    """The `gpumon-agent` command: the fast path, else the full CLI (gpumon_agent.cli)."""
    args = sys.argv[1:] if argv is None else list(argv)
    code = fast_report(args)
    if code is not None:
        return code
    from gpumon_agent.cli import main as cli_main

    return cli_main(args)
