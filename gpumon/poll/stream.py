"""The agent's answer over a kept-open `gpumon-agent stream` channel, or one-shot when it has none.

A steady poll is one request line and one answer line on a channel opened in an earlier sweep:
no new process on the server, one round trip (the protocol: gpumon_agent.stream). ``ask``
decides per poll, on a Connection:

- a kept stream: ``report`` → the answer. A stream found closed (the agent's idle timeout, the
  agent restarted or killed) is opened again at once, within this poll's deadlines;
- no stream yet: exec the stream command (``[poll] command`` with ``report --json`` replaced by
  ``stream``), send ``report`` at once, and read. A hello first: a stream, kept. A Report
  first: the server's forced command is the old ``gpumon-agent report --json``, which ran
  whatever was asked — that answer is this poll's, one-shot (``VIA_OLD_COMMAND``). Exit 2 with
  nothing on stdout: an agent older than `stream` (its usage error) — one-shot exec of the
  command from now on for this connection (``RETRY_STREAM_S``, then asked again);
- ``[poll] stream = false``, or a command that does not end in ``report --json``: one-shot.

Answers are held to the limits one-shot output is (``max_bytes``, the stage deadlines); a stream
that answers nonsense, too much, or stalls is closed (a stall also closes the connection: the
poller treats a timeout so), and opened afresh by the next sweep.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass

import paramiko

from gpumon.poll import result as codes
from gpumon.poll.transport import (
    STDERR_KEEP,
    Attempt,
    CommandOutput,
    Connection,
    ConnectionLost,
    PollFailure,
    read_output,
)
from gpumon_agent.stream import REQUEST, STREAM_SCHEMA

# How a poll got its answer (ServerResult.via).
VIA_STREAM = "stream"  # a request on a stream kept open from an earlier sweep
VIA_NEW_STREAM = "new stream"  # a stream opened in this poll (kept for the next)
VIA_ONESHOT = "one-shot"  # the command exec'd, one process on the server
VIA_OLD_COMMAND = "old forced command"  # asked for a stream, the old forced command answered

RETRY_STREAM_S = 3600.0  # an agent without `stream` is asked again after this long
_GATHER_TICK_S = 0.05  # gather re-checks deadlines at least this often
_REQUEST_LINE = REQUEST + b"\n"


class StreamBroken(Exception):
    """A kept stream ended before it answered (closed between sweeps): open it again."""


ENDED = "ended"  # gather: the stream ended before it answered
TIMED_OUT = "timed out"  # gather: its attempt's deadline passed (or the sweep aborted it)
LINE = "line"


def gather(waits: list[tuple[AgentStream, Attempt]], max_bytes: int) -> list[tuple[str, bytes]]:
    """The answers to requests already sent on many streams, waited for together from one
    thread (a steady sweep's: no thread per server, no hand-off per answer): per stream, in
    order, ``(LINE, the line)``, ``(ENDED, what came before the end)`` or ``(TIMED_OUT, b"")``
    once its attempt's deadline passed or the attempt was aborted."""
    outcomes: list[tuple[str, bytes] | None] = [None] * len(waits)
    pending = list(range(len(waits)))
    while pending:
        waiting = []
        for i in pending:
            stream, attempt = waits[i]
            try:
                got = stream.poll_line(max_bytes)
            except (OSError, EOFError):
                got = (b"", True)
            if got is not None:
                outcomes[i] = (ENDED if got[1] else LINE, got[0])
            elif attempt.aborted or attempt.remaining() <= 0:
                outcomes[i] = (TIMED_OUT, b"")
            else:
                waiting.append(i)
        pending = waiting
        if pending:
            wake = min(waits[i][1].deadline for i in pending) - time.monotonic()
            # The channels' pipes wake us when data (or the end) comes; the bound re-checks
            # deadlines and aborts, which close transports without a word.
            ready = [waits[i][0].channel.fileno() for i in pending]
            select.select(ready, [], [], min(max(wake, 0.0), _GATHER_TICK_S))
    return [o for o in outcomes if o is not None]


# Why a server answers one-shot although streams are on (ServerResult.oneshot_why).
WHY_OLD_COMMAND = (
    "its forced command is the old `gpumon-agent report --json` (a process per poll) — make it "
    "`gpumon-agent ssh` in authorized_keys (deploy/ssh/README.md)"
)
WHY_OLD_AGENT = "its gpumon-agent has no `stream` (a process per poll) — upgrade gpumon-agent"


@dataclass
class Answer:
    out: CommandOutput
    via: str
    oneshot_why: str | None = None  # WHY_*: streams are on, yet this one answered one-shot


def stream_command(command: str) -> str | None:
    """The stream command for a one-shot ``command``: its ``report --json`` replaced by
    ``stream`` ("gpumon-agent report --json" → "gpumon-agent stream"); None when it does not
    end in ``report --json`` (a lab's own command: polled one-shot)."""
    words = command.split()
    if len(words) < 3 or words[-2:] != ["report", "--json"]:
        return None
    return " ".join([*words[:-2], "stream"])


class AgentStream:
    """One `stream` channel kept open on a Connection between sweeps."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.stderr = bytearray()
        self._buf = bytearray()  # read beyond the last line

    @property
    def usable(self) -> bool:
        ch = self.channel
        return not (ch.closed or ch.eof_received or ch.exit_status_ready())

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # a channel of a dead transport: nothing left to close
            pass

    def request(self, attempt: Attempt, timeout_s: float, max_bytes: int) -> CommandOutput:
        """``report`` → the answer line; StreamBroken when the stream ended before answering."""
        started = time.monotonic()
        self.send(attempt, timeout_s)
        line, ended = self.read_line(attempt, max_bytes)
        if ended:
            raise StreamBroken("the stream ended before it answered")
        return self.answer(line, started)

    def send(self, attempt: Attempt, timeout_s: float) -> None:
        """The request (stage exec, then read under the same ``timeout_s``); StreamBroken when
        the stream is gone."""
        attempt.enter("exec", timeout_s)
        try:
            self.channel.sendall(_REQUEST_LINE)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise StreamBroken(str(e) or type(e).__name__) from None
        attempt.relabel("read")

    def read_line(self, attempt: Attempt, max_bytes: int) -> tuple[bytes, bool]:
        """The next line, newline included (``max_bytes + 1`` bytes when longer: too large);
        ``ended`` when the stream ended first (the line is then what came before the end)."""
        channel = self.channel
        while True:
            line = self._line(max_bytes)
            if line is not None:
                return line, False
            remaining = attempt.remaining()
            if remaining <= 0 or attempt.aborted:
                raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "read")
            channel.settimeout(remaining)
            try:
                chunk = channel.recv(65536)
            except socket.timeout:
                raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "read") from None
            except (OSError, EOFError) as e:
                attempt.check()
                raise StreamBroken(str(e) or type(e).__name__) from None
            self._drain_stderr()
            if not chunk:
                return self._rest(), True
            self._buf += chunk

    def poll_line(self, max_bytes: int) -> tuple[bytes, bool] | None:
        """``read_line`` without waiting: the line (or the end) if it is there, else None."""
        channel = self.channel
        while channel.recv_ready():
            self._buf += channel.recv(65536)
        self._drain_stderr()
        line = self._line(max_bytes)
        if line is not None:
            return line, False
        if channel.eof_received or channel.closed:
            return self._rest(), True
        return None

    def _line(self, max_bytes: int) -> bytes | None:
        """A whole line from what was read (or ``max_bytes + 1`` bytes of a longer one)."""
        buf = self._buf
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            return line[: max_bytes + 1] if len(line) > max_bytes else line
        if len(buf) > max_bytes:
            return bytes(buf[: max_bytes + 1])
        return None

    def _rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def leftover(self) -> bool:
        """Bytes beyond the last answer: more than one line for one request."""
        return bool(self._buf)

    def answer(self, line: bytes, started: float) -> CommandOutput:
        if line.endswith(b"\n") and self.leftover():
            raise PollFailure(
                codes.BAD_OUTPUT,
                "bad output: the stream sent more than one line for one request",
                "read",
            )
        out = CommandOutput(0, line, b"", too_large=not line.endswith(b"\n"))
        out.elapsed_s = time.monotonic() - started
        said = _stream_message(line)
        if said is not None:
            error = said.get("error")
            if isinstance(error, str) and error:
                raise PollFailure(
                    codes.AGENT_FAILED, f"agent failed: {error[:300]}", "read"
                )  # the stream goes on: the agent said why, and is still there
            raise PollFailure(
                codes.BAD_OUTPUT, "bad output: a stream message where a Report belongs", "read"
            )
        return out

    def _drain_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            chunk = self.channel.recv_stderr(32768)
            if not chunk:
                return
            if len(self.stderr) < STDERR_KEEP:
                self.stderr.extend(chunk[: STDERR_KEEP - len(self.stderr)])


def ask(
    conn: Connection,
    command: str,
    attempt: Attempt,
    timeout_s: float,
    max_bytes: int,
    use_stream: bool = True,
) -> Answer:
    """This poll's answer from the agent on ``conn``: over its stream, a new one, or one-shot.
    Raises PollFailure (a bad answer: the stream is closed), ConnectionLost (the transport
    died: the caller reconnects)."""
    streamed = stream_command(command) if use_stream else None
    if streamed is None:
        return Answer(conn.run(command, attempt, timeout_s, max_bytes), VIA_ONESHOT)
    if time.monotonic() < conn.oneshot_until:
        out = conn.run(command, attempt, timeout_s, max_bytes)
        return Answer(out, VIA_ONESHOT, WHY_OLD_AGENT)
    kept = conn.stream
    if kept is not None:
        conn.stream = None  # given back below only when it answered well
        if kept.usable:
            try:
                out = kept.request(attempt, timeout_s, max_bytes)
            except StreamBroken:
                kept.close()
                if not conn.alive:
                    raise ConnectionLost("connection closed under the stream") from None
            except PollFailure as e:
                if e.code == codes.AGENT_FAILED:
                    conn.stream = kept  # it said why and waits for the next request
                else:
                    kept.close()
                raise
            else:
                if out.too_large:
                    kept.close()
                else:
                    conn.stream = kept
                return Answer(out, VIA_STREAM)
        else:
            kept.close()
            if not conn.alive:
                raise ConnectionLost("connection closed while the stream was idle")
    return _open(conn, command, streamed, attempt, timeout_s, max_bytes)


def _open(
    conn: Connection,
    command: str,
    streamed: str,
    attempt: Attempt,
    timeout_s: float,
    max_bytes: int,
) -> Answer:
    started = time.monotonic()
    channel = conn.exec(streamed, attempt, timeout_s, max_bytes)
    stream = AgentStream(channel)
    keep = False
    try:
        try:
            # Asked at once: the answer follows the hello without another round trip, and an
            # old forced command (which reads no input) ignores it.
            channel.sendall(_REQUEST_LINE)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # it ended already: what it said is read below
        attempt.relabel("read")
        first, ended = _read_first(stream, attempt, max_bytes)
        hello = not ended and _is_hello(first)
        if hello:
            line, ended = stream.read_line(attempt, max_bytes)
            conn.forced_command = "ssh"
            if not ended:
                try:
                    out = stream.answer(line, started)
                except PollFailure as e:
                    keep = e.code == codes.AGENT_FAILED  # it said why, and waits
                    if keep:
                        conn.stream = stream
                    raise
                keep = not out.too_large
                if keep:
                    conn.stream = stream
                return Answer(out, VIA_NEW_STREAM)
            first = line  # it ended before answering: read as a failed command
        # Not a stream (or one that ended): the rest, read as a one-shot command's output.
        out = read_output(channel, attempt, max_bytes, first, bytes(stream.stderr))
        out.elapsed_s = time.monotonic() - started
        if not hello and out.exit_status == 2 and not out.stdout:
            # An agent older than `stream` (its usage error): one-shot, asked again later.
            conn.oneshot_until = time.monotonic() + RETRY_STREAM_S
            conn.forced_command = None
            out = conn.run(command, attempt, timeout_s, max_bytes)
            return Answer(out, VIA_ONESHOT, WHY_OLD_AGENT)
        if not hello and out.stdout.lstrip().startswith(b"{"):
            conn.forced_command = "report"  # the old forced command ran the report anyway
        if out.exit_status == -1 and not out.stdout and not conn.alive:
            raise ConnectionLost("connection closed while the command ran")
        if hello:
            return Answer(out, VIA_NEW_STREAM)
        if conn.forced_command == "report":
            return Answer(out, VIA_OLD_COMMAND, WHY_OLD_COMMAND)
        return Answer(out, VIA_ONESHOT)
    finally:
        if not keep:
            stream.close()


def _read_first(stream: AgentStream, attempt: Attempt, max_bytes: int) -> tuple[bytes, bool]:
    try:
        return stream.read_line(attempt, max_bytes)
    except StreamBroken:
        return b"", True


def _is_hello(line: bytes) -> bool:
    said = _stream_message(line)
    return said is not None and "error" not in said


def _stream_message(line: bytes) -> dict | None:
    """The stream's own message (hello, error) in ``line``, else None (a Report, or junk)."""
    if b'"' + STREAM_SCHEMA.encode() + b'"' not in line[:200]:
        return None  # cheap: a Report never starts with the stream's schema name
    try:
        said = json.loads(line)
    except ValueError:
        return None
    if isinstance(said, dict) and said.get("schema") == STREAM_SCHEMA:
        return said
    return None
