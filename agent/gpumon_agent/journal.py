"""Log lines that journald files under their priority: ``journalctl -p warning`` then shows
warnings and errors only.

systemd gives a service whose stderr goes to the journal ``$JOURNAL_STREAM=DEVICE:INODE`` of
that stream; a line written there that starts with ``<N>`` (N a syslog priority, ``<4>`` for a
warning) is stored with that priority — the prefix sd-daemon(3) describes. Used by the agent's
daemon and by the central ``gpumon`` commands (gpumon.logs).
"""

from __future__ import annotations

import logging
import os
from typing import IO, Any

# logging level → syslog priority (sd-daemon.h: SD_CRIT, SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG)
PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
DEBUG_PRIORITY = 7


def under_journal(stream: IO[Any]) -> bool:
    """Does ``stream`` write into the journal (``$JOURNAL_STREAM`` names its device:inode)?"""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def priority(level: int) -> int:
    for at_least, value in PRIORITIES:
        if level >= at_least:
            return value
    return DEBUG_PRIORITY


def with_priority(text: str, level: int) -> str:
    """Every line of ``text`` (a traceback's too) prefixed with ``level``'s ``<N>``."""
    prefix = f"<{priority(level)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


class PriorityFormatter(logging.Formatter):
    """A Formatter whose every line starts with the record's ``<N>`` priority."""

    def format(self, record: logging.LogRecord) -> str:
        return with_priority(super().format(record), record.levelno)
