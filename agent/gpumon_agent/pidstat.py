"""Who a process is, from /proc: its state, its start time in clock ticks since boot, its uids.

A claim names the process that holds it; to tell that process from a later one with the same
(reused) pid, the claim records its start time. The boot-relative start (field 22 of
/proc/PID/stat) is fixed for the life of the process and does not move when the wall clock is
set, unlike psutil's ``create_time()`` (boot time in wall-clock seconds, as /proc/stat says *now*,
plus that field), which shifts with every clock step: compared across a step, every live claim
would look like a reused pid.

Plain reads of two small files, no psutil: the daemon checks every claim at every sample.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

ZOMBIE_STATES = ("Z", "X", "x")  # zombie, dead (being reaped)


@dataclass
class ProcStat:
    """What /proc says about a pid. ``visible`` False: it exists but /proc hides it from us
    (mounted ``hidepid=``); then nothing else is known."""

    pid: int
    visible: bool = True
    state: str = "?"
    start_ticks: Optional[int] = None
    uids: Tuple[int, ...] = ()  # real, effective, saved, filesystem


def proc_stat(pid: int) -> Optional[ProcStat]:
    """The process ``pid``, or None when there is none (never started, exited and reaped)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except FileNotFoundError:
        return _hidden_or_gone(pid)
    except ProcessLookupError:  # gone between the two reads
        return None
    except PermissionError:
        return ProcStat(pid, visible=False)
    # The command name (field 2, in parentheses) may hold spaces and ')': split after the last.
    _, _, rest = stat_line.rpartition(b")")
    fields = rest.split()
    if len(fields) < 20:
        return None
    uids: Tuple[int, ...] = ()
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            uids = tuple(int(x) for x in line.split()[1:])
            break
    return ProcStat(
        pid, state=fields[0].decode("ascii", "replace"), start_ticks=int(fields[19]), uids=uids
    )


def _hidden_or_gone(pid: int) -> Optional[ProcStat]:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return None
    except PermissionError:
        pass  # exists, someone else's
    return ProcStat(pid, visible=False)


def start_ticks(pid: int) -> Optional[int]:
    """The boot-relative start of ``pid`` in clock ticks, or None (gone, or hidden)."""
    st = proc_stat(pid)
    return None if st is None else st.start_ticks


def wall_start(ticks: int) -> float:
    """A start in ticks since boot as wall-clock seconds, by today's boot time (informational:
    it moves with the clock; compare ticks, not this)."""
    return boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime line in /proc/stat")  # pragma: no cover - every Linux has one


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (any user's), cheaply: kill(pid, 0)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
