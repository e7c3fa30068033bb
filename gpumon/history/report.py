"""The accounting of a period in hours, per person, server and GPU, and what ``--json`` prints.

Built from the store's Totals (gpumon.history.query); the definitions of each figure are in
gpumon.history.facts. Hours are GPU-hours except a server's ``hours_off`` and
``hours_recorded`` (hours of the server itself).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from gpumon.history.facts import GpuSeconds, PersonSeconds
from gpumon.history.query import Totals, totals
from gpumon.history.store import SERVER_ROW, Retention

HOUR = 3600.0


@dataclass
class PersonHours:
    person: str
    used_gpu_hours: float = 0.0
    reserved_gpu_hours: float = 0.0
    reserved_unused_gpu_hours: float = 0.0
    on_others_reservations_gpu_hours: float = 0.0
    unreserved_gpu_hours: float = 0.0
    unclaimed_gpu_hours: float = 0.0


@dataclass
class ServerHours:
    server: str
    hours_recorded: float = 0.0  # time covered by pushes (a gap in pushes is not counted)
    hours_off: float = 0.0
    gpus: int = 0
    gpu_hours_busy: float = 0.0  # GPU-hours with some process on the GPU
    gpu_hours_reserved: float = 0.0
    gpu_hours_reserved_idle: float = 0.0
    mean_utilization_pct: float | None = None
    warnings: dict[str, int] = field(default_factory=dict)  # code: pushes that carried it


@dataclass
class GpuHours:
    server: str
    gpu: int
    hours_recorded: float = 0.0
    hours_on: float = 0.0
    hours_busy: float = 0.0
    hours_reserved: float = 0.0
    hours_reserved_idle: float = 0.0
    hours_processes_unknown: float = 0.0
    hours_claimed: float = 0.0
    mean_utilization_pct: float | None = None
    mean_memory_used_gib: float | None = None


@dataclass
class History:
    since: dt.datetime
    until: dt.datetime
    people: list[PersonHours]
    servers: list[ServerHours]
    gpus: list[GpuHours]

    def to_json(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "people": [_rounded(asdict(p)) for p in self.people],
            "servers": [_rounded(asdict(s)) for s in self.servers],
            "gpus": [_rounded(asdict(g)) for g in self.gpus],
        }


def history(
    conn: sqlite3.Connection,
    since: dt.datetime,
    until: dt.datetime,
    now: dt.datetime,
    retention: Retention,
) -> History:
    """The accounting of [since, until)."""
    found = totals(conn, _ts(since), _ts(until), _ts(now), retention)
    return build(found, since, until)


def build(found: Totals, since: dt.datetime, until: dt.datetime) -> History:
    people: dict[str, PersonSeconds] = {}
    for (_, _, name), seconds in found.people.items():
        people.setdefault(name, PersonSeconds()).add(seconds)
    servers: dict[str, ServerHours] = {}
    util: dict[str, list[float]] = {}
    gpus: list[GpuHours] = []
    for (server, gpu), g in sorted(found.gpus.items()):
        s = servers.setdefault(server, ServerHours(server))
        if gpu == SERVER_ROW:
            s.hours_recorded = g.covered_s / HOUR
            s.hours_off = (g.covered_s - g.on_s) / HOUR
            continue
        s.gpus += 1
        s.gpu_hours_busy += g.busy_s / HOUR
        s.gpu_hours_reserved += g.reserved_s / HOUR
        s.gpu_hours_reserved_idle += g.reserved_idle_s / HOUR
        pair = util.setdefault(server, [0.0, 0.0])
        pair[0] += g.util_s
        pair[1] += g.util_known_s
        gpus.append(_gpu(server, gpu, g))
    for server, (weighted, known) in util.items():
        servers[server].mean_utilization_pct = weighted / known if known else None
    for (server, code), pushes in found.warnings.items():
        servers.setdefault(server, ServerHours(server)).warnings[code] = pushes
    return History(
        since=since,
        until=until,
        people=[_person(name, p) for name, p in sorted(people.items()) if not p.is_zero()],
        servers=[servers[name] for name in sorted(servers)],
        gpus=gpus,
    )


def _person(name: str, p: PersonSeconds) -> PersonHours:
    return PersonHours(
        person=name,
        used_gpu_hours=p.used_s / HOUR,
        reserved_gpu_hours=p.reserved_s / HOUR,
        reserved_unused_gpu_hours=p.reserved_unused_s / HOUR,
        on_others_reservations_gpu_hours=p.on_others_s / HOUR,
        unreserved_gpu_hours=p.unreserved_s / HOUR,
        unclaimed_gpu_hours=p.unclaimed_s / HOUR,
    )


def _gpu(server: str, gpu: int, g: GpuSeconds) -> GpuHours:
    return GpuHours(
        server=server,
        gpu=gpu,
        hours_recorded=g.covered_s / HOUR,
        hours_on=g.on_s / HOUR,
        hours_busy=g.busy_s / HOUR,
        hours_reserved=g.reserved_s / HOUR,
        hours_reserved_idle=g.reserved_idle_s / HOUR,
        hours_processes_unknown=g.unknown_s / HOUR,
        hours_claimed=g.claimed_s / HOUR,
        mean_utilization_pct=g.util_s / g.util_known_s if g.util_known_s else None,
        mean_memory_used_gib=g.mem_s / g.mem_known_s / 1024 if g.mem_known_s else None,
    )


def _ts(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    """Hours to 4 decimals (a third of a second per GPU-hour): what a JSON reader needs."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = round(value, 4) if isinstance(value, float) else value
    return out
