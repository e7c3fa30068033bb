"""What the GPU events are judged from: one record per GPU, as the reservations' GPU states give
it (``PushOutcome.gpu_states``, the reservations issue) — or, without reservations, as this
push's Reports alone tell it (``facts_from_reports``: who runs, what is claimed, how long a
claimed GPU has been idle; no reservation is known there, so no reservation event).

Any record with these attributes will do (``GpuFacts`` is one); nothing else is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumon.poll.result import AGENT_STALE, ServerResult
from gpumon_agent.report import GPU_LOST, GPU_OK, Gpu, parse_utc_iso

# A GPU's kind (the reservations issue's GpuState.kind).
FREE = "free"
RESERVED_FREE = "reserved_free"
RESERVER_RUNNING = "reserver_running"
OTHER_ON_RESERVED = "other_on_reserved"
CLAIMED_IDLE = "claimed_idle"
RESERVED_UNUSED = "reserved_unused"
IN_USE = "in_use"
UNKNOWN = "unknown"
LOST = "lost"
OFF = "off"
KINDS = (
    FREE,
    RESERVED_FREE,
    RESERVER_RUNNING,
    OTHER_ON_RESERVED,
    CLAIMED_IDLE,
    RESERVED_UNUSED,
    IN_USE,
    UNKNOWN,
    LOST,
    OFF,
)
UNSEEN = (UNKNOWN, LOST, OFF)  # what runs there cannot be told: its events are held


@dataclass
class GpuFacts:
    server: str
    gpu: int
    uuid: str | None
    kind: str  # one of KINDS
    users: list[str] = field(default_factory=list)  # Unix users with a process on it
    reserved_by: list[str] = field(default_factory=list)  # people ([people] names or Usage text)
    claim_user: str | None = None
    claim_job: str | None = None
    idle_s: float | None = None  # claimed, and no process for this long
    unused_s: float | None = None  # reserved, and nobody's process for this long


def read_facts(records: Iterable[Any]) -> list[GpuFacts]:
    """Records of that shape (duck-typed) as GpuFacts; a record missing a field, or holding a
    value of the wrong kind, is left out rather than failing the push's alerts."""
    out: list[GpuFacts] = []
    for record in records:
        try:
            facts = GpuFacts(
                server=str(record.server),
                gpu=int(record.gpu),
                uuid=None if record.uuid is None else str(record.uuid),
                kind=str(record.kind),
                users=[str(u) for u in (record.users or [])],
                reserved_by=[str(p) for p in (record.reserved_by or [])],
                claim_user=None if record.claim_user is None else str(record.claim_user),
                claim_job=None if record.claim_job is None else str(record.claim_job),
                idle_s=_seconds(record.idle_s),
                unused_s=_seconds(record.unused_s),
            )
        except (AttributeError, TypeError, ValueError):
            continue
        out.append(facts)
    return out


def facts_from_reports(results: Sequence[ServerResult], now: float) -> list[GpuFacts]:
    """Every GPU of the ON servers, from their Reports: claimed-but-idle with how long (the
    agent's ``claimed_idle`` and ``idle_since``), in use, free, or unseen."""
    out: list[GpuFacts] = []
    for result in results:
        report = result.report
        if not result.on or report is None or result.reason_code == AGENT_STALE:
            continue  # the server's own hold covers its GPUs
        for gpu in report.gpus:
            out.append(_facts(result.name, gpu, now))
    return out


def _facts(server: str, gpu: Gpu, now: float) -> GpuFacts:
    users = sorted({p.user for p in gpu.processes or []})
    claim = min(gpu.claims, key=lambda c: c.started_at) if gpu.claims else None
    facts = GpuFacts(
        server=server,
        gpu=gpu.index,
        uuid=gpu.uuid,
        kind=IN_USE if users or claim else FREE,
        users=users,
        claim_user=claim.user if claim else None,
        claim_job=claim.job if claim else None,
    )
    if gpu.state == GPU_LOST:
        facts.kind = LOST
    elif gpu.state != GPU_OK or (gpu.processes is None and not claim):
        facts.kind = UNKNOWN
    elif gpu.claimed_idle and claim is not None:
        facts.kind = CLAIMED_IDLE
        # Idle since the last process went — or since the claim, if it came later.
        starts = [_posix(gpu.idle_since), _posix(claim.started_at)]
        start = max((s for s in starts if s is not None), default=None)
        facts.idle_s = None if start is None else max(0.0, now - start)
    elif gpu.claimed_idle is None and claim is not None:
        facts.kind = UNKNOWN  # claimed, processes unknown: idle or not cannot be told
    return facts


def _posix(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return parse_utc_iso(iso).timestamp()
    except ValueError:
        return None


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("not a duration")
    return seconds
