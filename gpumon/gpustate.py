"""What is really going on on each GPU: its reservation (the sheet's Usage) held against its
live claim, its processes and the GPU's health. Pure: no I/O (the times come in as data).

One ``GpuState`` per GPU row of the sheet and per GPU a server reports. Its ``text`` is the
sheet's State cell:

=====================  ==========================================================
kind                   text (examples)
=====================  ==========================================================
``free``               ``free``
``reserved_free``      ``free — reserved by Niv`` (unused for less than UNUSED_AFTER_S)
``reserved_unused``    ``reserved by Niv — unused 3 d``
``reserver_running``   ``Niv ✓ python3 train.py`` (the reserver is the one running)
``other_on_reserved``  ``lww — reserved by Niv`` (someone else on a reserved GPU)
``claimed_idle``       ``lww — claimed 'kws ch32', idle 2 h``
``in_use``             ``in use by lww``; ``lww — claimed 'kws ch32'`` (not started yet);
                       ``in use (20.0 GiB used; processes unknown)``
``unknown``            ``unknown use`` (processes cannot be listed and no memory or
                       utilization says it is busy, or the GPU errs);
                       ``unknown use — agent stale`` (the server's report is old)
``lost``               ``lost`` (off the bus); ``not found`` (a sheet row the server lacks)
``off``                ``server OFF since 14:02``
=====================  ==========================================================

Unknown is never free (gpumon_agent.usage.judge_use decides free / in use / unknown for every
view). ``other_on_reserved`` also gives the server's Health a line, ``GPU 1: lww on Niv's
reservation``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpumon.poll.result import AGENT_STALE, ServerResult
from gpumon.sheet.layout import PLAIN_ROW, Layout
from gpumon.sheet.reservations import People, Reservation, ReservationIndex
from gpumon.usetimes import GpuTimes, times_key
from gpumon_agent.command import short_command
from gpumon_agent.report import GPU_LOST, Gpu, parse_utc_iso
from gpumon_agent.text import cut
from gpumon_agent.usage import USE_BUSY, USE_FREE, judge_use, use_evidence

FREE = "free"
RESERVED_FREE = "reserved_free"
RESERVED_UNUSED = "reserved_unused"
RESERVER_RUNNING = "reserver_running"
OTHER_ON_RESERVED = "other_on_reserved"
CLAIMED_IDLE = "claimed_idle"
IN_USE = "in_use"
UNKNOWN = "unknown"
LOST = "lost"
OFF = "off"
KINDS = (FREE, RESERVED_FREE, RESERVED_UNUSED, RESERVER_RUNNING, OTHER_ON_RESERVED,
         CLAIMED_IDLE, IN_USE, UNKNOWN, LOST, OFF)  # fmt: skip
# Free and reserved for longer than this: "reserved by Niv — unused 3 h" rather than "free —
# reserved by Niv" (a reservation left unused is worth asking about).
UNUSED_AFTER_S = 3600.0
STATE_LIMIT = 120  # characters in a State cell
CHECK = "✓"


@dataclass(frozen=True)
class GpuState:
    server: str  # as polled (the config's or the sheet's spelling)
    gpu: int  # index; PLAIN_ROW (-1) for the one row of a server without GPU rows
    uuid: str | None
    kind: str  # one of KINDS
    text: str  # the State cell
    users: tuple[str, ...] | None  # Unix users with processes on it; None: unknown
    reserved_by: tuple[str, ...] = ()  # the reservation's names (people, then unmatched)
    reservation: Reservation | None = None
    claim_user: str | None = None
    claim_job: str | None = None
    idle_s: float | None = None  # no process for this long (where known)
    unused_s: float | None = None  # no process and no claim for this long (where known)
    conflict: str | None = None  # the Health line, for other_on_reserved
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_pct: float | None = None

    def free_for(self, people: People, person: str) -> bool:
        """Whether ``person`` may take this GPU now: free, or free and reserved for them."""
        if self.kind == FREE:
            return True
        if self.kind not in (RESERVED_FREE, RESERVED_UNUSED) or self.reservation is None:
            return False
        name, users = people.resolve(person)
        held = {n.casefold() for n in self.reservation.names}
        return name.casefold() in held or any(self.reservation.holds(u) for u in users)


@dataclass(frozen=True)
class StateInput:
    """What one judgement of the fleet needs."""

    results: Sequence[ServerResult]
    layout: Layout | None  # the sheet's rows; None: only the GPUs the servers report
    reservations: Mapping[tuple[str, int], Reservation]
    people: People
    times: Mapping[str, GpuTimes]  # after advance_times
    now: float  # POSIX
    tz: dt.tzinfo  # the sheet's, for "server OFF since 14:02"


def advance_times(
    times: Mapping[str, GpuTimes], results: Sequence[ServerResult], now: float
) -> dict[str, GpuTimes]:
    """The times after this poll: a GPU in use clears both; one with no process starts (or
    keeps) "idle since", and with no claim either "unused since" — from the agent's own
    ``idle_since`` when it has one (it samples every few seconds), else now. A GPU whose use is
    unknown, or an OFF server's, keeps what it had. Pure."""
    out = dict(times)
    for result in results:
        report = result.report
        if not result.on or report is None or result.reason_code == AGENT_STALE:
            continue  # nothing new is known
        for gpu in report.gpus:
            key = times_key(result.name, gpu.uuid, gpu.index)
            before = out.get(key, GpuTimes())
            use = judge_use(gpu)
            if use.state == USE_BUSY and gpu.processes:
                out[key] = GpuTimes(None, None, now)
            elif use.state == USE_BUSY and gpu.claims and not use_evidence(gpu):
                # claimed, no process: idle (since when it last ran), not unused
                since = before.idle_since or _agent_idle_since(gpu, now) or now
                out[key] = GpuTimes(since, None, now)
            elif use.state == USE_BUSY:
                out[key] = GpuTimes(None, None, now)  # memory or utilization says busy
            elif use.state == USE_FREE:
                start = _agent_idle_since(gpu, now) or now
                out[key] = GpuTimes(before.idle_since or start, before.unused_since or start, now)
            else:
                out[key] = GpuTimes(before.idle_since, before.unused_since, now)
    return out


def gpu_states(given: StateInput) -> list[GpuState]:
    """Every GPU's state, server by server in poll order, GPUs by index."""
    out: list[GpuState] = []
    index_of = ReservationIndex(given.reservations)
    for result in given.results:
        block = given.layout.block(result.name) if given.layout is not None else None
        rows = set(block.gpu_rows) if block is not None else set()
        plain = block is not None and not block.gpu_rows
        report = result.report if result.on else None
        if report is None:
            text = _off_text(result, given)
            for index in sorted(rows) or ([PLAIN_ROW] if plain else []):
                res = index_of.get(result.name, index)
                out.append(_state(result, index, None, OFF, text, None, res))
            continue
        reported = {gpu.index: gpu for gpu in report.gpus}
        for index in sorted(rows | set(reported)):
            res = index_of.get(result.name, index)
            gpu = reported.get(index)
            if gpu is None:
                kind, text = (LOST, "not found") if report.nvml.available else (UNKNOWN, "")
                if not report.nvml.available:
                    text = "unknown use — no NVML" if report.nvml.error else "unknown use"
                out.append(_state(result, index, None, kind, text, None, res))
            elif result.reason_code == AGENT_STALE:
                # An old report says nothing about now: never free.
                text = "unknown use — agent stale" + (
                    f" — reserved by {res.label()}" if res else ""
                )
                out.append(_state(result, index, gpu.uuid, UNKNOWN, text, None, res))
            else:
                out.append(_judge(result, gpu, res, given))
        if plain and not report.gpus:
            res = index_of.get(result.name, PLAIN_ROW)
            text = "no GPU" if report.nvml.available else ""
            out.append(_state(result, PLAIN_ROW, None, UNKNOWN, text, None, res))
    return out


def health_lines(states: Sequence[GpuState]) -> dict[str, list[str]]:
    """server → the per-GPU conflicts its Health cell adds ("GPU 1: lww on Niv's
    reservation")."""
    out: dict[str, list[str]] = {}
    for state in states:
        if state.conflict:
            out.setdefault(state.server, []).append(state.conflict)
    return out


# --- one GPU ----------------------------------------------------------------------------------


def _judge(result: ServerResult, gpu: Gpu, res: Reservation | None, given: StateInput) -> GpuState:
    times = given.times.get(times_key(result.name, gpu.uuid, gpu.index), GpuTimes())
    idle_since = _agent_idle_since(gpu, given.now) or times.idle_since
    idle_s = _age(idle_since, given.now)
    unused_s = _age(times.unused_since, given.now)
    claim = gpu.claims[0] if gpu.claims else None
    common = {
        "uuid": gpu.uuid,
        "reservation": res,
        "reserved_by": res.names if res else (),
        "claim_user": claim.user if claim else None,
        "claim_job": claim.job if claim else None,
        "idle_s": idle_s,
        "unused_s": unused_s,
        "memory_free_bytes": _free_bytes(gpu),
        "memory_total_bytes": gpu.memory_total_bytes,
        "utilization_pct": _util(gpu),
    }
    users = None if gpu.processes is None else tuple(sorted({p.user for p in gpu.processes}))

    def state(kind: str, text: str, conflict: str | None = None) -> GpuState:
        return GpuState(
            server=result.name,
            gpu=gpu.index,
            kind=kind,
            text=cut(text, STATE_LIMIT),
            users=users,
            conflict=conflict,
            **common,  # type: ignore[arg-type]
        )

    reserved = f"reserved by {res.label()}" if res else ""
    if gpu.state == GPU_LOST:
        return state(LOST, "lost")
    use = judge_use(gpu)
    if use.state == USE_FREE:
        if res is None:
            return state(FREE, "free")
        if unused_s is not None and unused_s >= UNUSED_AFTER_S:
            return state(RESERVED_UNUSED, f"{reserved} — unused {short_duration(unused_s)}")
        return state(RESERVED_FREE, f"free — {reserved}")
    if use.state != USE_BUSY:
        return state(UNKNOWN, "unknown use" + (f" — {reserved}" if res else ""))
    # In use: by whom?
    runners = list(users or ())
    if claim is not None and not runners:
        runners = sorted({c.user for c in gpu.claims})
    if not runners:  # busy by memory or utilization alone; who, nobody can say
        return state(IN_USE, f"in use ({use.reason})" + (f" — {reserved}" if res else ""))
    claimed = ""
    if claim is not None and not gpu.processes:
        claimed = f" — claimed '{claim.job}'"
        if gpu.claimed_idle:
            claimed += f", idle {short_duration(idle_s)}" if idle_s is not None else ", idle"
    if res is not None:
        others = [u for u in runners if not res.holds(u) and u != "?"]
        if others:
            who = ", ".join(_people_of(others, given.people))
            conflict = f"GPU {gpu.index}: {who} on {res.label()}'s reservation"
            return state(OTHER_ON_RESERVED, f"{who}{claimed} — {reserved}", conflict)
        if not any(res.holds(u) for u in runners):  # only processes whose user is unknown
            return state(IN_USE, f"in use by {', '.join(runners)} — {reserved}")
        person = ", ".join(_people_of([u for u in runners if res.holds(u)], given.people))
        if claimed:
            kind = CLAIMED_IDLE if gpu.claimed_idle else RESERVER_RUNNING
            return state(kind, f"{person} {CHECK}{claimed}")
        return state(RESERVER_RUNNING, f"{person} {CHECK} {_programs(gpu)}")
    who = ", ".join(_people_of(runners, given.people))
    if claimed:
        return state(CLAIMED_IDLE if gpu.claimed_idle else IN_USE, f"{who}{claimed}")
    return state(IN_USE, f"in use by {who}")


def _state(
    result: ServerResult,
    index: int,
    uuid: str | None,
    kind: str,
    text: str,
    users: tuple[str, ...] | None,
    res: Reservation | None,
) -> GpuState:
    return GpuState(
        server=result.name,
        gpu=index,
        uuid=uuid,
        kind=kind,
        text=cut(text, STATE_LIMIT),
        users=users,
        reserved_by=res.names if res else (),
        reservation=res,
    )


def _people_of(users: list[str], people: People) -> list[str]:
    """Who these Unix users are, for people to read: their [people] names, once each."""
    return list(dict.fromkeys(people.person_of(user) for user in users))


def _programs(gpu: Gpu) -> str:
    names = list(dict.fromkeys(short_command(p.command) for p in gpu.processes or []))
    return "; ".join(names)


def _off_text(result: ServerResult, given: StateInput) -> str:
    if not result.last_seen_on:
        return "server OFF"
    try:
        seen = parse_utc_iso(result.last_seen_on).astimezone(given.tz)
    except ValueError:
        return "server OFF"
    now = dt.datetime.fromtimestamp(given.now, given.tz)
    shown = seen.strftime("%H:%M") if seen.date() == now.date() else seen.strftime("%Y-%m-%d %H:%M")
    return f"server OFF since {shown}"


def short_duration(seconds: float) -> str:
    """ "4 min", "2 h", "3 d": coarse, so that a State cell changes rarely."""
    if seconds < 3600:
        return f"{max(1, int(seconds // 60))} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _age(since: float | None, now: float) -> float | None:
    return None if since is None else max(0.0, now - since)


def _agent_idle_since(gpu: Gpu, now: float) -> float | None:
    if not gpu.idle_since:
        return None
    try:
        since = parse_utc_iso(gpu.idle_since).timestamp()
    except ValueError:
        return None
    return min(since, now)  # a server clock ahead of ours does not make a future time


def _free_bytes(gpu: Gpu) -> int | None:
    if gpu.memory_total_bytes is None or gpu.memory_used_bytes is None:
        return None
    return max(0, gpu.memory_total_bytes - gpu.memory_used_bytes)


def _util(gpu: Gpu) -> float | None:
    return gpu.utilization_mean_pct if gpu.utilization_mean_pct is not None else (
        gpu.utilization_pct
    )  # fmt: skip
