"""`gpumon-agent stream`: a long-lived session that answers each request line with the latest
Report, so a steady poll costs the central box one round trip and the server no new process.

The wire, one line each way (newline-terminated UTF-8):

    agent → poller   HELLO, once, as soon as the session starts
    poller → agent   ``report``
    agent → poller   the latest Report as one line of JSON (the daemon's snapshot, copied; one
                     sampled now when there is no fresh one), or an ERROR line saying why not
    …                the same again, as long as the poller keeps the channel open

HELLO is ``{"schema": "gpumon.stream", "version": 1, "agent_version": …}``; an error line is
``{"schema": "gpumon.stream", "version": 1, "error": "…"}``. A poller that reads a Report (or
anything else) as its first line is talking to something that is not a stream — the old forced
command, ``gpumon-agent report --json`` — and can take that as a one-shot answer.

Bounded, whoever sends what: requests are read at most ``MAX_REQUEST_BYTES`` at a time, and a
line longer than that, any request other than ``report``, or a second request sent before the
first was answered (one request in flight) ends the session with an error line. No request for
``idle_timeout_s`` ends it too, as does an answer the poller does not take within that time;
end of input (the channel closed) ends it at once.

A library module: it reads and writes the file descriptors it is given, prints nothing and
never exits (the `stream` and `ssh` commands of gpumon_agent.cli and gpumon_agent.entry hand it
stdin and stdout). Must stay importable on Python 3.8 and cheap to import: module level
imports os, select and the snapshot store.
"""

from __future__ import annotations

import os
import select
import time

from gpumon_agent import __version__
from gpumon_agent.snapshot import read_snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Optional, Tuple

    from gpumon_agent.settings import AgentSettings

STREAM_SCHEMA = "gpumon.stream"
STREAM_VERSION = 1
REQUEST = b"report"  # the one request there is
MAX_REQUEST_BYTES = 256  # a request line longer than this is not ours
DEFAULT_IDLE_TIMEOUT_S = 600.0
IDLE_TIMEOUT_BOUNDS = (1.0, 86400.0)

# Why a session ended (``serve``'s answer; the command turns it into an exit status).
ENDED_EOF = "eof"  # the channel closed: the normal end
ENDED_IDLE = "idle"  # no request, or the answer not taken, within the idle timeout
ENDED_REFUSED = "refused"  # the poller broke the protocol (the error line says how)
ENDED_GONE = "gone"  # the channel broke while we wrote

# `gpumon-agent ssh`, the forced command: what the central key may ask for, once its program
# word is taken off (``allowed_request``).
REQUEST_REPORT = ("report", "--json")
REQUEST_STREAM = ("stream",)
REQUEST_SHOWN_CHARS = 80  # of a refused request, in the refusal


def allowed_request(requested: Optional[str]) -> Optional[Tuple[str, ...]]:
    """REQUEST_REPORT or REQUEST_STREAM when ``requested`` (SSH_ORIGINAL_COMMAND) is one of the
    two, with or without the program in front (``gpumon-agent``, a path ending in it, or
    ``gpumon agent``: what central boxes send); None for anything else. Split on blanks only —
    nothing here is ever given to a shell."""
    words = (requested or "").split()
    if words and os.path.basename(words[0]) == "gpumon-agent":
        words = words[1:]
    elif len(words) >= 2 and os.path.basename(words[0]) == "gpumon" and words[1] == "agent":
        words = words[2:]
    found = tuple(words)
    return found if found in (REQUEST_REPORT, REQUEST_STREAM) else None


def refusal(requested: Optional[str]) -> str:
    """What `gpumon-agent ssh` says to a request ``allowed_request`` refused: one line, the
    request cut and printable."""
    shown = "".join(
        ch if " " <= ch <= "~" else "?" for ch in (requested or "")[:REQUEST_SHOWN_CHARS]
    )
    said = "no command given" if requested is None else f"refused {shown!r}"
    return (
        f"gpumon-agent ssh: {said}: this key may only run `gpumon-agent report --json` or "
        "`gpumon-agent stream`"
    )


def session(settings: AgentSettings, idle_timeout_s: float) -> Tuple[int, str]:
    """One session on stdin/stdout (fds 0 and 1): ``(exit status, words for stderr)`` — 0 when
    the channel closed or it idled out, 2 when the poller broke the protocol."""
    how, why = serve(settings, 0, 1, idle_timeout_s)
    return (2 if how == ENDED_REFUSED else 0), (f"gpumon-agent stream: {why}" if why else "")


def hello() -> bytes:
    # Built by hand: json is not imported on the way to the first answer.
    text = f'{{"schema": "{STREAM_SCHEMA}", "version": {STREAM_VERSION}, '
    return (text + f'"agent_version": "{__version__}"}}\n').encode("ascii")


def error_line(message: str) -> bytes:
    import json

    return (
        json.dumps({"schema": STREAM_SCHEMA, "version": STREAM_VERSION, "error": message}) + "\n"
    ).encode("utf-8")


def serve(
    settings: AgentSettings,
    rfd: int,
    wfd: int,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    answer: Optional[Callable[[], bytes]] = None,
) -> Tuple[str, str]:
    """Run one session on ``rfd``/``wfd`` until it ends; ``(how, why)``, ``how`` one of the
    ENDED_* values and ``why`` words for the agent's stderr (empty for a normal end)."""
    reply = answer or (lambda: latest_line(settings))
    _nonblocking(wfd)
    if not _write(wfd, hello(), idle_timeout_s):
        return ENDED_GONE, ""
    pending = b""
    while True:
        ready, _, _ = select.select([rfd], [], [], idle_timeout_s)
        if not ready:
            return ENDED_IDLE, f"no request for {idle_timeout_s:g} s: session closed"
        try:
            chunk = os.read(rfd, MAX_REQUEST_BYTES + 1 - len(pending))
        except OSError as e:
            return ENDED_GONE, "input broke (%s)" % (e.strerror or e)
        if not chunk:
            return ENDED_EOF, ""
        pending += chunk
        end = pending.find(b"\n")
        if end < 0:
            if len(pending) > MAX_REQUEST_BYTES:
                return _refuse(wfd, f"request longer than {MAX_REQUEST_BYTES} bytes")
            continue
        line, pending = pending[:end].rstrip(b"\r"), pending[end + 1 :]
        if pending:
            return _refuse(wfd, "one request at a time: wait for the answer before the next")
        if line != REQUEST:
            shown = line[:40].decode("utf-8", "replace")
            return _refuse(wfd, f"unknown request {shown!r}: the only request is 'report'")
        if not _write(wfd, reply(), idle_timeout_s):
            return ENDED_GONE, f"the answer was not taken within {idle_timeout_s:g} s"


def latest_line(settings: AgentSettings) -> bytes:
    """The answer to ``report``: the fresh snapshot as it is (one line), else one Report
    sampled now; an error line when neither can be had."""
    data, fresh, why = read_snapshot(settings)
    if data is not None and fresh:
        if b"\n" not in data[:-1]:
            return data
        why = f"snapshot {settings.snapshot_path} is not one line"
        data = None  # written by something else than the daemon: sample instead
    try:
        from gpumon_agent.snapshot import sample_once

        full = getattr(settings, "full", None)  # the console script's light settings
        real = full() if full is not None else settings
        return (sample_once(real, why, data).to_json() + "\n").encode("utf-8")
    except Exception as e:  # a bug or a broken install: the poller shows these words
        return error_line(f"could not sample: {type(e).__name__}: {e}")


def _refuse(wfd: int, why: str) -> Tuple[str, str]:
    _write(wfd, error_line("refused: " + why), 1.0)
    return ENDED_REFUSED, "refused: " + why


def _nonblocking(fd: int) -> None:
    # Writes wait in select with a bound instead: a poller that stops reading must not hold
    # this process forever.
    os.set_blocking(fd, False)


def _write(fd: int, data: bytes, timeout_s: float) -> bool:
    """All of ``data`` to ``fd`` within ``timeout_s``; False when it broke or timed out."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout_s
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            sent = 0
        except OSError:  # EPIPE: the channel closed
            return False
        view = view[sent:]
        if view:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([], [fd], [], left)
    return True
