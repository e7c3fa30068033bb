"""`gpumon push`: poll every server once and bring the sheet up to date (run it from cron).

One push = ONE read of the sheet, one sweep of the fleet, one plan, ONE write of the cells that
changed (none if nothing did), whatever the fleet size. A set-up (new header cells, row anchors,
rows for --add-rows) happens only when the plan needs one; the sheet is then read once more and
planned afresh, so every write rests on what the sheet says after the set-up.

Exit status, for cron and systemd (the reason is on stderr):
  0  done (servers that are down are data, not errors: they show OFF in the sheet)
  2  config error (gpumon.toml, [sheet] settings, credentials file)
  3  the sheet cannot be read or written (unreachable, quota exhausted, permission, the .xlsx
     corrupt or open in a spreadsheet program)
  4  the sheet's layout cannot be used (no header row with a Server column)
  5  another push holds the lock (an overlapping run; this one wrote nothing)
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from gpumon.config import Config, ConfigError
from gpumon.poll.result import ServerResult
from gpumon.sheet.grid import Backend, SheetError, WriteStats
from gpumon.sheet.layout import LayoutError, read_layout, server_key
from gpumon.sheet.plan import Change, Plan, plan

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_SHEET = 3
EXIT_LAYOUT = 4
EXIT_LOCKED = 5


class LockHeld(Exception):
    """Another push (or serve's push) is writing now."""


class Sweeper(Protocol):
    """What push needs of the poller (gpumon.poll.poller.Poller)."""

    def sweep(self, names: list[str]) -> list[ServerResult]: ...


@dataclass
class PushOutcome:
    results: list[ServerResult]
    plan: Plan
    names: list[str]  # the servers polled, in order
    dry_run: bool = False
    stats: WriteStats = field(default_factory=WriteStats)  # the cell write
    setup_stats: WriteStats | None = None  # the set-up, when one ran
    setup_lines: list[str] = field(default_factory=list)  # what the set-up did
    reads: int = 0
    duration_s: float = 0.0

    @property
    def changes(self) -> list[Change]:
        return self.plan.changes

    @property
    def warnings(self) -> list[str]:
        return self.plan.warnings

    @property
    def on(self) -> list[str]:
        return [r.name for r in self.results if r.on]

    @property
    def off(self) -> list[ServerResult]:
        return [r for r in self.results if not r.on]

    def summary(self) -> str:
        """One line: servers ON/OFF, cells written, requests, duration (serve logs it)."""
        off = ", ".join(f"{r.name}: {r.reason or r.reason_code}" for r in self.off[:5])
        if len(self.off) > 5:
            off += f", +{len(self.off) - 5} more"
        written = "would write" if self.dry_run else "wrote"
        requests = self.stats.requests + (self.setup_stats.requests if self.setup_stats else 0)
        cells = len(self.changes) if self.dry_run else self.stats.cells
        return (
            f"{len(self.results)} servers, {len(self.on)} ON, {len(self.off)} OFF"
            + (f" ({off})" if off else "")
            + f"; {written} {cells} cells ({self.reads} read, {requests} write requests)"
            + f"; {self.duration_s:.2f} s"
        )


def poll_names(
    config: Config, servers_in_sheet: Sequence[str], warnings: list[str] | None = None
) -> list[str]:
    """The sheet's servers (with [poll] servers_from_sheet), then the config's, once each.

    Sheet editors choose what the central box dials with its key, so a name from the sheet is
    polled only if [servers] names it, or it is a host name (IP addresses and "localhost" only
    with [poll] sheet_ips), it matches a [poll] sheet_names pattern (when there are any), and
    it is among the first MAX_SHEET_SERVERS such names. What is left out is said in
    ``warnings``. A sheet name that a [servers.NAME] table names in another case is polled
    under the config's spelling, so the poller finds that table (host names are
    case-insensitive).
    """
    configured = {server_key(name): name for name in config.servers}
    candidates = list(servers_in_sheet) if config.poll.servers_from_sheet else []
    allowed = _from_sheet(config, [n for n in candidates if server_key(n) not in configured])
    notes = allowed.warnings
    kept = set(allowed.names)
    names: list[str] = []
    seen: set[str] = set()
    for name in [*candidates, *config.servers]:
        key = server_key(name)
        if key in seen or (key not in configured and name not in kept):
            continue
        seen.add(key)
        names.append(configured.get(key, name))
    if warnings is not None:
        warnings.extend(notes)
    return names


MAX_SHEET_SERVERS = 512  # names from the sheet polled at most; [servers] tables do not count


@dataclass
class _Allowed:
    names: list[str]
    warnings: list[str]


def _from_sheet(config: Config, names: list[str]) -> _Allowed:
    poll = config.poll
    patterns = [p.strip().casefold() for p in poll.sheet_names]
    out = _Allowed([], [])
    addresses: list[str] = []
    unmatched: list[str] = []
    for name in dict.fromkeys(names):
        if not poll.sheet_ips and names_this_box_or_an_address(name):
            addresses.append(name)
        elif patterns and not any(fnmatch.fnmatchcase(server_key(name), p) for p in patterns):
            unmatched.append(name)
        else:
            out.names.append(name)
    if addresses:
        out.warnings.append(
            f"not polled: {_few(addresses)} — an IP address or localhost in the Server column is "
            "not dialled with the central key; name it in [servers] or set [poll] sheet_ips = true"
        )
    if unmatched:
        out.warnings.append(
            f"not polled: {_few(unmatched)} — no [poll] sheet_names pattern matches "
            f"({', '.join(poll.sheet_names)})"
        )
    if len(out.names) > MAX_SHEET_SERVERS:
        extra = out.names[MAX_SHEET_SERVERS:]
        out.names = out.names[:MAX_SHEET_SERVERS]
        out.warnings.append(
            f"the sheet names {len(out.names) + len(extra)} servers; only the first "
            f"{MAX_SHEET_SERVERS} are polled (not polled: {_few(extra)}) — name the ones to "
            "poll in [servers], or restrict the sheet's with [poll] sheet_names"
        )
    return out


def names_this_box_or_an_address(name: str) -> bool:
    """An IP address in any form the resolver accepts ("127.0.0.1", "127.1", "2130706433",
    "0x7f000001", "::1") or a name for this machine ("localhost", "x.localhost")."""
    lowered = name.strip().casefold().rstrip(".")
    if lowered in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    if lowered.endswith(".localhost"):
        return True
    try:
        socket.inet_aton(lowered)
        return True
    except OSError:
        pass
    try:
        ipaddress.ip_address(lowered)
        return True
    except ValueError:
        return False


def _few(names: list[str], shown: int = 5) -> str:
    listed = ", ".join(repr(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def fleet_names(config: Config) -> list[str]:
    """The servers a push would poll, for `gpumon status` and `gpumon check`: with
    [poll] servers_from_sheet, one read of the sheet; if the sheet cannot be read, the config's
    servers and a warning on stderr."""
    if not config.poll.servers_from_sheet:
        return poll_names(config, [])
    from gpumon.sheet.backends import close_backend, open_backend

    try:
        backend = open_backend(config)
        try:
            layout = read_layout(backend.read(), config.sheet.columns)
        finally:
            close_backend(backend)
    except (SheetError, LayoutError) as e:
        only = f"polling only the servers in {config.origin}"
        print(f"gpumon: warning: {e} — {only}", file=sys.stderr)
        return poll_names(config, [])
    warnings: list[str] = []
    names = poll_names(config, layout.servers(), warnings)
    for warning in warnings:
        print(f"gpumon: warning: {warning}", file=sys.stderr)
    return names


def push_once(
    config: Config,
    backend: Backend,
    poller: Sweeper,
    *,
    dry_run: bool = False,
    add_rows: bool = False,
) -> PushOutcome:
    """One push with the given (possibly long-lived) backend and poller.

    Raises SheetError, LayoutError, ConfigError; the caller maps them to exit codes.
    """
    started = time.monotonic()
    sheet = config.sheet
    grid = backend.read()
    layout = read_layout(grid, sheet.columns)
    not_polled: list[str] = []
    names = poll_names(config, layout.servers(), not_polled)
    results = poller.sweep(names) if names else []
    kwargs = {"columns": sheet.columns, "time_zone": sheet.time_zone, "add_rows": add_rows}
    the_plan = plan(grid, layout, results, **kwargs)
    the_plan.warnings.extend(not_polled)
    outcome = PushOutcome(results=results, plan=the_plan, names=names, dry_run=dry_run, reads=1)
    if dry_run:
        outcome.setup_lines = the_plan.describe_setup()
        outcome.duration_s = time.monotonic() - started
        return outcome
    if the_plan.setup is not None:
        outcome.setup_lines = the_plan.describe_setup()
        outcome.setup_stats = backend.setup(the_plan.setup)
        # Plan again on the sheet as it is now (rows inserted, columns added, rows anchored).
        grid = backend.read()
        outcome.reads += 1
        layout = read_layout(grid, sheet.columns)
        the_plan = plan(grid, layout, results, **kwargs)
        the_plan.warnings.extend(not_polled)
        if the_plan.setup is not None:
            # Rows still missing: the cells say so (a plan with add_rows counts on the rows it
            # asks for), while the warnings keep what the set-up still has to do.
            as_is = plan(grid, layout, results, **dict(kwargs, add_rows=False))
            as_is.warnings = the_plan.warnings + [
                f"set-up not complete yet: {line}" for line in the_plan.describe_setup()
            ]
            as_is.setup = the_plan.setup
            the_plan = as_is
        outcome.plan = the_plan
    outcome.stats = backend.write(the_plan.writes)  # an empty list costs no request
    outcome.duration_s = time.monotonic() - started
    return outcome


@contextmanager
def push_lock(config: Config) -> Iterator[None]:
    """Hold the push lock (``state_dir/push.lock``) or raise LockHeld at once."""
    path = config.state_path("push.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot create the push lock ({e.strerror}); set state_dir in "
            f"{config.origin} to a writable folder"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise LockHeld(
                f"another gpumon push is running{by} and holds {path}; this one stops without "
                "writing (the next run will catch up)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race)


def push(config: Config, dry_run: bool = False, add_rows: bool = False) -> int:
    """`gpumon push`: exit status as in the module docstring."""
    from gpumon.sheet.backends import close_backend, open_backend

    add_rows = add_rows or config.sheet.add_rows
    try:
        # A dry run writes nothing, so it needs no lock: it may run beside cron's pushes.
        with _maybe_lock(config, not dry_run):
            backend = open_backend(config)
            try:
                poller = open_poller(config)
                try:
                    outcome = push_once(config, backend, poller, dry_run=dry_run, add_rows=add_rows)
                finally:
                    poller.close()
            finally:
                close_backend(backend)
    except LockHeld as e:
        return _fail(str(e), EXIT_LOCKED)
    except ConfigError as e:
        return _fail(str(e), EXIT_CONFIG)
    except SheetError as e:
        return _fail(str(e), EXIT_SHEET)
    except LayoutError as e:
        return _fail(str(e), EXIT_LAYOUT)
    report(config, outcome)
    return EXIT_OK


def report(config: Config, outcome: PushOutcome, out=None, err=None) -> None:
    """Warnings to stderr; the dry run's planned changes, the summary and the table to stdout."""
    from gpumon.table import printable

    out = out or sys.stdout
    err = err or sys.stderr
    # Warnings and changes quote sheet cells and server text: never raw to a terminal.
    for warning in outcome.warnings:
        print(printable(f"gpumon: warning: {warning}"), file=err)
    if outcome.setup_stats is not None:
        for reason in outcome.setup_stats.skipped:
            print(printable(f"gpumon: warning: {reason}"), file=err)
    for reason in outcome.stats.skipped:
        print(printable(f"gpumon: warning: not written: {reason}"), file=err)
    if outcome.dry_run:
        print("dry run: nothing written.", file=out)
        for line in outcome.setup_lines:
            print(printable(f"set-up: {line}"), file=out)
        for change in outcome.changes:
            print(printable(f"{change}"), file=out)
        if not outcome.changes:
            print("no cell would change.", file=out)
    else:
        for line in outcome.setup_lines:
            print(f"set-up: {line}", file=out)
    print(f"{_sheet_label(config)}: {outcome.summary()}", file=out)
    if outcome.results and (config.path is None or _isatty(out)):
        print_table(config, outcome.results, out)


def print_table(config: Config, results: list[ServerResult], out) -> None:
    """The fleet table, as `gpumon status` prints it (the poll side's renderer)."""
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


def open_poller(config: Config):
    """What sweeps the fleet: the SSH Poller, or with ``[source] kind = "prometheus"`` the
    Prometheus source (gpumon.poll.prometheus) — the same sweep(names) / close()."""
    if config.source.kind == "prometheus":
        from gpumon.poll.prometheus import PrometheusSource

        return PrometheusSource(config)
    from gpumon.poll.poller import Poller

    return Poller(config)


def _fail(message: str, code: int) -> int:
    print(f"gpumon: {message}", file=sys.stderr)
    return code


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
