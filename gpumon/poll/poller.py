"""The sweep: every server polled at once, each bounded by its own deadlines.

``Poller(config).sweep(names)`` gives one ServerResult per name, in order, within
``[poll] sweep_timeout_s``. Connections stay open between sweeps (an exec on an open transport
costs a few ms; a new connection tens) and are re-opened when a server restarted; on each, the
agent's `stream` channel stays open too, so a steady poll is one round trip and no process on
the server (gpumon.poll.stream; one-shot exec for agents and forced commands without it). A
worker stuck past its stage deadline is aborted from here — its socket and transport closed,
which wakes every paramiko wait — and its server reported OFF "timed out at <stage>"; the rest
of the fleet is unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
    wait,
)

from gpumon.config import Config, ConfigError
from gpumon.poll import agentless
from gpumon.poll import result as codes
from gpumon.poll.answer import bounded, interpret
from gpumon.poll.hostkeys import KnownHosts, known_hosts_files
from gpumon.poll.inventory import Destination, SshConfigFile, resolve
from gpumon.poll.lastseen import LastSeen, remember
from gpumon.poll.result import ServerResult, mark_stale
from gpumon.poll.stream import (
    ENDED,
    TIMED_OUT,
    VIA_STREAM,
    AgentStream,
    StreamBroken,
    ask,
    gather,
)
from gpumon.poll.transport import Attempt, Connection, ConnectionLost, Opener, PollFailure
from gpumon_agent.report import MAX_REPORT_BYTES, Report, utc_iso

log = logging.getLogger(__name__)

Progress = Callable[[int, int, ServerResult], None]  # (done, total, the result just in)


class Poller:
    def __init__(self, config: Config) -> None:
        self.config = config
        poll = config.poll
        self.ssh_config = SshConfigFile(poll.ssh_config)
        self.known_hosts = KnownHosts(known_hosts_files(config))
        self.opener = Opener(
            poll,
            self.known_hosts,
            resolve_jump=lambda host: resolve(config, host, self.ssh_config),
        )
        self.last_seen = LastSeen(config.state_path("last-seen.json"))
        self._connections: dict[str, Connection] = {}
        self._pool_lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=poll.concurrency, thread_name_prefix="gpumon-poll"
        )
        self._closed = False
        self._in_flight: dict[str, Attempt] = {}  # the running sweep's, aborted by close()

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sweep(self, names: list[str], progress: Progress | None = None) -> list[ServerResult]:
        """One result per name, same order (a name given twice is polled once)."""
        if self._closed:
            raise RuntimeError("Poller.sweep after close()")
        with self._sweep_lock:
            unique = list(dict.fromkeys(names))
            results = self._sweep(unique, progress)
            self._remember(results)
            return [results[name] for name in names]

    def close(self) -> None:
        """Close every kept connection; workers still stuck are aborted, not waited for
        (e.g. when Ctrl-C ends a sweep: a silent server must not hold the exit)."""
        self._closed = True
        with self._pool_lock:
            connections, self._connections = list(self._connections.values()), {}
            in_flight, self._in_flight = list(self._in_flight.values()), {}
        for attempt in in_flight:
            attempt.abort()
        for conn in connections:
            conn.close()
        self.opener.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the sweep ----------------------------------------------------------------------

    def _sweep(self, names: list[str], progress: Progress | None) -> dict[str, ServerResult]:
        started = time.monotonic()
        sweep_deadline = started + self.config.poll.sweep_timeout_s
        attempts = {name: Attempt(name) for name in names}
        with self._pool_lock:
            self._in_flight = dict(attempts)
        kept = self._kept_streams(names)
        futures: dict[Future[ServerResult], str] = {
            self._executor.submit(self._poll_one, name, attempts[name]): name
            for name in names
            if name not in kept
        }
        if kept:
            # Kept streams: all requests sent, all answers waited for, from one worker.
            own: dict[str, Future[ServerResult]] = {name: Future() for name in kept}
            futures.update({future: name for name, future in own.items()})
            self._executor.submit(self._gather, kept, attempts, own)
        results: dict[str, ServerResult] = {}

        def record(result: ServerResult) -> None:
            results[result.name] = result
            if progress is not None:
                progress(len(results), len(names), result)

        pending = set(futures)
        while pending:
            now = time.monotonic()
            if now >= sweep_deadline:
                break
            # A worker past its stage deadline is aborted here, whatever it is blocked in.
            for future in list(pending):
                attempt = attempts[futures[future]]
                if attempt.overdue(now) and not future.done():
                    attempt.abort()
                    pending.discard(future)
                    record(self._timed_out(attempt, started))
            wake = min([sweep_deadline] + [attempts[futures[f]].deadline for f in pending])
            done, pending = wait(
                pending, timeout=max(0.0, wake - time.monotonic()), return_when=FIRST_COMPLETED
            )
            for future in done:
                if futures[future] not in results:
                    record(future.result())
        for future in pending:
            attempt = attempts[futures[future]]
            if future.done():
                record(future.result())
                continue
            future.cancel()
            attempt.abort()
            record(self._timed_out(attempt, started, sweep=True))
        with self._pool_lock:
            self._in_flight = {}
        return results

    def _timed_out(self, attempt: Attempt, started: float, sweep: bool = False) -> ServerResult:
        result = self._timed_out_result(attempt, started, sweep)
        _log_poll(result, attempt)
        return result

    def _timed_out_result(self, attempt: Attempt, started: float, sweep: bool) -> ServerResult:
        if attempt.stage == "queued":
            stage, reason = (
                "sweep",
                f"timed out at sweep ({self.config.poll.sweep_timeout_s:g} s) before its turn "
                "— raise [poll] concurrency or sweep_timeout_s",
            )
        elif sweep:
            stage = attempt.stage
            reason = (
                f"timed out at {stage}{attempt.where}: the sweep's "
                f"{self.config.poll.sweep_timeout_s:g} s ran out"
            )
        else:
            stage, reason = attempt.stage, attempt.timeout_reason()
        return ServerResult(
            name=attempt.name,
            destination=attempt.label,
            on=False,
            polled_at=utc_iso(),
            reason_code=codes.TIMEOUT,
            reason=reason,
            stage=stage,
            elapsed_s=time.monotonic() - started,
            address=attempt.address,
        )

    # --- one server (in a worker thread) -------------------------------------------------

    def _poll_one(self, name: str, attempt: Attempt) -> ServerResult:
        started = time.monotonic()
        polled_at = utc_iso()
        result = ServerResult(name=name, destination=name, on=False, polled_at=polled_at)
        try:
            dest = resolve(self.config, name, self.ssh_config)
            result.destination = attempt.label = dest.label
            local = dest.local
            report = self._local(attempt) if local else self._remote(dest, attempt, result)
            self._on(result, report)
        except PollFailure as e:
            result.reason_code, result.reason, result.stage = e.code, e.reason, e.stage
        except ConfigError as e:
            result.reason_code, result.reason = codes.CONFIG_ERROR, str(e)
        except Exception as e:  # a bug must cost one server, not the sweep
            log.exception("%s: poll failed unexpectedly", name)
            result.reason_code = codes.AGENT_FAILED
            result.reason = f"gpumon bug while polling: {type(e).__name__}: {e}"
            result.stage = attempt.stage
        result.address = result.address or attempt.address
        result.elapsed_s = time.monotonic() - started
        if not self._closed:  # else aborted by close(): nobody waits for this result
            _log_poll(result, attempt)
        return result

    # --- kept streams, gathered (one worker for all of them) ----------------------------

    def _kept_streams(self, names: list[str]) -> dict[str, tuple[Destination, Connection]]:
        """The servers whose stream from the last sweep is still open (and their config the
        same): taken out of the pool for ``_gather``."""
        if not self.config.poll.stream:
            return {}
        kept: dict[str, tuple[Destination, Connection]] = {}
        for name in names:
            with self._pool_lock:
                conn = self._connections.get(name)
            if conn is None or conn.stream is None or not conn.stream.usable or not conn.alive:
                continue
            try:
                dest = resolve(self.config, name, self.ssh_config)
            except ConfigError:
                continue  # _poll_one says so
            if conn.dest != dest or dest.local:
                continue
            with self._pool_lock:
                if self._connections.get(name) is conn:
                    del self._connections[name]
                    kept[name] = (dest, conn)
        return kept

    def _gather(
        self,
        kept: dict[str, tuple[Destination, Connection]],
        attempts: dict[str, Attempt],
        own: dict[str, Future[ServerResult]],
    ) -> None:
        poll = self.config.poll
        started = time.monotonic()
        sent: list[tuple[str, Destination, Connection, AgentStream, ServerResult]] = []
        for name, (dest, conn) in kept.items():
            attempt = attempts[name]
            attempt.label = dest.label
            attempt.address = conn.peer_ip
            stream, conn.stream = conn.stream, None
            assert stream is not None
            result = ServerResult(
                name=name,
                destination=dest.label,
                on=False,
                polled_at=utc_iso(),
                address=conn.peer_ip,
                reused=True,
                via=VIA_STREAM,
                forced_command=conn.forced_command,
            )
            try:
                attempt.hold(conn.close)
                stream.send(attempt, poll.command_timeout_s)
            except StreamBroken:
                stream.close()
                self._poll_again(name, conn, attempt, own[name])
                continue
            except PollFailure as e:  # aborted meanwhile
                self._settle(own[name], self._failed(result, e, attempt, started))
                continue
            sent.append((name, dest, conn, stream, result))
        waits = [(stream, attempts[name]) for name, _, _, stream, _ in sent]
        outcomes = gather(waits, MAX_REPORT_BYTES)
        for (name, dest, conn, stream, result), (how, line) in zip(sent, outcomes):
            attempt = attempts[name]
            if how == ENDED and not attempt.aborted:  # ended between sweeps: opened again
                stream.close()
                self._poll_again(name, conn, attempt, own[name])
                continue
            keep_conn = True
            try:
                if how == TIMED_OUT:
                    raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "read")
                out = stream.answer(line, started)
                if out.too_large:
                    stream.close()
                else:
                    conn.stream = stream
                self._on(result, interpret(out, dest.command))
            except PollFailure as e:
                if e.code == codes.AGENT_FAILED:
                    conn.stream = stream  # it said why, and waits for the next request
                else:
                    stream.close()
                keep_conn = e.code not in (codes.TIMEOUT, codes.UNREACHABLE)
                self._failed(result, e, attempt, started)
            except Exception as e:  # a bug must cost one server, not the sweep
                log.exception("%s: poll failed unexpectedly", name)
                stream.close()
                result.reason_code = codes.AGENT_FAILED
                result.reason = f"gpumon bug while polling: {type(e).__name__}: {e}"
            if keep_conn:
                attempt.handover(lambda n=name, c=conn: self._keep(n, c), conn.close)
            else:
                attempt.release(conn.close)
                conn.close()
            result.elapsed_s = time.monotonic() - started
            if not self._closed:
                _log_poll(result, attempt)
            self._settle(own[name], result)

    def _poll_again(
        self, name: str, conn: Connection, attempt: Attempt, future: Future[ServerResult]
    ) -> None:
        """A kept stream that ended: the server polled by a worker as any other (its stream
        opened again within this sweep's deadlines), its result this future's."""
        attempt.release(conn.close)
        self._keep(name, conn)
        if self._closed:  # close() ended the sweep: nobody waits for this one
            return
        worker = self._executor.submit(self._poll_one, name, attempt)
        worker.add_done_callback(lambda done: self._settle(future, done.result()))

    @staticmethod
    def _failed(
        result: ServerResult, e: PollFailure, attempt: Attempt, started: float
    ) -> ServerResult:
        result.reason_code, result.reason, result.stage = e.code, e.reason, e.stage
        result.elapsed_s = time.monotonic() - started
        return result

    @staticmethod
    def _settle(future: Future[ServerResult], result: ServerResult) -> None:
        """``future`` done with ``result`` — unless the sweep gave up on it already."""
        try:
            future.set_result(result)
        except InvalidStateError:
            pass

    def _remote(self, dest: Destination, attempt: Attempt, result: ServerResult) -> Report:
        poll = self.config.poll
        with self._pool_lock:
            conn = self._connections.pop(dest.name, None)
        if conn is not None and (not conn.alive or conn.dest != dest):
            conn.close()  # the server went away (or its config changed) since the last sweep
            conn = None
        keep = True
        try:
            for retry in (False, True):
                result.reused = conn is not None
                if conn is None:
                    conn = self.opener.open(dest, attempt)
                attempt.hold(conn.close)
                result.address = attempt.address = conn.peer_ip
                try:
                    answer = ask(
                        conn,
                        dest.command,
                        attempt,
                        poll.command_timeout_s,
                        MAX_REPORT_BYTES,
                        use_stream=poll.stream,
                    )
                    result.via = answer.via
                    result.forced_command = conn.forced_command
                    result.oneshot_why = answer.oneshot_why
                    break
                except ConnectionLost as e:
                    # Kept-open connections die when a server restarts: re-open once.
                    attempt.release(conn.close)
                    conn.close()
                    conn = None
                    if retry:
                        raise PollFailure(
                            codes.UNREACHABLE, f"connection lost while polling ({e})", "exec"
                        ) from None
            try:
                return interpret(answer.out, dest.command)  # bounds checked as decoded
            except PollFailure as e:
                if e.code != codes.AGENT_MISSING or not poll.agentless:
                    raise
            out = conn.run(agentless.SCRIPT, attempt, poll.command_timeout_s, MAX_REPORT_BYTES)
            report = bounded(agentless.build_report(out, conn.peer_ip))
            result.degraded = True
            return report
        except PollFailure as e:
            keep = e.code not in (codes.TIMEOUT, codes.UNREACHABLE)
            raise
        finally:
            if conn is not None:
                held = conn
                if keep:
                    attempt.handover(lambda: self._keep(dest.name, held), held.close)
                else:
                    attempt.release(held.close)
                    held.close()

    def _keep(self, name: str, conn: Connection) -> None:
        with self._pool_lock:
            old = self._connections.get(name)
            self._connections[name] = conn
        if old is not None and old is not conn:
            old.close()
        if self._closed:
            conn.close()

    def _local(self, attempt: Attempt) -> Report:
        """``local = true``: this machine's agent, in-process (no SSH)."""
        attempt.enter("local", self.config.poll.command_timeout_s)
        try:
            from gpumon_agent.settings import AgentSettings, SettingsError
            from gpumon_agent.snapshot import latest_report
        except ImportError as e:
            raise PollFailure(
                codes.AGENT_MISSING,
                f"agent not installed here ({e}) — pip install gpumon-agent",
                "local",
            ) from None
        try:
            report = latest_report(AgentSettings.from_env())
        except SettingsError as e:  # a bad GPUMON_* variable in this process's environment
            raise PollFailure(codes.AGENT_FAILED, f"local agent: {e}", "local") from None
        except Exception as e:
            raise PollFailure(
                codes.AGENT_FAILED, f"local agent failed: {type(e).__name__}: {e}", "local"
            ) from None
        # Read in-process, not decoded from the wire: held to the same bounds here.
        return bounded(report)

    def _on(self, result: ServerResult, report: Report) -> None:
        result.on, result.report = True, report
        if result.degraded:
            result.reason_code, result.reason = codes.AGENTLESS, agentless.NOTE
        mark_stale(result, report, self.config.poll.stale_after_s)

    def _remember(self, results: dict[str, ServerResult]) -> None:
        remember(self.last_seen, results)


def _log_poll(result: ServerResult, attempt: Attempt) -> None:
    """-v: one line per server — what came of it, and each SSH stage with its time."""
    if not log.isEnabledFor(logging.INFO):
        return
    if result.on:
        outcome = "ON" + (f" ({result.reason_code})" if result.reason_code else "")
    else:
        outcome = f"OFF ({result.reason_code}: {result.reason})"
    kept = ", kept connection" if result.reused else ""
    if result.via:
        kept += f", {result.via}"
    stages = attempt.stage_times()
    log.info(
        "%s: %s via %s in %.1f ms%s%s",
        result.name,
        outcome,
        result.destination,
        result.elapsed_s * 1000,
        kept,
        f": {stages}" if stages else "",
    )
