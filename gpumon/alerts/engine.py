"""The alerts of one push: what changed since the last push (kept in the state database), one
message per addressee, and its delivery — which never fails the push and never touches the
sheet write (it runs after it, each channel bounded by ``[alerts] timeout_s``).

Order, so that nothing is lost and nothing told twice across processes (cron pushes) and
crashes: in one transaction the conditions are stepped and the new messages put in the outbox;
then the outbox is delivered, one message per channel (a channel that failed before gets what
it missed folded into this one); what went out is deleted, what did not stays for the next push.
A push killed between a delivery and its deletion repeats that message once (at least once:
an alert told twice is better than one lost).

Usage (gpumon.fleet.push_once)::

    alerts = PushAlerts(config)
    alerts.mark_off_since(results)            # before the plan: Health says "OFF since …"
    ...                                       # plan, write the sheet
    outcome = alerts.after_push(results, gpu_states, tz)
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumon.alerts import channels as ch
from gpumon.alerts.conditions import DOWN, HEALTH, LAB, MAIL, RAISED, Condition, Event, step
from gpumon.alerts.gpus import facts_from_reports, read_facts
from gpumon.alerts.message import combine, compose
from gpumon.alerts.observe import observe
from gpumon.alerts.state import DATABASE, AlertStore, ChannelStatus, Pending, StateError
from gpumon.config import Config
from gpumon.poll.result import ServerResult
from gpumon.sheet.layout import server_key
from gpumon_agent.report import utc_iso

# Channels whose delivery thread outlived its deadline in this process (serve): not sent to
# again until it ends, so a slow receiver is not sent the same message twice at once.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


@dataclass
class AlertOutcome:
    events: int = 0  # events this push
    sent: list[str] = field(default_factory=list)  # "webhook https://chat.lab/…: 2 events"
    failed: list[str] = field(default_factory=list)  # what failed, and that it is kept
    warnings: list[str] = field(default_factory=list)  # the state could not be used, …


class PushAlerts:
    """The alerts of one push. No method raises: a problem becomes a line of the outcome."""

    def __init__(self, config: Config, read_only: bool = False) -> None:
        self.config = config
        self.read_only = read_only  # a dry run: only an existing state is read
        self.settings = config.alerts
        self.outcome = AlertOutcome()
        self._store: AlertStore | None = None
        self._opened = False

    def _open(self) -> AlertStore | None:
        if not self._opened:
            self._opened = True
            if self.read_only and not self.config.state_path(DATABASE).exists():
                return None
            try:
                self._store = AlertStore.at(self.config.state_path(""), self.outcome.warnings)
            except StateError as e:
                self.outcome.warnings.append(f"alerts: {e}; no alert this push")
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def mark_off_since(self, results: Sequence[ServerResult]) -> None:
        """Give every OFF result the time it was first seen OFF (this poll, when it is the
        first failure), for its Health cell."""
        off = [r for r in results if not r.on]
        if not off:
            return
        known: dict[str, Condition] = {}
        store = self._open()
        if store is not None:
            try:
                known = store.conditions()
            except StateError as e:
                self.outcome.warnings.append(f"alerts: {e}")
        for result in off:
            condition = known.get(f"down|{server_key(result.name)}")
            result.off_since = utc_iso(condition.since) if condition else result.polled_at

    def after_push(
        self,
        results: Sequence[ServerResult],
        gpu_states: Iterable[Any] | None,
        tz: dt.tzinfo,
        now: float | None = None,
    ) -> AlertOutcome:
        """Step the conditions, queue this push's messages, deliver what is queued."""
        now = time.time() if now is None else now
        if self.read_only:
            return self.outcome
        store = self._open()
        if store is None:
            return self.outcome
        try:
            self._step(store, results, gpu_states, tz, now)
        except Exception as e:  # the push goes on whatever happens here
            self.outcome.warnings.append(f"alerts: not evaluated: {_short(e)}")
        try:
            deliver(store, self.config, tz, now, self.outcome)
        except Exception as e:
            self.outcome.warnings.append(f"alerts: not delivered: {_short(e)}")
        return self.outcome

    def _step(
        self,
        store: AlertStore,
        results: Sequence[ServerResult],
        gpu_states: Iterable[Any] | None,
        tz: dt.tzinfo,
        now: float,
    ) -> None:
        gpus = read_facts(gpu_states) if gpu_states is not None else None
        if gpus is None:
            gpus = facts_from_reports(results, now)
        with store.transaction():
            previous = store.conditions()
            known = store.known_servers()
            seen = observe(results, gpus, self.settings, self.config.people, known, now)
            events, current = step(previous, seen.observed, seen.scope, now, self.settings.repeat_s)
            _last_warnings(events, current)
            store.replace_conditions(current)
            store.add_servers(seen.scope.polled, now)
            self.outcome.events = len(events)
            for channel, mine in route(events, self.config).items():
                message = compose(mine, tz)
                store.enqueue(channel, now, message.subject, message.body, message.events)


def route(events: Sequence[Event], config: Config) -> dict[str, list[Event]]:
    """Each channel's events: the lab's go to every lab channel; a person's to their address
    when e-mail is set up, else to the lab's channels."""
    lab = ch.configured(config.alerts)
    out: dict[str, list[Event]] = {}
    for event in events:
        targets: list[str] = []
        for address in event.condition.routes:
            if address.startswith(MAIL) and config.alerts.email:
                targets.append(ch.EMAIL_TO + address[len(MAIL) :])
            elif address == LAB or address.startswith(MAIL):
                targets += lab
        for channel in dict.fromkeys(targets):
            out.setdefault(channel, []).append(event)
    return out


def deliver(
    store: AlertStore, config: Config, tz: dt.tzinfo, now: float, outcome: AlertOutcome
) -> None:
    """Send every channel its queued messages, folded into one, all channels at once, each
    within ``[alerts] timeout_s``; record what went and what did not."""
    settings = config.alerts
    lab = set(ch.configured(settings))
    with store.transaction():
        pending = store.pending()
        keep = lab | {p.channel for p in pending if settings.email and _personal(p.channel)}
        dropped = store.forget_channels(keep)
        status = {c.channel: c for c in store.channels()}
    if dropped:
        outcome.warnings.append(
            f"alerts: {dropped} undelivered message(s) dropped: their channel is no longer "
            "configured"
        )
    by_channel: dict[str, list[Pending]] = {}
    for row in pending:
        if row.channel in keep:
            by_channel.setdefault(row.channel, []).append(row)
    if not by_channel:
        return
    deadline = time.monotonic() + settings.timeout_s
    sends: dict[str, _Send] = {}
    for channel, rows in by_channel.items():
        with _in_flight_lock:
            if channel in _in_flight:
                outcome.failed.append(
                    f"{ch.describe(channel, settings)}: still sending an earlier message; "
                    f"{len(rows)} kept for the next push"
                )
                continue
            _in_flight.add(channel)
        before = status.get(channel)
        message = combine(rows, tz, before.dropped if before else 0)
        sends[channel] = _Send(channel, settings, message.subject, message.body, deadline)
    for send in sends.values():
        send.thread.start()
    for send in sends.values():
        send.thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
    finished = time.time()
    with store.transaction():
        for channel, send in sends.items():
            label = ch.describe(channel, settings)
            rows = by_channel[channel]
            if send.thread.is_alive():
                error = f"no answer within {settings.timeout_s:g} s"
            else:
                error = send.error
            if error is None:
                store.discard([r.id for r in rows])
                store.delivered(channel, finished)
                events = sum(r.events for r in rows)
                outcome.sent.append(f"{label}: {events} event(s)")
            else:
                store.failed(channel, finished, error)
                outcome.failed.append(
                    f"{label}: {error} — {len(rows)} message(s) kept, retried at the next push"
                )


class _Send:
    """One channel's delivery in a thread of its own (a daemon: a cron push exits without
    waiting for a stalled receiver)."""

    def __init__(
        self, channel: str, settings: Any, subject: str, body: str, deadline: float
    ) -> None:
        self.channel = channel
        self.error: str | None = None
        self.thread = threading.Thread(
            target=self._run,
            args=(settings, subject, body, deadline),
            name=f"gpumon-alert-{channel}",
            daemon=True,
        )

    def _run(self, settings: Any, subject: str, body: str, deadline: float) -> None:
        try:
            ch.send(self.channel, settings, subject, body, deadline)
        except ch.ChannelError as e:
            self.error = str(e) or "failed"
        except Exception as e:  # a bug here must not kill the push's thread of control
            self.error = _short(e)
        finally:
            with _in_flight_lock:
                _in_flight.discard(self.channel)


# --- what the state says (gpumon alerts, gpumon check) -----------------------------------------


@dataclass
class ChannelState:
    channel: str
    label: str  # as people read it, without its secret
    configured: bool
    status: ChannelStatus | None  # None: never tried

    @property
    def failing(self) -> bool:
        return self.status is not None and self.status.error is not None


@dataclass
class AlertState:
    conditions: list[Condition]
    channels: list[ChannelState]
    path: Path
    exists: bool
    warnings: list[str] = field(default_factory=list)  # e.g. a damaged file moved aside


def read_state(config: Config) -> AlertState:
    """The conditions and channels as the last push left them (nothing is created when there
    is no state yet). Raises StateError."""
    path = config.state_path(DATABASE)
    lab = ch.configured(config.alerts)
    if not path.exists():
        channels = [ChannelState(c, ch.describe(c, config.alerts), True, None) for c in lab]
        return AlertState([], channels, path, exists=False)
    warnings: list[str] = []
    with AlertStore(path, warnings) as store:
        conditions = sorted(store.conditions().values(), key=lambda c: (c.since, c.key))
        statuses = {s.channel: s for s in store.channels()}
    channels = [
        ChannelState(c, ch.describe(c, config.alerts), True, statuses.pop(c, None)) for c in lab
    ]
    for name, status in sorted(statuses.items()):
        channels.append(ChannelState(name, ch.describe(name, config.alerts), _personal(name)
                                     and config.alerts.email, status))  # fmt: skip
    return AlertState(conditions, channels, path, exists=True, warnings=warnings)


def _personal(channel: str) -> bool:
    return channel.startswith(ch.EMAIL_TO)


def _last_warnings(events: Sequence[Event], current: dict[str, Condition]) -> None:
    """A server told down carries the health warnings it had when last seen (the overload that
    may have killed it)."""
    for event in events:
        c = event.condition
        if c.kind != DOWN or event.what != RAISED:
            continue
        c.detail["last_warnings"] = [
            other.text
            for other in current.values()
            if other.kind == HEALTH and other.server_key == c.server_key
        ][:10]


def _short(error: BaseException) -> str:
    return (str(error) or type(error).__name__)[:300]
