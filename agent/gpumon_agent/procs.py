"""Who runs a GPU process: pid -> (user, command line) via psutil (``describe``), and every
process of a list of GPUs named at once (``name_processes``).

NVML gives pids only. A pid can vanish between NVML's answer and this lookup, or belong to a
process this user may not inspect; both read as "?" — never an exception.
"""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

import psutil

from gpumon_agent.report import Gpu
from gpumon_agent.text import cut

UNKNOWN = "?"
# Command lines are shown in a sheet cell: long ones are cut, with "…" saying so.
MAX_COMMAND_CHARS = 200


def describe(pid: int) -> Tuple[str, str]:
    """(user name, command line) of `pid`; "?" for each part that cannot be read."""
    try:
        process = psutil.Process(pid)
    except (psutil.Error, ValueError, OverflowError):  # gone, or not a valid pid
        return UNKNOWN, UNKNOWN
    return _user(process), _command(process)


def name_processes(gpus: Iterable[Gpu]) -> None:
    """Fill in each listed GPU process's ``user`` and ``command``; a process on several GPUs is
    looked up once. GPUs whose processes are unknown (None) are left as they are."""
    seen: Dict[int, Tuple[str, str]] = {}
    for gpu in gpus:
        for process in gpu.processes or []:
            if process.pid not in seen:
                seen[process.pid] = describe(process.pid)
            process.user, process.command = seen[process.pid]


def _user(process: psutil.Process) -> str:
    try:
        # psutil falls back to the numeric uid when no passwd entry exists.
        return process.username() or UNKNOWN
    except (psutil.Error, OSError):
        return UNKNOWN


def _command(process: psutil.Process) -> str:
    try:
        words = process.cmdline()
        text = " ".join(words) if words else f"[{process.name()}]"  # kernel thread
    except (psutil.Error, OSError):
        return UNKNOWN
    text = " ".join(text.split())  # newlines and tabs in arguments would break a cell
    if not text or text == "[]":
        return UNKNOWN
    return cut(text, MAX_COMMAND_CHARS)
