"""A real terminal for tests: a program on a pseudo-terminal (its controlling tty, so resizing
sends it SIGWINCH), its output read as it comes, and helpers to split a full-screen program's
output into frames and measure lines as a terminal shows them."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from wcwidth import wcswidth


def display_width(text: str) -> int:
    """Columns a terminal gives ``text`` — measured here, not with the code under test."""
    width = wcswidth(text)
    assert width >= 0, f"unprintable text on the screen: {text!r}"
    return width


SGR = re.compile(r"\033\[[0-9;]*m")  # colours
CONTROL = re.compile(r"\033\[[0-9;?]*[A-Za-z]")  # every CSI sequence (colour, cursor, erase)


def _take_terminal() -> None:  # in the child, before exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        columns: int = 100,
        lines: int = 30,
    ) -> None:
        self.master, slave = pty.openpty()
        self.resize(columns, lines, signal_it=False)
        self.proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(env),
            cwd=cwd,
            preexec_fn=_take_terminal,
            close_fds=True,
        )
        os.close(slave)
        self._out = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def resize(self, columns: int, lines: int, signal_it: bool = True) -> None:
        """As a terminal window resized: the kernel sends SIGWINCH to the program."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:  # the program closed its end
                    return
                raise
            if not data:
                return
            with self._lock:
                self._out.extend(data)

    @property
    def output(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    def wait_for(self, predicate, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.output
            if predicate(text):
                return text
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s; the screen got:\n{text!r}")
            time.sleep(0.02)

    def interrupt(self) -> int:
        """Ctrl-C as the terminal sends it: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        os.close(self.master)


def frames(output: str, home: str = "\033[H") -> list[str]:
    """The complete redraws in a full-screen program's output (each starts at cursor home and
    ends with erase-below); the raw text of each, escapes kept."""
    parts = output.split(home)[1:]
    return [part for part in parts if "\033[J" in part]


def screen_lines(frame: str) -> list[str]:
    """A frame's lines as shown: cursor and erase sequences dropped, colours kept."""
    body = frame.split("\033[J")[0].replace("\033[K", "")
    return body.replace("\r\n", "\n").split("\n")


def plain(line: str) -> str:
    return CONTROL.sub("", line)


def shown_width(line: str) -> int:
    return display_width(plain(line))
