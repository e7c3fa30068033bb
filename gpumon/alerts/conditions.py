"""Conditions and their transitions, pure: what was true at the last push and what is true now
give the events to tell — each once per transition, again only after ``repeat_s`` while it lasts.

A *condition* is one thing worth telling that lasts: a server down, one health warning of one
server, one GPU event. Its key names it (``down|mlbsp``, ``health|mlbsp|memory_high|``,
``gpu|mlbsp|GPU-…|claimed_idle``). ``step`` compares the conditions kept from the last push
with those observed now:

- observed, not told yet, and observed for at least its ``hold_s`` → RAISED (told now);
- told, still observed, and told ``repeat_s`` ago or more → REPEATED;
- told, not observed any more → CLEARED; never told → dropped without a word;
- its server not polled in this push (taken out of the sheet or config) → dropped silently;
- *held*: a server that is OFF (or whose agent is stale) says nothing about its health or its
  GPUs, so their conditions are kept as they were — a server going down does not "clear" its
  memory warning; nor does a GPU whose state cannot be seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

# Kinds of condition.
DOWN = "down"  # a server OFF for down_after_s
STALE = "stale"  # a server ON whose agent's report is stale, for down_after_s
HEALTH = "health"  # one of the agent's health warnings
OTHER_ON_RESERVED = "other_on_reserved"  # someone runs on a GPU reserved by another
RESERVED_UNUSED = "reserved_unused"  # a reservation unused for reserved_unused_h
CLAIMED_IDLE = "claimed_idle"  # a claimed GPU idle for claimed_idle_h
GPU_KINDS = (OTHER_ON_RESERVED, RESERVED_UNUSED, CLAIMED_IDLE)
KINDS = (DOWN, STALE, HEALTH, *GPU_KINDS)

# What happened to a condition at this push.
RAISED = "raised"
REPEATED = "repeated"
CLEARED = "cleared"

# Where an event goes: the lab's channels (the webhook and [alerts] email_to), or one person's
# address ("mail:niv@lab.example").
LAB = "lab"
MAIL = "mail:"


@dataclass
class Condition:
    key: str
    kind: str
    server: str  # the server's name, as polled
    server_key: str  # gpumon.sheet.layout.server_key of it
    since: float  # POSIX time it was first observed
    text: str  # what it is, with its figures, as last observed
    scope: str = ""  # a GPU's "server_key|uuid" for GPU conditions; "" for the server's own
    sent_at: float | None = None  # when last told (raised or repeated); None: not yet
    at_start: bool = False  # a server already down when gpumon first polled it
    routes: list[str] = field(default_factory=list)  # LAB and/or MAIL + address
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific facts, JSON-able


@dataclass
class Observed:
    """A condition as this push observes it."""

    key: str
    kind: str
    server: str
    server_key: str
    text: str
    since: float  # when it began, if this push is the first to see it
    hold_s: float = 0.0  # observed this long before it is told
    scope: str = ""
    at_start: bool = False
    routes: list[str] = field(default_factory=lambda: [LAB])
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scope:
    """What this push saw: the servers polled, and what it could not see into."""

    polled: set[str] = field(default_factory=set)  # server keys
    held_servers: set[str] = field(default_factory=set)  # OFF or stale: health and GPUs unknown
    held_gpus: set[str] = field(default_factory=set)  # GPU scopes whose state is unknown

    def holds(self, condition: Condition) -> bool:
        if condition.kind in (DOWN, STALE):
            return False
        if condition.server_key in self.held_servers:
            return True
        return bool(condition.scope) and condition.scope in self.held_gpus


@dataclass(frozen=True)
class Event:
    what: str  # RAISED, REPEATED or CLEARED
    condition: Condition
    at: float  # POSIX time of the push


def step(
    previous: dict[str, Condition],
    observed: Iterable[Observed],
    scope: Scope,
    now: float,
    repeat_s: float,
) -> tuple[list[Event], dict[str, Condition]]:
    """The events of this push, and the conditions to keep for the next one."""
    events: list[Event] = []
    current: dict[str, Condition] = {}
    for seen in observed:
        if seen.key in current:
            continue  # the same condition twice (two warnings alike): told once
        before = previous.get(seen.key)
        if before is None:
            condition = Condition(
                key=seen.key,
                kind=seen.kind,
                server=seen.server,
                server_key=seen.server_key,
                since=min(seen.since, now),
                text=seen.text,
                scope=seen.scope,
                at_start=seen.at_start,
                routes=list(seen.routes),
                detail=dict(seen.detail),
            )
        else:
            # The figures and the addressees are this push's; when it began and when it was
            # told stay.
            condition = replace(
                before,
                server=seen.server,
                text=seen.text,
                routes=list(seen.routes),
                detail={**before.detail, **seen.detail},
            )
        if condition.sent_at is None:
            if now - condition.since >= seen.hold_s:
                condition.sent_at = now
                events.append(Event(RAISED, condition, now))
        elif now - condition.sent_at >= repeat_s:
            condition.sent_at = now
            events.append(Event(REPEATED, condition, now))
        current[seen.key] = condition
    for key, before in previous.items():
        if key in current or before.server_key not in scope.polled:
            continue
        if scope.holds(before):
            current[key] = before
        elif before.sent_at is not None:
            events.append(Event(CLEARED, before, now))
    return events, current
