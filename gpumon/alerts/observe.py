"""What one push observes, as conditions (gpumon.alerts.conditions): each server OFF or with a
stale agent, each of the agent's health warnings, each GPU event — with its figures, and whom
to tell. Pure: the push's results, the GPU records, the config and the clock in; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpumon.alerts.conditions import (
    CLAIMED_IDLE,
    DOWN,
    HEALTH,
    LAB,
    MAIL,
    OTHER_ON_RESERVED,
    RESERVED_UNUSED,
    STALE,
    Observed,
    Scope,
)
from gpumon.alerts.gpus import UNSEEN, GpuFacts
from gpumon.config import AlertsConfig, Person
from gpumon.poll.result import AGENT_STALE, ServerResult, human_duration
from gpumon.sheet.cells import warning_text
from gpumon.sheet.layout import server_key
from gpumon_agent.report import parse_utc_iso


@dataclass
class Observation:
    observed: list[Observed]
    scope: Scope


def observe(
    results: Sequence[ServerResult],
    gpus: Sequence[GpuFacts],
    settings: AlertsConfig,
    people: dict[str, Person],
    known: set[str],
    now: float,
) -> Observation:
    """The conditions this push sees. ``known``: the server keys polled at some earlier push
    (a server OFF that is not among them was already down when gpumon started)."""
    out = Observation([], Scope())
    for result in results:
        key = server_key(result.name)
        out.scope.polled.add(key)
        if not result.on:
            out.scope.held_servers.add(key)
            out.observed.append(_down(result, key, settings, key not in known, now))
            continue
        if result.reason_code == AGENT_STALE:
            out.scope.held_servers.add(key)  # its warnings are as old as its report
            out.observed.append(
                Observed(
                    key=f"stale|{key}",
                    kind=STALE,
                    server=result.name,
                    server_key=key,
                    text=result.reason or "agent stale",
                    since=_when(result.polled_at, now),
                    hold_s=settings.down_after_s,
                )
            )
            continue
        if result.report is None:
            continue
        for warning in result.report.warnings:
            gpu = "" if warning.gpu_index is None else str(warning.gpu_index)
            out.observed.append(
                Observed(
                    key=f"health|{key}|{warning.code}|{gpu}",
                    kind=HEALTH,
                    server=result.name,
                    server_key=key,
                    text=warning_text(warning),
                    since=_when(result.polled_at, now),
                    detail={"code": warning.code},
                )
            )
    addresses = _Addresses(people)
    for facts in gpus:
        key = server_key(facts.server)
        scope = f"{key}|{facts.uuid or facts.gpu}"
        if facts.kind in UNSEEN:
            out.scope.held_gpus.add(scope)
            continue
        seen = _gpu_event(facts, key, scope, settings, addresses, now)
        if seen is not None:
            out.observed.append(seen)
    return out


def _down(
    result: ServerResult, key: str, settings: AlertsConfig, at_start: bool, now: float
) -> Observed:
    return Observed(
        key=f"down|{key}",
        kind=DOWN,
        server=result.name,
        server_key=key,
        text=result.reason or result.reason_code or "unreachable",
        since=_when(result.polled_at, now),
        hold_s=settings.down_after_s,
        at_start=at_start,
        detail={"last_seen_on": result.last_seen_on, "reason_code": result.reason_code},
    )


def _gpu_event(
    facts: GpuFacts,
    key: str,
    scope: str,
    settings: AlertsConfig,
    addresses: _Addresses,
    now: float,
) -> Observed | None:
    where = f"GPU {facts.gpu}"
    reservers = ", ".join(facts.reserved_by) or "someone"
    if facts.kind == OTHER_ON_RESERVED:
        users = ", ".join(facts.users) or "someone"
        text = f"{where}: {users} running on a GPU reserved by {reservers}"
        # The lab sees misuse; the reservers hear of it too where their address is known.
        routes = [LAB, *addresses.of_people(facts.reserved_by)]
    elif facts.kind == RESERVED_UNUSED:
        if facts.unused_s is None or facts.unused_s < settings.reserved_unused_h * 3600:
            return None
        text = f"{where}: reserved by {reservers}, unused for {human_duration(facts.unused_s)}"
        routes = addresses.of_people(facts.reserved_by) or [LAB]
    elif facts.kind == CLAIMED_IDLE:
        if facts.idle_s is None or facts.idle_s < settings.claimed_idle_h * 3600:
            return None
        job = f" for {facts.claim_job!r}" if facts.claim_job else ""
        text = (
            f"{where}: claimed by {facts.claim_user or '?'}{job}, idle for "
            f"{human_duration(facts.idle_s)} — end the job or free the claim so others can "
            "use it"
        )
        routes = addresses.of_users([facts.claim_user] if facts.claim_user else []) or [LAB]
    else:
        return None
    return Observed(
        key=f"gpu|{scope}|{facts.kind}",
        kind=facts.kind,
        server=facts.server,
        server_key=key,
        text=text,
        since=now,
        scope=scope,
        routes=routes,
        detail={"gpu": facts.gpu},
    )


class _Addresses:
    """People's addresses ([people]) by their name and by their Unix users, case-insensitive."""

    def __init__(self, people: dict[str, Person]) -> None:
        self.by_name: dict[str, str] = {}
        self.by_user: dict[str, str] = {}
        for person in people.values():
            if not person.email:
                continue
            self.by_name.setdefault(person.name.strip().casefold(), person.email)
            for user in person.users:
                self.by_user.setdefault(user.strip().casefold(), person.email)

    def of_people(self, names: Sequence[str]) -> list[str]:
        found = (self.by_name.get(n.strip().casefold()) for n in names)
        return _routes(found)

    def of_users(self, users: Sequence[str]) -> list[str]:
        # A user without an entry of their own may still be a person's name.
        found = (
            self.by_user.get(u.strip().casefold()) or self.by_name.get(u.strip().casefold())
            for u in users
        )
        return _routes(found)


def _routes(addresses) -> list[str]:
    return [MAIL + a for a in dict.fromkeys(a for a in addresses if a)]


def _when(iso: str, fallback: float) -> float:
    try:
        return parse_utc_iso(iso).timestamp()
    except (ValueError, TypeError):
        return fallback
