"""One message per addressee per push: the push's events, grouped (five servers that went down
together are one message with five lines), most urgent first. Pure.

The text is plain: the webhook channel escapes it for Slack/Mattermost, the mail channel sends
it as text/plain. Server names, job names and users come from the sheet and the servers: they
are untrusted, and ``plain`` takes control characters out of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpumon.alerts.conditions import (
    CLAIMED_IDLE,
    CLEARED,
    DOWN,
    GPU_KINDS,
    HEALTH,
    OTHER_ON_RESERVED,
    RAISED,
    REPEATED,
    RESERVED_UNUSED,
    STALE,
    Event,
)
from gpumon.poll.result import human_duration
from gpumon.sheet.cells import format_time
from gpumon_agent.report import utc_iso
from gpumon_agent.text import cut

MAX_LINES = 200  # a message stays readable (and under chat limits) whatever the fleet does
LINE_LIMIT = 400
SUBJECT_LIMIT = 160


@dataclass(frozen=True)
class Message:
    subject: str
    body: str
    events: int


def compose(events: Sequence[Event], tz: dt.tzinfo) -> Message:
    """The message for these events (all for one addressee)."""
    ordered = sorted(events, key=_rank)
    lines = [cut(plain(_line(e, tz)), LINE_LIMIT) for e in ordered]
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], f"… and {len(lines) - MAX_LINES + 1} more"]
    return Message(subject=_subject(ordered), body="\n".join(lines), events=len(events))


def plain(text: str) -> str:
    """One line of text: control characters (newlines too) become spaces."""
    return "".join(" " if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0) else c for c in text)


def _rank(event: Event) -> tuple[int, str, str]:
    kind, what = event.condition.kind, event.what
    if kind == DOWN:
        order = {RAISED: 0, REPEATED: 6, CLEARED: 2}[what]
    elif kind == STALE:
        order = {RAISED: 1, REPEATED: 6, CLEARED: 3}[what]
    elif kind == HEALTH:
        order = {RAISED: 4, REPEATED: 6, CLEARED: 7}[what]
    else:
        order = {RAISED: 5, REPEATED: 6, CLEARED: 7}[what]
    return order, event.condition.server_key, event.condition.key


def _line(event: Event, tz: dt.tzinfo) -> str:
    c, what = event.condition, event.what
    if c.kind == DOWN:
        return _down_line(event, tz)
    if c.kind == STALE:
        if what == CLEARED:
            return f"OK      {c.server}: its agent reports again (stale for {_for(event)})"
        still = "STILL   " if what == REPEATED else "STALE   "
        return f"{still}{c.server}: {c.text}" + (
            f" (for {_for(event)})" if what == REPEATED else ""
        )
    if c.kind == HEALTH:
        if what == CLEARED:
            return f"CLEARED {c.server}: {c.text} (after {_for(event)})"
        if what == REPEATED:
            return f"STILL   {c.server}: {c.text} (for {_for(event)})"
        return f"WARNING {c.server}: {c.text}"
    if c.kind in GPU_KINDS:
        label = {
            OTHER_ON_RESERVED: "not theirs",
            RESERVED_UNUSED: "reservation unused",
            CLAIMED_IDLE: "claimed but idle",
        }[c.kind]
        if what == CLEARED:
            return f"CLEARED {c.server} {c.text.split(':', 1)[0]}: no longer {label}"
        still = "STILL   " if what == REPEATED else "GPU     "
        return f"{still}{c.server} {c.text}"
    return f"{what.upper():<8}{c.server}: {c.text}"


def _down_line(event: Event, tz: dt.tzinfo) -> str:
    c, what = event.condition, event.what
    since = _time(c.since, tz)
    if what == CLEARED:
        return f"BACK    {c.server}: ON again after {_for(event)} down (OFF since {since})"
    if what == REPEATED:
        return f"STILL   {c.server}: down for {_for(event)} — {c.text}"
    seen = c.detail.get("last_seen_on")
    try:
        last = f"last seen ON {format_time(seen, tz)}" if seen else "never seen ON"
    except (ValueError, TypeError):
        last = "last seen ON at an unreadable time"
    start = " — already down when gpumon started watching it" if c.at_start else ""
    warned = c.detail.get("last_warnings") or []
    before = f"; its last warnings: {'; '.join(warned)}" if warned else ""
    return f"DOWN    {c.server}: {c.text}; OFF since {since}, {last}{start}{before}"


def _subject(events: Sequence[Event]) -> str:
    groups: dict[str, list[str]] = {}
    for event in events:
        c = event.condition
        if c.kind == DOWN:
            label = {RAISED: "down", REPEATED: "still down", CLEARED: "back ON"}[event.what]
        elif c.kind == STALE:
            label = {RAISED: "agent stale", REPEATED: "agent stale", CLEARED: "agent back"}[
                event.what
            ]
        elif event.what == CLEARED:
            label = "cleared"
        elif c.kind == HEALTH:
            label = "warning"
        else:
            label = "GPU"
        names = groups.setdefault(label, [])
        if c.server not in names:
            names.append(c.server)
    parts = []
    for label, names in groups.items():
        shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        parts.append(f"{label}: {shown}")
    return cut(plain("gpumon: " + "; ".join(parts)), SUBJECT_LIMIT)


def _for(event: Event) -> str:
    return human_duration(max(0.0, event.at - event.condition.since))


def _time(posix: float, tz: dt.tzinfo) -> str:
    return format_time(utc_iso(posix), tz)


def combine(rows: Sequence[Any], tz: dt.tzinfo, dropped: int = 0) -> Message:
    """One message of a channel's queued ones (``subject``, ``body``, ``events``,
    ``created_at``; oldest first): as it is when alone, else each under the time of its push."""
    if len(rows) == 1 and not dropped:
        row = rows[0]
        return Message(row.subject, row.body, row.events)
    parts = []
    if dropped:
        parts.append(f"({dropped} older message(s) were dropped while this channel failed)")
    for row in rows:
        parts.append(f"— {_time(row.created_at, tz)} —\n{row.body}")
    latest = rows[-1].subject if rows else "gpumon"
    delayed = len(rows) - 1
    subject = f"{latest} (+{delayed} delayed)" if delayed else latest
    return Message(cut(subject, SUBJECT_LIMIT), "\n\n".join(parts), sum(r.events for r in rows))
