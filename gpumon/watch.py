"""`gpumon status --watch [SECONDS]`: the fleet table, redrawn in place like `gpustat -i`.

One Poller for the whole run, so every refresh after the first is an exec on an SSH connection
kept open since (a few ms per server, no new login). On a terminal the table is drawn on the
alternate screen, fitted to the terminal's width and height (re-read on every redraw, and a
resize redraws at once); Ctrl-C (or SIGTERM) puts the terminal back as it was. Piped, each
refresh is printed after the last one (with --json: one JSON document per line).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from gpumon.config import Config
from gpumon.poll.result import ServerResult
from gpumon.status import nothing_to_poll, render_table, to_json
from gpumon.table import cut, is_terminal, printable, terminal_width, use_color

# Terminal control (ECMA-48 / xterm): the alternate screen, cursor home, erase to the end of
# the line / of the screen, hide and show the cursor.
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\033[?1049h", "\033[?1049l"
HOME, ERASE_LINE, ERASE_BELOW = "\033[H", "\033[K", "\033[J"
CURSOR_OFF, CURSOR_ON = "\033[?25l", "\033[?25h"


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def watch(
    config: Config,
    names: list[str],
    interval_s: float,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    count: int | None = None,
) -> int:
    """Poll and redraw every ``interval_s`` until Ctrl-C (or ``count`` refreshes).

    Returns 128 + the signal on SIGTERM/SIGHUP; Ctrl-C's KeyboardInterrupt goes up to the
    command line (exit 130) once the terminal is restored. After ``count`` refreshes: 0 if
    every server was ON in the last one, else 1 (as `gpumon status`)."""
    from gpumon.fleet import open_poller

    out = out or sys.stdout
    err = err or sys.stderr
    if not names:
        return nothing_to_poll(config, err)
    screen = Screen(out) if is_terminal(out) and not as_json else None
    wake = threading.Event()
    restore = _signals(wake)
    results: list[ServerResult] = []
    try:
        with open_poller(config) as poller:
            if screen is not None:
                screen.enter()
                screen.draw([f"gpumon status: polling {len(names)} servers…"])
            done = 0
            while count is None or done < count:
                started = time.monotonic()
                results = poller.sweep(names)
                swept = time.monotonic() - started
                done += 1
                if as_json:
                    out.write(json.dumps(to_json(results)) + "\n")
                    out.flush()
                elif screen is None:
                    out.write("\n".join(frame(results, interval_s, swept, out)) + "\n\n")
                    out.flush()
                else:
                    screen.draw(frame(results, interval_s, swept, out, screen.size()))
                if count is not None and done >= count:
                    break
                # Sleep out the interval; a resize redraws the last results at once.
                deadline = started + interval_s
                while (left := deadline - time.monotonic()) > 0:
                    if wake.wait(left):
                        wake.clear()
                        if screen is not None:
                            screen.draw(frame(results, interval_s, swept, out, screen.size()))
    except _Stopped as e:
        return 128 + e.signum
    finally:
        if screen is not None:
            screen.leave()
        restore()
    return 0 if all(r.on for r in results) else 1


def frame(
    results: list[ServerResult],
    interval_s: float,
    swept_s: float,
    out: TextIO,
    size: os.terminal_size | None = None,
) -> list[str]:
    """The lines of one redraw: a title line, then the table, cut to the terminal's size."""
    width = size.columns if size else None
    on = sum(r.on for r in results)
    title = (
        f"gpumon status · every {interval_s:g} s · {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        f"{len(results)} servers: {on} ON, {len(results) - on} OFF · sweep {swept_s:.2f} s"
    )
    if size is not None:
        title += " · Ctrl-C quits"
    lines = [cut(printable(title), width) if width else title]
    lines += render_table(results, color=use_color(out), width=width).splitlines()
    if size is not None and len(lines) > size.lines - 1 > 1:
        hidden = len(lines) - (size.lines - 2)
        lines = lines[: size.lines - 2]
        lines.append(cut(f"… {hidden} more rows: make the window taller", size.columns))
    return lines


class Screen:
    """The terminal's alternate screen, redrawn in place; left as it was found."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.active = False

    def size(self) -> os.terminal_size:
        width = terminal_width(self.out) or 80
        try:
            lines = os.get_terminal_size(self.out.fileno()).lines
        except (OSError, ValueError, AttributeError):
            lines = 24
        return os.terminal_size((width, lines or 24))

    def enter(self) -> None:
        self.out.write(ALT_SCREEN_ON + CURSOR_OFF)
        self.out.flush()
        self.active = True

    def draw(self, lines: list[str]) -> None:
        # Overwrite in place (no clear first): the table never flickers.
        body = (ERASE_LINE + "\n").join(lines)
        self.out.write(HOME + body + ERASE_LINE + ERASE_BELOW)
        self.out.flush()

    def leave(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            self.out.write(CURSOR_ON + ALT_SCREEN_OFF)
            self.out.flush()
        except (OSError, ValueError):  # the terminal went away (hangup)
            pass


def _signals(wake: threading.Event) -> Callable[[], None]:
    """SIGWINCH wakes the redraw; SIGTERM and SIGHUP stop the watch cleanly. Returns the
    function that puts the previous handlers back. (Signals can only be handled on the main
    thread; elsewhere the watch runs without them.)"""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def resized(signum: int, frame: object) -> None:
        wake.set()

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {
        signal.SIGWINCH: signal.signal(signal.SIGWINCH, resized),
        signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, stop),
    }

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
