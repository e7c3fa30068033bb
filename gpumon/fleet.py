"""The fleet the central commands work on — the API that `push`, `serve`, `status` and `check`
(and the features after them) build on:

- which servers a command polls: ``poll_names`` (pure: the sheet's names as allowed, then the
  config's) and ``fleet_names`` (reads the sheet for them when ``[poll] servers_from_sheet``);
- ``open_fleet``: one context manager that opens the sheet backend and the poller when first
  asked for and closes what it opened, kept open across pushes as long as it is held;
- ``push_once``: one push with them (one read, one sweep, one plan, one write), under
  ``push_lock`` when it writes; it judges every GPU's State (``judge_gpus``: the sheet's
  reservations against claims and processes, gpumon.gpustate) and keeps the idle/unused times
  in the state directory's database (gpumon.usetimes);
- ``survey``: the same read, sweep and judgement without a write (`gpumon free`);
- ``outcome_messages``: what a push's outcome says (warnings, set-up, planned changes, the
  summary line), which `gpumon push` prints and `gpumon serve` logs;
- the exit codes of the commands (``EXIT_CODES``) and ``exit_code`` for an error a push raised.

Usage::

    with push_lock(config), open_fleet(config) as fleet:
        outcome = push_once(config, fleet.backend(), fleet.poller())
    for message in outcome_messages(outcome, "sheet"):
        ...  # message.level (logging.WARNING / INFO), message.text

A library: nothing here prints, reads argv or exits; errors are raised (ConfigError, SheetError,
LayoutError, LockHeld) and the commands turn them into lines and exit codes.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gpumon.alerts.engine import AlertOutcome, PushAlerts
from gpumon.config import Config, ConfigError
from gpumon.gpustate import GpuState, StateInput, advance_times, gpu_states, health_lines
from gpumon.poll.result import ServerResult
from gpumon.sheet.cells import StateCells
from gpumon.sheet.grid import Backend, Grid, SheetError, WriteStats
from gpumon.sheet.layout import Layout, LayoutError, read_layout, server_key
from gpumon.sheet.plan import Change, Plan, plan, sheet_timezone
from gpumon.sheet.reservations import People, Reservation, read_reservations
from gpumon.usetimes import GpuTimes, load_times, update_times
from gpumon_agent.filelock import FileLock, LockBusy, LockFileError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gpumon.poll.poller import Poller
    from gpumon.poll.prometheus import PrometheusSource

# --- exit codes -------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2
EXIT_SHEET = 3
EXIT_LAYOUT = 4
EXIT_LOCKED = 5

# The one table of what the central commands' exit statuses mean (for cron, systemd, --help).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done (push: servers that are down are data, not errors: they show OFF)",
    EXIT_PROBLEM: "status: some server is OFF; check: a problem was found; trust: not recorded; "
    "free: no GPU is free",
    EXIT_CONFIG: "config error (gpumon.toml, [sheet] settings, credentials file), or nothing "
    "to poll",
    EXIT_SHEET: "the sheet cannot be read or written (unreachable, quota exhausted, permission, "
    "the .xlsx corrupt or open in a spreadsheet program)",
    EXIT_LAYOUT: "the sheet's layout cannot be used (no header row with a Server column)",
    EXIT_LOCKED: "another push holds the lock (an overlapping run; this one wrote nothing)",
}


class LockHeld(Exception):
    """Another push (or serve's push) is writing now."""


def exit_code(error: BaseException) -> int:
    """The exit status for an error a push raised: EXIT_LOCKED, EXIT_CONFIG, EXIT_SHEET or
    EXIT_LAYOUT; EXIT_PROBLEM for any other."""
    for kind, code in (
        (LockHeld, EXIT_LOCKED),
        (ConfigError, EXIT_CONFIG),
        (SheetError, EXIT_SHEET),
        (LayoutError, EXIT_LAYOUT),
    ):
        if isinstance(error, kind):
            return code
    return EXIT_PROBLEM


# --- which servers ----------------------------------------------------------------------------

MAX_SHEET_SERVERS = 512  # names from the sheet polled at most; [servers] tables do not count


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
        warnings.extend(allowed.warnings)
    return names


def fleet_names(config: Config, warnings: list[str]) -> list[str]:
    """The servers a push would poll, for `gpumon status` and `gpumon check`: with
    [poll] servers_from_sheet, one read of the sheet; if the sheet cannot be read, the config's
    servers and a warning saying so. Warnings are appended to ``warnings``; raises ConfigError
    when the sheet backend is misconfigured."""
    if not config.poll.servers_from_sheet:
        return poll_names(config, [])
    try:
        with open_fleet(config) as fleet:
            layout = read_layout(fleet.backend().read(), config.sheet.columns)
    except (SheetError, LayoutError) as e:
        warnings.append(f"{e} — polling only the servers in {config.origin}")
        return poll_names(config, [])
    return poll_names(config, layout.servers(), warnings)


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


# --- the backend and the poller ---------------------------------------------------------------


def open_backend(config: Config) -> Backend:
    """The sheet backend ``[sheet] backend`` names (raises ConfigError, SheetError)."""
    from gpumon.sheet.backends import open_backend as open_named

    return open_named(config)


def open_poller(config: Config) -> Poller | PrometheusSource:
    """What sweeps the fleet: the SSH Poller, or with ``[source] kind = "prometheus"`` the
    Prometheus source (gpumon.poll.prometheus) — the same sweep(names) / close() (raises
    ConfigError)."""
    if config.source.kind == "prometheus":
        from gpumon.poll.prometheus import PrometheusSource

        return PrometheusSource(config)
    from gpumon.poll.poller import Poller

    return Poller(config)


class FleetSession:
    """The sheet backend and the poller of one command run, each opened when first asked for
    (so a command that needs only one never opens the other) and kept until ``close``."""

    def __init__(
        self,
        config: Config,
        backend_opener: Callable[[Config], Backend] | None = None,
        poller_opener: Callable[[Config], Poller | PrometheusSource] | None = None,
    ) -> None:
        self.config = config
        self._open_backend = backend_opener
        self._open_poller = poller_opener
        self._backend: Backend | None = None
        self._poller: Poller | PrometheusSource | None = None

    def backend(self) -> Backend:
        """The sheet backend, opened on first use (raises ConfigError, SheetError)."""
        if self._backend is None:
            # This module's opener is looked up now, so that a test may replace it.
            self._backend = (self._open_backend or open_backend)(self.config)
        return self._backend

    def poller(self) -> Poller | PrometheusSource:
        """The poller, opened on first use (raises ConfigError)."""
        if self._poller is None:
            self._poller = (self._open_poller or open_poller)(self.config)
        return self._poller

    def close(self) -> None:
        """Close the poller (its SSH connections), then the backend; each at most once."""
        poller, self._poller = self._poller, None
        backend, self._backend = self._backend, None
        try:
            if poller is not None:
                poller.close()
        finally:
            if backend is not None:
                backend.close()


@contextmanager
def open_fleet(config: Config) -> Iterator[FleetSession]:
    """A FleetSession for the ``with`` block; what it opened is closed on leaving it."""
    session = FleetSession(config)
    try:
        yield session
    finally:
        session.close()


# --- one push ---------------------------------------------------------------------------------


class Sweeper(Protocol):
    """What a push needs of the poller (gpumon.poll.poller.Poller)."""

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
    # (server_key, GPU index) → the Usage cell's reservation (gpumon.sheet.reservations)
    reservations: dict[tuple[str, int], Reservation] = field(default_factory=dict)
    gpu_states: list[GpuState] = field(default_factory=list)  # every GPU's State
    alerts: AlertOutcome | None = None  # what the alerts did (none for a dry run)

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
        """One line: servers ON/OFF, cells written, requests, duration."""
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


def push_once(
    config: Config,
    backend: Backend,
    poller: Sweeper,
    *,
    dry_run: bool = False,
    add_rows: bool = False,
) -> PushOutcome:
    """One push with the given (possibly long-lived) backend and poller.

    One read of the sheet, one sweep of the fleet, one plan, one write of the cells that changed
    (none if nothing did). A set-up (new header cells, row anchors, rows for ``add_rows``)
    happens only when the plan needs one; the sheet is then read once more and planned afresh,
    so every write rests on what the sheet says after the set-up. The GPUs' idle/unused times
    are saved in the state directory's database (not by a dry run). Raises SheetError, LayoutError,
    ConfigError (``exit_code`` maps them).
    """
    started = time.monotonic()
    sheet = config.sheet
    grid = backend.read()
    layout = read_layout(grid, sheet.columns)
    not_polled: list[str] = []
    names = poll_names(config, layout.servers(), not_polled)
    results = poller.sweep(names) if names else []
    now = time.time()
    if dry_run:
        times = advance_times(load_times(config), results, now)
    else:
        times, problem = update_times(config, lambda saved: advance_times(saved, results, now), now)
        if problem is not None:
            not_polled.append(
                f"{problem}; the State column counts them from now — set state_dir in "
                f"{config.origin} to a writable folder"
            )
    # A dry run only reads the alert state (if there is one), for the Health cells it shows.
    alerts = PushAlerts(config, read_only=dry_run)
    try:
        alerts.mark_off_since(results)
        outcome = _plan_and_write(config, backend, grid, layout, results, names, not_polled,
                                  times, now, dry_run=dry_run, add_rows=add_rows)  # fmt: skip
        if not dry_run:
            tz = sheet_timezone(grid, sheet.time_zone)[0]
            outcome.alerts = alerts.after_push(results, getattr(outcome, "gpu_states", None), tz)
    except Exception:
        # The sheet failed, not the fleet: servers that went down are still told.
        if not dry_run:
            said = alerts.after_push(results, None, sheet_timezone(grid, sheet.time_zone)[0])
            for line in [*said.warnings, *said.failed]:
                log.warning("%s", line)
        raise
    finally:
        alerts.close()
    outcome.duration_s = time.monotonic() - started
    return outcome


def _plan_and_write(
    config: Config,
    backend: Backend,
    grid: Grid,
    layout: Layout,
    results: list[ServerResult],
    names: list[str],
    not_polled: list[str],
    times: dict[str, GpuTimes],
    now: float,
    *,
    dry_run: bool,
    add_rows: bool,
) -> PushOutcome:
    sheet = config.sheet
    judged = judge_gpus(config, grid, layout, results, times, now)
    kwargs = {"columns": sheet.columns, "time_zone": sheet.time_zone, "add_rows": add_rows}
    the_plan = plan(grid, layout, results, states=judged.cells, **kwargs)
    the_plan.warnings.extend(not_polled)
    outcome = PushOutcome(
        results=results,
        plan=the_plan,
        names=names,
        dry_run=dry_run,
        reads=1,
        reservations=judged.reservations,
        gpu_states=judged.states,
    )
    if dry_run:
        outcome.setup_lines = the_plan.describe_setup()
        return outcome
    if the_plan.setup is not None:
        outcome.setup_lines = the_plan.describe_setup()
        outcome.setup_stats = backend.setup(the_plan.setup)
        # Plan again on the sheet as it is now (rows inserted, columns added, rows anchored).
        grid = backend.read()
        outcome.reads += 1
        layout = read_layout(grid, sheet.columns)
        judged = judge_gpus(config, grid, layout, results, times, now)
        outcome.reservations, outcome.gpu_states = judged.reservations, judged.states
        the_plan = plan(grid, layout, results, states=judged.cells, **kwargs)
        the_plan.warnings.extend(not_polled)
        if the_plan.setup is not None:
            # Rows still missing: the cells say so (a plan with add_rows counts on the rows it
            # asks for), while the warnings keep what the set-up still has to do.
            as_is = plan(grid, layout, results, states=judged.cells, **dict(kwargs, add_rows=False))
            as_is.warnings = the_plan.warnings + [
                f"set-up not complete yet: {line}" for line in the_plan.describe_setup()
            ]
            as_is.setup = the_plan.setup
            the_plan = as_is
        outcome.plan = the_plan
    outcome.stats = backend.write(the_plan.writes)  # an empty list costs no request
    return outcome


# --- every GPU's State ------------------------------------------------------------------------


@dataclass
class Judged:
    """The sheet's reservations held against one sweep (gpumon.gpustate)."""

    reservations: dict[tuple[str, int], Reservation]
    states: list[GpuState]
    people: People
    cells: dict[str, StateCells]  # server_key → its State cells and Health lines
    layout: Layout | None = None
    results: list[ServerResult] = field(default_factory=list)


def known_users(results: Sequence[ServerResult]) -> set[str]:
    """The Unix users the fleet shows: with processes, holding claims, logged in."""
    users: set[str] = set()
    for result in results:
        report = result.report
        if report is None:
            continue
        for gpu in report.gpus:
            users.update(p.user for p in gpu.processes or [])
            users.update(c.user for c in gpu.claims)
        users.update(u.name for u in report.host.users or [])
    users.discard("?")
    return users


def judge_gpus(
    config: Config,
    grid: Grid,
    layout: Layout,
    results: Sequence[ServerResult],
    times: dict[str, GpuTimes],
    now: float,
) -> Judged:
    """Every GPU's State from the sheet's Usage column, ``[people]`` and one sweep. Pure."""
    users = known_users(results)
    reservations = read_reservations(grid, layout, config.people_users, users)
    people = People.of(config.people_users, users)
    tz = sheet_timezone(grid, config.sheet.time_zone)[0]
    states = gpu_states(StateInput(results, layout, reservations, people, times, now, tz))
    conflicts = health_lines(states)
    cells: dict[str, StateCells] = {}
    for state in states:
        entry = cells.setdefault(server_key(state.server), StateCells())
        entry.gpus[state.gpu] = state.text
    for server, lines in conflicts.items():
        cells.setdefault(server_key(server), StateCells()).health.extend(lines)
    return Judged(reservations, states, people, cells, layout, list(results))


def survey(config: Config, backend: Backend, poller: Sweeper) -> Judged:
    """What a push would see, without writing anything: one read of the sheet, one sweep,
    every GPU judged (the saved idle/unused times are read, not updated). For `gpumon free`."""
    grid = backend.read()
    layout = read_layout(grid, config.sheet.columns)
    names = poll_names(config, layout.servers())
    results = poller.sweep(names) if names else []
    now = time.time()
    times = advance_times(load_times(config), results, now)
    return judge_gpus(config, grid, layout, results, times, now)


PUSH_LOCK = "push.lock"


@contextmanager
def push_lock(config: Config) -> Iterator[None]:
    """Hold the push lock (``state_dir/push.lock``, this process's pid in it) or raise LockHeld
    at once; ConfigError when the state directory cannot hold it."""
    path = config.state_path(PUSH_LOCK)
    lock = FileLock(str(path), mode=0o600, record_pid=True)  # the pusher's alone
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except LockBusy as e:
        by = f" (pid {e.holder})" if e.holder else ""
        raise LockHeld(
            f"another gpumon push is running{by} and holds {path}; this one stops without "
            "writing (the next run will catch up)"
        ) from None
    except (LockFileError, OSError) as e:
        reason = e.reason if isinstance(e, LockFileError) else e.strerror or e
        raise ConfigError(
            f"{path}: cannot create the push lock ({reason}); set state_dir in "
            f"{config.origin} to a writable folder"
        ) from None
    try:
        yield
    finally:
        lock.release()  # the file stays (unlinking it would race)


# --- what a push says -------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    level: int  # logging.WARNING or logging.INFO
    text: str  # may quote sheet cells and server text: a terminal needs gpumon.table.printable


def outcome_messages(outcome: PushOutcome, label: str) -> list[Message]:
    """What a push's outcome says, in order: warnings (the plan's, what the set-up or the write
    skipped), then the set-up's lines, a dry run's planned changes, and the summary line
    ``"{label}: N servers, …"``."""
    warn, info = logging.WARNING, logging.INFO
    out = [Message(warn, w) for w in outcome.warnings]
    if outcome.setup_stats is not None:
        out += [Message(warn, reason) for reason in outcome.setup_stats.skipped]
    out += [Message(warn, f"not written: {reason}") for reason in outcome.stats.skipped]
    if outcome.alerts is not None:
        out += [Message(warn, line) for line in outcome.alerts.warnings]
        out += [Message(warn, f"alerts: {line}") for line in outcome.alerts.failed]
        out += [Message(info, f"alerts: sent through {line}") for line in outcome.alerts.sent]
    if outcome.dry_run:
        out.append(Message(info, "dry run: nothing written."))
    out += [Message(info, f"set-up: {line}") for line in outcome.setup_lines]
    if outcome.dry_run:
        changes = [Message(info, str(change)) for change in outcome.changes]
        out += changes or [Message(info, "no cell would change.")]
    out.append(Message(info, f"{label}: {outcome.summary()}"))
    return out
