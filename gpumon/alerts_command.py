"""`gpumon alerts`: what is active now (as the last push left it) and how each channel fares;
`gpumon alerts test`: a test message through every channel, now.

Exit status: ``alerts`` 0 (1 when a channel is failing), ``alerts test`` 0 when every channel
took the message, 1 when one did not, 2 when none is configured (or a config error).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import TextIO

from gpumon.alerts import channels as ch
from gpumon.alerts.conditions import DOWN, STALE, Condition
from gpumon.alerts.engine import AlertState, ChannelState, read_state
from gpumon.alerts.state import StateError
from gpumon.config import Config
from gpumon.poll.result import human_duration
from gpumon.sheet.cells import format_time
from gpumon.sheet.plan import named_zone
from gpumon.table import printable
from gpumon_agent.report import utc_iso

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG = 0, 1, 2


def alerts(config: Config, as_json: bool = False, out: TextIO | None = None) -> int:
    """`gpumon alerts [--json]`."""
    out = out or sys.stdout
    try:
        state = read_state(config)
    except StateError as e:
        print(f"gpumon: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    for warning in state.warnings:
        print(printable(f"gpumon: warning: {warning}"), file=sys.stderr)
    now = time.time()
    if as_json:
        json.dump(to_json(state, config, now), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        print_state(state, config, now, out)
    return EXIT_PROBLEM if any(c.failing for c in state.channels) else EXIT_OK


def print_state(state: AlertState, config: Config, now: float, out: TextIO) -> None:
    tz = named_zone(config.sheet.time_zone)[0]
    told = [c for c in state.conditions if c.sent_at is not None]
    waiting = [c for c in state.conditions if c.sent_at is None]
    if not state.exists:
        print(f"no alert state yet ({state.path}): the first push makes it", file=out)
    elif not state.conditions:
        print("nothing active: every server ON, no warning", file=out)
    for c in told:
        since = format_time(utc_iso(c.since), tz)
        lasting = human_duration(max(0.0, now - c.since))
        print(printable(f"{_label(c):<8} {c.server}: {c.text} (since {since}, {lasting})"),
              file=out)  # fmt: skip
    for c in waiting:
        hold = config.alerts.down_after_s if c.kind in (DOWN, STALE) else 0
        seen = human_duration(max(0.0, now - c.since))
        print(printable(f"{'pending':<8} {c.server}: {c.text} (seen {seen}; told after "
                        f"{human_duration(hold)})"), file=out)  # fmt: skip
    print(file=out)
    if not state.channels:
        print("channels: none — set [alerts] webhook (or webhook_file) or email_to", file=out)
    for channel in state.channels:
        print(printable(channel_line(channel, tz)), file=out)


def channel_line(channel: ChannelState, tz) -> str:
    """ "ok   webhook https://chat.lab/…: last delivered 2019-03-14 15:26:45", or what fails."""
    status = channel.status
    if not channel.configured:
        return f"gone {channel.label}: no longer configured"
    if status is None or status.last_attempt is None:
        pending = f"; {status.pending} message(s) waiting" if status and status.pending else ""
        return f"ok   {channel.label}: nothing sent yet{pending}"
    if status.error is None:
        return f"ok   {channel.label}: last delivered {format_time(utc_iso(status.last_ok), tz)}"
    since = format_time(utc_iso(status.failing_since or status.last_attempt), tz)
    return (
        f"FAIL {channel.label}: failing since {since} ({status.failures} tries): {status.error}"
        f"; {status.pending} message(s) waiting, retried at each push"
    )


def to_json(state: AlertState, config: Config, now: float) -> dict:
    def condition(c: Condition) -> dict:
        return {
            "key": c.key,
            "kind": c.kind,
            "server": c.server,
            "text": c.text,
            "since": utc_iso(c.since),
            "told_at": utc_iso(c.sent_at) if c.sent_at is not None else None,
            "already_down_at_start": c.at_start,
        }

    def channel(c: ChannelState) -> dict:
        s = c.status
        return {
            "channel": c.label,
            "configured": c.configured,
            "ok": not c.failing,
            "error": s.error if s else None,
            "failing_since": utc_iso(s.failing_since) if s and s.failing_since else None,
            "last_delivered": utc_iso(s.last_ok) if s and s.last_ok else None,
            "pending": s.pending if s else 0,
        }

    return {
        "state": str(state.path),
        "conditions": [condition(c) for c in state.conditions],
        "channels": [channel(c) for c in state.channels],
    }


def alerts_test(config: Config, out: TextIO | None = None) -> int:
    """`gpumon alerts test`: one test message through each of the lab's channels."""
    out = out or sys.stdout
    channels = ch.configured(config.alerts)
    if not channels:
        print(
            f"gpumon: no alert channel in {config.origin} — set [alerts] webhook (or "
            "webhook_file), or email_to with smtp and email_from (README, 'Alerts')",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    host = socket.gethostname()
    subject = f"gpumon: test message from {host}"
    body = (
        f"A test of gpumon's alerts, sent by `gpumon alerts test` on {host} at "
        f"{utc_iso()} UTC. Servers going down, coming back, overload warnings and GPU "
        "events will arrive here like this."
    )
    failed = 0
    for channel in channels:
        label = ch.describe(channel, config.alerts)
        deadline = time.monotonic() + config.alerts.timeout_s
        try:
            ch.send(channel, config.alerts, subject, body, deadline)
        except ch.ChannelError as e:
            failed += 1
            print(printable(f"FAIL {label}: {e}"), file=out)
            continue
        print(printable(f"ok   {label}: test message sent"), file=out)
    return EXIT_PROBLEM if failed else EXIT_OK


def _label(c: Condition) -> str:
    return {DOWN: "DOWN", STALE: "STALE"}.get(c.kind, "WARNING" if c.kind == "health" else "GPU")
