"""Where gpumon's diagnostics go: stderr, one line each, with journald priorities under systemd.

Levels: warnings and errors always; ``-v`` adds what gpumon does (each server's SSH stages with
their times, each HTTP request to Google with its time); ``-vv``/``--debug`` every stage as it
begins. What is logged never holds a secret: no private key, no token, no Authorization header
(HTTP requests are logged as method, address with secret-looking parameters masked, status and
time).

Under journald (``$JOURNAL_STREAM`` names stderr's device and inode, as systemd sets it) every
line starts with its syslog priority, ``<4>`` for a warning, the prefix sd-daemon(3) describes,
so ``journalctl -p warning`` shows warnings and errors only (gpumon_agent.journal, shared with
the agent's daemon). That holds for the lines commands print to stderr themselves too:
``gpumon: warning: …`` lines are warnings, other ``gpumon…`` lines errors.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from typing import TextIO

from gpumon_agent.journal import under_journal, with_priority

LEVEL_WORDS = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
LEVEL_WORDS[logging.DEBUG] = "debug: "
_PREFIX = re.compile(r"^<[0-7]>")
# Loggers of libraries that would say more than gpumon wants said (google-auth's request
# logging can include headers; paramiko's has its own channel, gpumon.poll.ssh).
QUIET = ("urllib3", "google", "googleapiclient", "gspread", "requests", "apscheduler", "paramiko")


class Formatter(logging.Formatter):
    """``gpumon: warning: text`` (info lines without a level word); under journald each line
    of the record (a traceback too) carries the record's ``<N>`` priority."""

    def __init__(self, journal: bool) -> None:
        super().__init__("%(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        word = LEVEL_WORDS.get(record.levelno, "")
        text = f"gpumon: {word}{text}"
        return with_priority(text, record.levelno) if self.journal else text


class _Handler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests swap it), past the journal wrapper
    (the record already carries its priority)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr
            if isinstance(stream, JournalStderr):
                stream = stream.raw
            stream.write(text + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class JournalStderr(io.TextIOBase):
    """sys.stderr under journald: each line a command prints gets a priority prefix — ``<4>``
    for ``…warning: …``, ``<3>`` for other ``gpumon…`` lines (errors), none otherwise (the
    stream's default, info). A message printed in one write keeps one priority for all its
    lines."""

    def __init__(self, raw: TextIO) -> None:
        super().__init__()
        self.raw = raw
        self._pending = ""
        self._priority: str = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self._pending:
            self._priority = _classify(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            prefix = "" if _PREFIX.match(line) else self._priority
            self.raw.write(prefix + line + "\n")
        if lines:
            self.raw.flush()
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return False


def _classify(text: str) -> str:
    head = text.lstrip("\n")[:200]
    if not head.startswith("gpumon"):
        return ""
    first = head.split("\n", 1)[0]
    return "<4>" if "warning:" in first else "<3>"


def setup(verbosity: int = 0, service: bool = False) -> None:
    """Log to stderr: warnings (``service``: and info), ``verbosity`` 1 info, 2 debug.

    Called again (serve after the command line), it only ever lowers the level."""
    root = logging.getLogger()
    level = logging.WARNING
    if service or verbosity >= 1:
        level = logging.INFO
    if verbosity >= 2:
        level = logging.DEBUG
    ours = [h for h in root.handlers if getattr(h, "_gpumon", False)]
    if not ours:
        if under_journal(sys.stderr) and not isinstance(sys.stderr, JournalStderr):
            sys.stderr = JournalStderr(sys.stderr)
            if under_journal(sys.stdout):  # one stream for both: whole lines, in order
                sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
        handler = _Handler()
        handler.setFormatter(Formatter(journal=isinstance(sys.stderr, JournalStderr)))
        handler._gpumon = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(level)
    else:
        root.setLevel(min(root.level, level))
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
