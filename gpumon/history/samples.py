"""What the history store records of one push: a ServerSample per server polled, a GpuSample per
GPU — plain values, built from a push's outcome by ``samples_from_outcome``.

The reservation fields are plain too, so that this package does not depend on how the sheet's
Usage column is read: ``reservation_text`` (the cell as written), ``reserved_people`` (the names
the reader found in it) and ``reserved_by`` (who is charged for it: the Unix users those names
map to, then the names that map to none, as written).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpumon.poll.result import ServerResult
from gpumon.sheet.layout import server_key

MAX_NAME_CHARS = 200  # a user, person or job name kept; longer is cut (hostile input)
MAX_TEXT_CHARS = 1000  # a reservation's text kept
MAX_NAMES = 64  # users / people / claims kept per GPU


@dataclass(frozen=True)
class GpuSample:
    server: str
    gpu: int  # the GPU's index on its server
    on: bool  # the server answered this push
    util_pct: float | None = None  # utilization, mean over the agent's window
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    users: tuple[str, ...] | None = ()  # Unix users with a process on it; None: not known
    claims: tuple[tuple[str, str], ...] = ()  # live claims: (job, user)
    reservation_text: str | None = None
    reserved_people: tuple[str, ...] = ()
    reserved_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerSample:
    server: str
    on: bool
    gpus: tuple[GpuSample, ...] = ()
    warnings: tuple[tuple[str, str], ...] = ()  # (code, message) of the health warnings
    off_reason: str | None = None  # the reason code when OFF


def _name(text: Any) -> str:
    value = str(text)
    return value if len(value) <= MAX_NAME_CHARS else value[: MAX_NAME_CHARS - 1] + "…"


def _names(values: Any) -> tuple[str, ...]:
    return tuple(sorted({_name(v) for v in values}))[:MAX_NAMES]


def reservation_fields(reservation: Any) -> dict[str, Any]:
    """The GpuSample fields of a reservation: any object with ``text``, ``people``, ``users``
    and ``unmatched`` (gpumon.sheet.reservations.Reservation), or None."""
    if reservation is None:
        return {}
    text = str(getattr(reservation, "text", "") or "")[:MAX_TEXT_CHARS]
    people = _names(getattr(reservation, "people", ()) or ())
    users = _names(getattr(reservation, "users", ()) or ())
    unmatched = _names(getattr(reservation, "unmatched", ()) or ())
    by = tuple(dict.fromkeys([*users, *(u for u in unmatched if u not in users)]))[:MAX_NAMES]
    return {
        "reservation_text": text or None,
        "reserved_people": people,
        "reserved_by": by,
    }


def samples_from_outcome(
    outcome: Any, reservations: Mapping[tuple[str, int], Any] | None = None
) -> list[ServerSample]:
    """A ServerSample per server of a push's outcome (gpumon.fleet.PushOutcome: ``results``).

    ``reservations``: the reservation of each (server, GPU index), as the sheet's reader gives
    them; None when there is none to give. An OFF server's GPUs are those it has reservations
    for (the store adds the GPUs it saw earlier)."""
    by_server: dict[str, dict[int, Any]] = {}
    for (server, gpu), reservation in (reservations or {}).items():
        if int(gpu) >= 0:  # a block without GPU rows (layout.PLAIN_ROW) has no GPU to count
            by_server.setdefault(server_key(server), {})[int(gpu)] = reservation
    return [_server(r, by_server.get(server_key(r.name), {})) for r in outcome.results]


def _server(result: ServerResult, reserved: dict[int, Any]) -> ServerSample:
    report = result.report if result.on else None
    gpus: list[GpuSample] = []
    seen: set[int] = set()
    if report is not None:
        for gpu in report.gpus:
            if gpu.index in seen:
                continue  # a report with an index twice: the first counts
            seen.add(gpu.index)
            util = gpu.utilization_mean_pct
            if util is None:
                util = gpu.utilization_pct
            processes = gpu.processes
            users = None if processes is None else _names(p.user for p in processes)
            claims = tuple(sorted({(_name(c.job), _name(c.user)) for c in gpu.claims}))
            gpus.append(
                GpuSample(
                    server=result.name,
                    gpu=gpu.index,
                    on=True,
                    util_pct=util,
                    memory_used_bytes=gpu.memory_used_bytes,
                    memory_total_bytes=gpu.memory_total_bytes,
                    users=users,
                    claims=claims[:MAX_NAMES],
                    **reservation_fields(reserved.get(gpu.index)),
                )
            )
    for index, reservation in sorted(reserved.items()):
        if index not in seen:  # OFF, or a reserved GPU the report does not list
            gpus.append(
                GpuSample(
                    server=result.name,
                    gpu=index,
                    on=False,
                    users=None,
                    **reservation_fields(reservation),
                )
            )
    warnings = ()
    if report is not None:
        warnings = tuple(
            (_name(w.code), str(w.message)[:MAX_TEXT_CHARS]) for w in report.warnings[:MAX_NAMES]
        )
    return ServerSample(
        server=result.name,
        on=result.on,
        gpus=tuple(gpus),
        warnings=warnings,
        off_reason=None if result.on else result.reason_code,
    )
