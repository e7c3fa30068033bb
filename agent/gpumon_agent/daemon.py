"""`gpumon-agent run`: sample every interval, keep the latest Report in the snapshot file.

- Ticks are scheduled on a fixed grid (start + k * interval, monotonic clock), so the period does
  not drift by the sampling time; ticks missed (a suspended machine, a slow sample) are skipped,
  not caught up in a burst.
- A sample that raises never stops the daemon: it is logged (once per distinct error, then every
  few minutes), and the last good Report is rewritten with a note saying the values are old.
- SIGTERM / SIGINT stop it after the current tick. The snapshot stays (complete: every write is
  a rename), goes stale after GPUMON_MAX_AGE, and then `report` samples itself and says so. A
  restarted daemon reads it back to know since when each GPU has been idle.
- An flock on ``<state_dir>/agent.lock`` keeps a second daemon from fighting over the snapshot.
- Logs go to stderr (journald under systemd, which stamps the time itself).

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import IO, Callable, Optional, Protocol

from gpumon_agent import __version__
from gpumon_agent.report import Host, Nvml, Report, utc_iso
from gpumon_agent.settings import AgentSettings

log = logging.getLogger("gpumon_agent")

LOCK_FILE = "agent.lock"
# A failing sample is logged when its message changes, else at most this often.
_REPEAT_LOG_S = 300.0


class Collects(Protocol):
    """What the loop needs of gpumon_agent.collect.Collector."""

    def collect(self) -> Report: ...


class DaemonState:
    """What the daemon shares with the /metrics thread: replaced whole, read without a lock."""

    def __init__(self) -> None:
        self.report: Optional[Report] = None  # the latest written (may carry a failure note)
        self.sample_ok = False
        self.sample_errors = 0
        self.samples = 0
        self.sample_seconds = 0.0  # duration of the last sample
        self.hung_nvml_calls = 0  # NVML calls past their deadline, not returned yet


def run(settings: AgentSettings, metrics: Optional[str] = None) -> int:
    _setup_logging()
    listen = None
    if metrics:
        from gpumon_agent.metrics import MetricsError, parse_listen

        try:
            listen = parse_listen(metrics)
        except MetricsError as e:
            log.error("%s", e)
            return 2
    try:
        prepare_dirs(settings)
        lock = take_lock(settings)
    except DaemonError as e:
        log.error("%s", e)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("got %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    state = DaemonState()
    server = None
    try:
        if listen is not None:
            from gpumon_agent.metrics import MetricsError, start_server

            try:
                server = start_server(state, listen[0], listen[1])
            except MetricsError as e:
                log.error("%s", e)
                return 1
            bound = server.server_address
            log.info("serving Prometheus metrics on http://%s/metrics", _hostport(*bound[:2]))

        from gpumon_agent.collect import Collector

        collector = Collector(settings, previous=previous_report(settings))
        log.info(
            "gpumon-agent %s: sampling every %g s into %s (claims in %s)",
            __version__,
            settings.interval_s,
            settings.snapshot_path,
            settings.claims_path,
        )
        try:
            loop(settings, collector, state, stop)
        finally:
            collector.close()
        log.info("stopped")
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        lock.close()


def loop(
    settings: AgentSettings,
    collector: Collects,
    state: DaemonState,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    wait: Optional[Callable[[float], object]] = None,
) -> None:
    """Tick until ``stop`` is set. ``clock``/``wait`` are the monotonic clock and the
    interruptible sleep (``stop.wait``); tests pass their own to check the schedule."""
    wait = stop.wait if wait is None else wait
    interval = settings.interval_s
    start = clock()
    tick = 0
    failure = _FailureLog()
    while not stop.is_set():
        tick_once(settings, collector, state, failure)
        tick += 1
        now = clock()
        due = start + tick * interval
        if due <= now:  # fell behind: skip to the next slot on the grid
            tick = int((now - start) // interval) + 1
            due = start + tick * interval
        wait(due - now)


def tick_once(
    settings: AgentSettings, collector: Collects, state: DaemonState, failure: _FailureLog
) -> None:
    began = time.monotonic()
    try:
        report = collector.collect()
    except Exception as e:
        state.sample_errors += 1
        state.sample_ok = False
        failure.failed(e)
        report = _failed_report(state.report, e)
    else:
        state.sample_ok = True
        failure.recovered()
    state.samples += 1
    state.sample_seconds = time.monotonic() - began
    state.hung_nvml_calls = getattr(collector, "hung_nvml_calls", 0)
    state.report = report
    try:
        from gpumon_agent.snapshot import write_snapshot

        write_snapshot(settings, report)
    except (OSError, ValueError) as e:
        failure.failed(e, what="writing " + settings.snapshot_path)


def _failed_report(last_good: Optional[Report], error: Exception) -> Report:
    """The last good Report, marked; or, before any good sample, an empty one saying why."""
    note = f"sample failed at {utc_iso()} ({type(error).__name__}: {error})"
    if last_good is None:
        return Report(
            generated_at=utc_iso(),
            host=Host(hostname=socket.gethostname()),
            agent_version=__version__,
            nvml=Nvml(available=False, error=note, error_code="sample_failed"),
            notes=[note],
        )
    report = copy.deepcopy(last_good)
    stale = [n for n in report.notes if not n.startswith("sample failed at ")]
    report.notes = [note + "; values are from " + report.generated_at, *stale]
    return report


class _FailureLog:
    """Logs a failing sample with its traceback once, repeats at most every few minutes."""

    def __init__(self) -> None:
        self.last_message: Optional[str] = None
        self.last_logged = 0.0
        self.count = 0

    def failed(self, error: BaseException, what: str = "sample") -> None:
        message = f"{what} failed: {type(error).__name__}: {error}"
        self.count += 1
        now = time.monotonic()
        if message != self.last_message:
            log.error("%s", message, exc_info=error)
        elif now - self.last_logged >= _REPEAT_LOG_S:
            log.error("%s (%d times so far)", message, self.count)
        else:
            return
        self.last_message = message
        self.last_logged = now

    def recovered(self) -> None:
        if self.last_message is not None:
            log.info("sampling works again after %d failure(s)", self.count)
        self.last_message = None
        self.count = 0


class DaemonError(Exception):
    pass


def prepare_dirs(settings: AgentSettings) -> None:
    """The state dir (0755: `report` runs as any user) and the claims registry (1777, like /tmp:
    any user's trainer may register a claim, none may remove another's)."""
    try:
        if not os.path.isdir(settings.state_dir):
            os.makedirs(settings.state_dir)
            os.chmod(settings.state_dir, 0o755)  # whatever the umask
    except OSError as e:
        raise DaemonError(
            f"cannot create the state dir {settings.state_dir}: {e.strerror or e} "
            "(set GPUMON_STATE_DIR or --state-dir to a directory this user may write)"
        ) from None
    from gpumon_agent.claims import ClaimError, ClaimRegistry

    try:
        ClaimRegistry(settings.claims_path).ensure(create=True)
    except ClaimError as e:
        raise DaemonError(str(e)) from None


def take_lock(settings: AgentSettings) -> IO[str]:
    path = os.path.join(settings.state_dir, LOCK_FILE)
    try:
        f = open(path, "a+")  # noqa: SIM115 -- held open for the daemon's life
    except OSError as e:
        raise DaemonError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise DaemonError(
            f"another gpumon-agent daemon (pid {other}) already runs on "
            f"{settings.state_dir}; stop it first"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def previous_report(settings: AgentSettings) -> Optional[Report]:
    """The snapshot a previous daemon left, if it is a readable Report (else None)."""
    from gpumon_agent.report import ReportError
    from gpumon_agent.snapshot import read_snapshot

    data, _fresh, _why = read_snapshot(settings)
    if data is None:
        return None
    try:
        return Report.from_json(data)
    except ReportError:
        return None


def _setup_logging() -> None:
    from gpumon_agent.journal import PriorityFormatter, under_journal

    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(message)s"
    if under_journal(sys.stderr):  # journald stamps each line; the prefix gives its priority
        handler.setFormatter(PriorityFormatter(fmt))
    else:  # by hand, a time helps
        handler.setFormatter(logging.Formatter("%(asctime)s " + fmt))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
