"""`gpumon push`: poll every server once and bring the sheet up to date (run it from cron).

The push itself is gpumon.fleet's ``push_once``: ONE read of the sheet, one sweep of the fleet,
one plan, ONE write of the cells that changed (none if nothing did), whatever the fleet size.
This command takes the push lock (not for a dry run, which writes nothing), opens the backend
and the poller (``open_fleet``), and prints what the outcome says (``outcome_messages``:
warnings on stderr, the rest on stdout) and the fleet table.

Exit status, for cron and systemd (the reason is on stderr; gpumon.fleet.EXIT_CODES):
  0  done (servers that are down are data, not errors: they show OFF in the sheet)
  2  config error (gpumon.toml, [sheet] settings, credentials file)
  3  the sheet cannot be read or written (unreachable, quota exhausted, permission, the .xlsx
     corrupt or open in a spreadsheet program)
  4  the sheet's layout cannot be used (no header row with a Server column)
  5  another push holds the lock (an overlapping run; this one wrote nothing)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from gpumon.config import Config, ConfigError
from gpumon.fleet import (
    EXIT_OK,
    LockHeld,
    PushOutcome,
    exit_code,
    open_fleet,
    outcome_messages,
    push_lock,
    push_once,
)
from gpumon.history.recorder import after_push
from gpumon.poll.result import ServerResult
from gpumon.sheet.grid import SheetError
from gpumon.sheet.layout import LayoutError


def push(config: Config, dry_run: bool = False, add_rows: bool = False) -> int:
    """`gpumon push`: exit status as in the module docstring."""
    add_rows = add_rows or config.sheet.add_rows
    try:
        # A dry run writes nothing, so it needs no lock: it may run beside cron's pushes.
        with _maybe_lock(config, not dry_run), open_fleet(config) as fleet:
            outcome = push_once(
                config, fleet.backend(), fleet.poller(), dry_run=dry_run, add_rows=add_rows
            )
            # After the sheet's write: the history never costs the push (warnings at most).
            later = after_push(config, outcome, fleet.backend())
    except (LockHeld, ConfigError, SheetError, LayoutError) as e:
        print(f"gpumon: {e}", file=sys.stderr)
        return exit_code(e)
    print_outcome(config, outcome)
    from gpumon.table import printable

    for line in later:
        print(printable(f"gpumon: warning: {line}"), file=sys.stderr)
    return EXIT_OK


def print_outcome(
    config: Config, outcome: PushOutcome, out: TextIO | None = None, err: TextIO | None = None
) -> None:
    """What the outcome says: warnings to stderr; a dry run's planned changes, the set-up, the
    summary and (on a terminal, or for the embedded default) the table to stdout."""
    from gpumon.table import printable

    out = out or sys.stdout
    err = err or sys.stderr
    # The lines quote sheet cells and server text: never raw to a terminal.
    for message in outcome_messages(outcome, _sheet_label(config)):
        if message.level >= logging.WARNING:
            print(printable(f"gpumon: warning: {message.text}"), file=err)
        else:
            print(printable(message.text), file=out)
    if outcome.results and (config.path is None or _isatty(out)):
        print_table(config, outcome.results, out)


def print_table(config: Config, results: list[ServerResult], out: TextIO) -> None:
    """The fleet table, as `gpumon status` prints it."""
    from gpumon.status import render_table
    from gpumon.table import terminal_width, use_color

    print(render_table(results, color=use_color(out), width=terminal_width(out)), file=out)


def _sheet_label(config: Config) -> str:
    if config.sheet.backend == "xlsx":
        from gpumon.sheet.xlsx import resolve_path

        return str(resolve_path(config))
    return "sheet"


@contextmanager
def _maybe_lock(config: Config, locked: bool) -> Iterator[None]:
    if not locked:
        yield
        return
    with push_lock(config):
        yield


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
