"""`gpumon-agent run`: sample every interval, keep the latest Report in the snapshot file.

- Ticks are scheduled on a fixed grid (start + k * interval, monotonic clock), so the period does
  not drift by the sampling time; ticks missed (a suspended machine, a slow sample) are skipped,
  not caught up in a burst.
- A sample that raises never stops the daemon: it is logged (when it starts failing, when the
  error changes, when it works again: gpumon_agent.statelog), and the last good Report is
  rewritten with a note saying the values are old. A snapshot that cannot be written (a full
  disk) is logged the same way, never once per sample.
- SIGTERM / SIGINT stop it after the current tick. The snapshot stays (complete: every write is
  a rename), goes stale after GPUMON_MAX_AGE, and then `report` samples itself and says so. A
  restarted daemon reads it back to know since when each GPU has been idle.
- An flock on ``<state_dir>/agent.lock`` keeps a second daemon from fighting over the snapshot.
- The state dir must be changeable by the agent's user (and root) alone, with every directory
  above it (gpumon_agent.safedir): a root daemon in a directory others may write would follow
  what they plant there. Files in it are opened ``O_NOFOLLOW``.
- Logs go to the "gpumon_agent" logger; the `run` command (gpumon_agent.cli) sends them to
  stderr (journald under systemd, which stamps the time itself).

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import threading
import time
from typing import Callable, Optional, Protocol

from gpumon_agent import __version__
from gpumon_agent.filelock import FileLock, LockBusy, LockFileError
from gpumon_agent.report import Host, Nvml, Report, utc_iso
from gpumon_agent.safedir import make_dirs, untrusted
from gpumon_agent.settings import AgentSettings
from gpumon_agent.statelog import StateLog

log = logging.getLogger("gpumon_agent")

LOCK_FILE = "agent.lock"


class Composes(Protocol):
    """What the loop needs of gpumon_agent.compose.ReportComposer."""

    def compose(self) -> Report: ...


class DaemonState:
    """What the daemon shares with the /metrics thread: replaced whole, read without a lock."""

    def __init__(self) -> None:
        self.report: Optional[Report] = None  # the latest written (may carry a failure note)
        self.sample_ok = False
        self.sample_errors = 0
        self.samples = 0
        self.sample_seconds = 0.0  # duration of the last sample
        self.hung_nvml_calls = 0  # NVML calls past their deadline, not returned yet
        self.expected_gpus: Optional[int] = None  # the most GPUs seen since boot (gpu-count)


def run(settings: AgentSettings, metrics: Optional[str] = None) -> int:
    """The daemon until SIGTERM/SIGINT; the exit status (1: cannot start, 2: a bad --metrics).
    Logs through the "gpumon_agent" logger (the `run` command sends it to stderr)."""
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
                server = start_server(
                    state, listen[0], listen[1], dcgm_names=settings.metrics_dcgm_names
                )
            except MetricsError as e:
                log.error("%s", e)
                return 1
            bound = server.server_address
            log.info("serving Prometheus metrics on http://%s/metrics", _hostport(*bound[:2]))

        from gpumon_agent.compose import ReportComposer

        composer = ReportComposer(settings, previous=previous_report(settings))
        log.info(
            "gpumon-agent %s: sampling every %g s into %s (claims in %s)",
            __version__,
            settings.interval_s,
            settings.snapshot_path,
            settings.claims_path,
        )
        try:
            loop(settings, composer, state, stop)
        finally:
            composer.close()
        log.info("stopped")
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        lock.release()


def loop(
    settings: AgentSettings,
    composer: Composes,
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
    failure = StateLog()
    while not stop.is_set():
        tick_once(settings, composer, state, failure)
        tick += 1
        now = clock()
        due = start + tick * interval
        if due <= now:  # fell behind: skip to the next slot on the grid
            tick = int((now - start) // interval) + 1
            due = start + tick * interval
        wait(due - now)


def tick_once(
    settings: AgentSettings, composer: Composes, state: DaemonState, failure: StateLog
) -> None:
    began = time.monotonic()
    try:
        report = composer.compose()
    except Exception as e:
        state.sample_errors += 1
        state.sample_ok = False
        failure.failed("sample", e)
        report = _failed_report(state.report, e)
    else:
        state.sample_ok = True
        failure.ok("sample")
    state.samples += 1
    state.sample_seconds = time.monotonic() - began
    state.hung_nvml_calls = getattr(composer, "hung_nvml_calls", 0)
    state.expected_gpus = getattr(composer, "expected_gpus", None)
    state.report = report
    what = "writing " + settings.snapshot_path
    try:
        from gpumon_agent.snapshot import write_snapshot

        write_snapshot(settings, report)
    except (OSError, ValueError) as e:
        failure.failed(what, e)
    else:
        failure.ok(what)


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


class DaemonError(Exception):
    pass


def prepare_dirs(settings: AgentSettings) -> None:
    """The state dir: made 0755 if missing (`report` runs as any user), and refused unless only
    this user (and root) can change it and the directories above it. The claims registry is the
    composer's: it makes it, and remakes it if deleted, at every sample."""
    try:
        make_dirs(settings.state_dir, 0o755)  # whatever the umask
    except OSError as e:
        raise DaemonError(
            f"cannot create the state dir {settings.state_dir}: {e.strerror or e} "
            "(set GPUMON_STATE_DIR or --state-dir to a directory this user may write)"
        ) from None
    problem = untrusted(settings.state_dir, {os.geteuid()})
    if problem is not None:
        raise DaemonError(
            f"refusing the state dir {settings.state_dir}: {problem}, so another user could "
            "plant files there that the agent then opens or writes through (a symlink at "
            f"{LOCK_FILE}). Fix: make it and the directories above it writable by this user "
            f"alone (e.g. `chmod 755 {problem.path}`, `chown` it to the agent's user), or set "
            "GPUMON_STATE_DIR to such a directory (the systemd unit uses /run/gpumon)"
        )


def take_lock(settings: AgentSettings) -> FileLock:
    """Hold ``<state_dir>/agent.lock`` (O_NOFOLLOW, pid recorded) or raise DaemonError."""
    path = os.path.join(settings.state_dir, LOCK_FILE)
    lock = FileLock(path, mode=0o644, record_pid=True)
    try:
        lock.acquire()
    except LockBusy as e:
        raise DaemonError(
            f"another gpumon-agent daemon (pid {e.holder or '?'}) already runs on "
            f"{settings.state_dir}; stop it first"
        ) from None
    except (LockFileError, OSError) as e:
        raise DaemonError(f"cannot use the lock file {path}: {getattr(e, 'reason', e)}") from None
    return lock


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


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
