"""`gpumon serve`: push every ``[serve] interval_s`` until SIGTERM (a systemd service).

Unlike cron pushes, serve keeps the Poller (its SSH connections: an exec on an open connection
costs a few ms, a new connection tens) and the sheet backend open across pushes. APScheduler 3's
BlockingScheduler runs one interval job: the first push at once, at most one at a time, missed
runs coalesced into one. Each push takes the same lock as `gpumon push`, so a manual push and the
service never write at once. Logs go to stderr (journald, with priorities: gpumon.logs), one
line per push. SIGTERM stops it after the push in progress; Ctrl-C (SIGINT) stops it at once,
exit 130 (the command line's), without waiting for that push or writing what it found.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from types import FrameType

from gpumon.config import Config, ConfigError
from gpumon.fleet import (
    EXIT_OK,
    FleetSession,
    LockHeld,
    exit_code,
    outcome_messages,
    push_lock,
    push_once,
)
from gpumon.history.recorder import after_push
from gpumon.sheet.grid import SheetError
from gpumon.sheet.layout import LayoutError

log = logging.getLogger("gpumon.serve")


class Service:
    """The pushes of one serve run, with the poller and backend kept open between them."""

    def __init__(self, config: Config, backend, poller) -> None:
        self.config, self.backend, self.poller = config, backend, poller
        self.pushes = 0
        self.failures = 0
        self._running = threading.Lock()  # held while a push runs: shutdown waits for it

    def push(self) -> None:
        with self._running:
            self._push()

    def _push(self) -> None:
        self.pushes += 1
        started = time.monotonic()
        try:
            with push_lock(self.config):
                outcome = push_once(
                    self.config, self.backend, self.poller, add_rows=self.config.sheet.add_rows
                )
                later = after_push(self.config, outcome, self.backend)
        except LockHeld as e:
            log.warning("push skipped: %s", e)
            return
        except (SheetError, LayoutError, ConfigError) as e:
            self.failures += 1
            log.error("push failed after %.2f s: %s", time.monotonic() - started, e)
            return
        except Exception:  # keep serving: the next push may well succeed
            self.failures += 1
            log.exception("push failed after %.2f s", time.monotonic() - started)
            return
        for message in outcome_messages(outcome, "push"):
            log.log(message.level, "%s", message.text)
        for line in later:
            log.warning("%s", line)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for a running push to finish (True), or give up after timeout_s."""
        if self._running.acquire(timeout=timeout_s):
            self._running.release()
            return True
        return False


def serve(config: Config) -> int:
    """Serve until SIGTERM/SIGINT: 0, or 2 / 3 when the config or the sheet backend is unusable
    at start (gpumon.fleet.EXIT_CODES); a push that fails later is logged, the next one tries."""
    from apscheduler.schedulers import SchedulerNotRunningError
    from apscheduler.schedulers.blocking import BlockingScheduler

    from gpumon.logs import setup

    setup(service=True)  # one line per push (INFO), whatever -v said; --debug still counts
    fleet = FleetSession(config)  # the backend and the poller, kept open across pushes
    try:
        service = Service(config, fleet.backend(), fleet.poller())
    except (ConfigError, SheetError) as e:
        fleet.close()
        log.error("%s", e)
        return exit_code(e)
    scheduler = BlockingScheduler(timezone=dt.timezone.utc)
    interval = config.serve.interval_s
    scheduler.add_job(
        service.push,
        "interval",
        seconds=interval,
        id="push",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval)),
        next_run_time=dt.datetime.now(dt.timezone.utc),  # the first push at once
    )
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("%s: stopping after the push in progress", signal.Signals(signum).name)
            try:
                scheduler.shutdown(wait=False)  # returns at once; start() below then returns
            except SchedulerNotRunningError:
                pass  # not started yet: start() is skipped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM,)}
    log.info("serving %s every %g s (config: %s)", _target(config), interval, config.origin)
    interrupted = False
    try:
        if not stopping.is_set():
            scheduler.start()
    except KeyboardInterrupt:
        # Ctrl-C: out now. A push still running is not waited for, and its connections are
        # not closed under it (an aborted sweep would read as a fleet gone OFF).
        interrupted = True
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not interrupted:
            # A push still running finishes within its own deadlines (sweep + sheet timeouts).
            limit = (
                config.poll.sweep_timeout_s + config.sheet.timeout_s + config.sheet.retry_budget_s
            )
            if not service.wait_idle(limit):
                log.warning("a push was still running after %.0f s; stopping anyway", limit)
            fleet.close()
    log.info("stopped after %d pushes (%d failed)", service.pushes, service.failures)
    return EXIT_OK


def _target(config: Config) -> str:
    if config.sheet.backend == "xlsx":
        from gpumon.sheet.xlsx import resolve_path

        return str(resolve_path(config))
    return config.sheet.url or "the sheet"
