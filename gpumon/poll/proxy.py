"""``ProxyCommand`` from ~/.ssh/config: the SSH connection runs over a command's stdin/stdout.

As OpenSSH does, the command runs through ``/bin/sh -c "exec …"`` (so pipes and shell words
work; paramiko's own ProxyCommand splits it without a shell), here in a session of its own, so
that closing the connection — or the sweep aborting a server stuck at a stage — ends the command
and everything it started. What the command says on stderr is kept (the last few KB) to explain
a failure: "ProxyCommand 'ssh -W %h:%p gw' exited with status 255: Connection refused".

Tokens (%h, %p, %r, ~) were expanded by paramiko's ssh config lookup.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time

import paramiko

STDERR_KEEP = 4096  # bytes of the command's stderr kept for the reason text
_STOP_WAIT_S = 0.5  # how long close() waits for the command to end after SIGTERM


class ProxyCommandSocket(paramiko.ProxyCommand):
    """A socket-like object (what paramiko.Transport needs) over a proxy command."""

    def __init__(self, command: str) -> None:  # no super().__init__: it would spawn its own
        self.command = command
        self.cmd = ["/bin/sh", "-c", "exec " + command]
        self.timeout: float | None = None
        self._stderr = bytearray()
        self._lock = threading.Lock()
        self._closed_by_us = False
        self._eof = False  # its stdout ended: it exited (or closed it) by itself
        self._own_exit: int | None = None  # its status, when it ended before close()
        try:
            self.process = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,  # its own process group: close() ends all of it
            )
        except OSError as e:
            raise paramiko.ProxyCommandFailure(command, e.strerror or str(e)) from None
        self._drain = threading.Thread(
            target=self._read_stderr, name="gpumon-proxy-stderr", daemon=True
        )
        self._drain.start()

    # --- the socket interface paramiko uses ----------------------------------------------

    def send(self, content: bytes) -> int:
        try:
            assert self.process.stdin is not None
            return self.process.stdin.write(content) or 0
        except (OSError, ValueError) as e:
            raise paramiko.ProxyCommandFailure(self.command, self._why(e)) from None

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the command's output (its exit), like a
        socket at EOF; socket.timeout when nothing came within the timeout."""
        try:
            assert self.process.stdout is not None
            fd = self.process.stdout.fileno()
        except ValueError as e:  # closed
            raise paramiko.ProxyCommandFailure(self.command, self._why(e)) from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready, _, _ = select.select([fd], [], [], wait)
            except (OSError, ValueError) as e:  # closed under us
                raise paramiko.ProxyCommandFailure(self.command, self._why(e)) from None
            if ready:
                try:
                    data = os.read(fd, size)
                    self._eof = self._eof or not data
                    return data
                except OSError as e:
                    raise paramiko.ProxyCommandFailure(self.command, self._why(e)) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise socket.timeout()

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def close(self) -> None:
        """End the command and what it started (SIGTERM, then SIGKILL), and reap it."""
        with self._lock:
            if self._closed_by_us:
                return
            self._closed_by_us = True
        if self._eof:  # it ended by itself: keep its status, it says why
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._own_exit = self.process.wait(_STOP_WAIT_S)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_STOP_WAIT_S)
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    @property
    def closed(self) -> bool:
        return self._closed_by_us or self.process.poll() is not None

    # --- why it failed -------------------------------------------------------------------

    def failure(self) -> str | None:
        """If the command has ended: how, and the end of what it said on stderr."""
        code = self._own_exit
        if code is None:
            if self._closed_by_us:
                return None  # ended by us, not by itself
            try:  # its output ended just now: the exit follows within moments
                code = self.process.wait(_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                return None
        self._drain.join(0.2)  # its last words
        status = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        said = self.stderr_tail()
        return f"ProxyCommand {self.command!r} {status}" + (f": {said}" if said else "")

    def stderr_tail(self) -> str:
        with self._lock:
            text = bytes(self._stderr).decode("utf-8", "replace")
        return " ".join(text.split())[-300:]

    def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        with stream:
            while True:
                try:
                    chunk = stream.read(4096)
                except (OSError, ValueError):
                    return
                if not chunk:
                    return
                with self._lock:
                    self._stderr.extend(chunk)
                    del self._stderr[:-STDERR_KEEP]

    def _why(self, error: BaseException) -> str:
        return self.failure() or getattr(error, "strerror", None) or str(error)
