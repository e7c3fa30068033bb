"""Which GPUs a claim gets: the request parsed (``parse_gpu_request``), the GPUs chosen
(``choose_gpus``, pure: free ones by gpumon_agent.usage's judgement, least busy first, or exactly
those asked for), and ``claim_gpus``, which chooses and records the claim under the registry
lock so that two claimers never get the same GPU.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import math
import re
from typing import (
    Any,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from gpumon_agent.claims.record import ClaimError, ClaimRecord, new_record
from gpumon_agent.claims.registry import DEFAULT_LOCK_TIMEOUT_S, ClaimRegistry, RegistryError
from gpumon_agent.report import (
    GPU_OK,
    Gpu,
)
from gpumon_agent.safedir import user_name
from gpumon_agent.usage import judge_use

# Claim files read before allocating: every claim must be seen to never hand out a claimed GPU;
# past this many the claimer refuses rather than guess.
MAX_ALLOCATION_FILES = 4096

# A GPU request: "auto" or explicit indices / UUIDs (see parse_gpu_request).
GpuRequest = Optional[List[Union[int, str]]]


class NoFreeGpu(ClaimError):
    """Not enough GPUs are free (or the ones asked for are taken)."""


# --- allocation --------------------------------------------------------------------------------


def parse_gpu_request(gpus: Union[str, int, Sequence[Union[int, str]], None]) -> GpuRequest:
    """The request: "auto" (or None) → None; "0,2" / [0, 2] / "GPU-…,GPU-…" / ["GPU-…"] → the list.

    Raises ClaimError for anything else (an empty list, a negative index, junk)."""
    if gpus is None:
        return None
    if isinstance(gpus, bool):
        raise ClaimError(f"gpus={gpus!r}: give 'auto', indices or UUIDs")
    if isinstance(gpus, int):
        items: List[Any] = [gpus]
    elif isinstance(gpus, str):
        text = gpus.strip()
        if text.lower() == "auto":
            return None
        items = [part.strip() for part in text.split(",")]
    else:
        items = list(gpus)
    out: List[Union[int, str]] = []
    for item in items:
        if isinstance(item, bool):
            raise ClaimError(f"gpus: {item!r} is not a GPU index or UUID")
        if isinstance(item, int):
            value: Union[int, str] = item
        elif isinstance(item, str) and item.strip().isdigit():
            value = int(item.strip())
        elif isinstance(item, str) and re.match(r"^(GPU|MIG)-[0-9A-Za-z-]+$", item.strip()):
            value = item.strip()
        else:
            raise ClaimError(
                f"gpus: {item!r} is not a GPU index (0, 1, …) or UUID (GPU-…); "
                "use 'auto' to let gpumon pick"
            )
        if isinstance(value, int) and value < 0:
            raise ClaimError(f"gpus: {value} is not a GPU index")
        if value not in out:
            out.append(value)
    if not out:
        raise ClaimError("gpus: no GPU given; use 'auto' to let gpumon pick")
    return out


def _describe_taken(gpu: Gpu, holders: List[ClaimRecord]) -> str:
    if holders:
        c = holders[0]
        return f"GPU {gpu.index}: claimed by {c.user} (pid {c.pid}, job {c.job!r})"
    if gpu.state != GPU_OK:
        return f"GPU {gpu.index}: {gpu.state}" + (f" ({gpu.error})" if gpu.error else "")
    if gpu.processes:
        users = sorted({p.user for p in gpu.processes})
        n = len(gpu.processes)
        plural = "es" if n != 1 else ""
        return f"GPU {gpu.index}: {n} unclaimed process{plural} ({', '.join(users)})"
    use = judge_use(gpu)
    return f"GPU {gpu.index}: {use.state} ({use.reason})"


def choose_gpus(
    gpus: Sequence[Gpu], claims: Sequence[ClaimRecord], request: GpuRequest, count: int = 1
) -> List[Gpu]:
    """The GPUs to claim. Pure: ``gpus`` as sampled now, ``claims`` the live ones.

    auto (request None): ``count`` GPUs that gpumon_agent.usage judges free (healthy, processes
    listed and none, little memory used, not busy — never one whose processes are unknown) and
    no live claim covers, least utilized first (then least memory used, then index). Explicit:
    exactly those GPUs, each existing and not claimed (a process without a claim, or unknown
    processes, do not block an explicit request: the user asked for that GPU). Raises NoFreeGpu
    / ClaimError saying why."""
    taken = {id(g): [c for c in claims if c.covers(g)] for g in gpus}
    if request is None:
        if count < 1:
            raise ClaimError(f"count={count}: claim at least one GPU")
        free = [g for g in gpus if judge_use(g).free and not taken[id(g)]]
        if len(free) < count:
            busy = [_describe_taken(g, taken[id(g)]) for g in gpus if g not in free]
            detail = "; ".join(busy[:8]) + ("; …" if len(busy) > 8 else "")
            raise NoFreeGpu(
                f"need {count} free GPU{'s' if count != 1 else ''}, {len(free)} of {len(gpus)} "
                f"free" + (f" — {detail}" if detail else "") + " (`gpumon-agent claims` lists "
                "the claims; try later or name GPUs with --gpus)"
            )

        def load(g: Gpu) -> Tuple[float, float, int]:
            util = g.utilization_pct if g.utilization_pct is not None else 100.0
            mem = float(g.memory_used_bytes) if g.memory_used_bytes is not None else math.inf
            return (util, mem, g.index)

        return sorted(free, key=load)[:count]
    chosen: List[Gpu] = []
    for want in request:
        if isinstance(want, int):
            match = [g for g in gpus if g.index == want]
        else:
            match = [g for g in gpus if g.uuid is not None and g.uuid.lower() == want.lower()]
        if not match:
            have = ", ".join(str(g.index) for g in gpus) or "none"
            raise ClaimError(f"no GPU {want} on this server (GPUs: {have})")
        gpu = match[0]
        if taken[id(gpu)]:
            raise NoFreeGpu(_describe_taken(gpu, taken[id(gpu)]) + " — pick another or 'auto'")
        if gpu.state != GPU_OK:
            raise ClaimError(_describe_taken(gpu, []) + "; cannot claim it")
        if gpu not in chosen:
            chosen.append(gpu)
    return chosen


def claim_gpus(
    registry: ClaimRegistry,
    gpus: Sequence[Gpu],
    request: GpuRequest,
    count: int,
    job: str,
    command: str,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> ClaimRecord:
    """Choose and record, atomically among claimers: the lock is held across reading the live
    claims, choosing, and publishing the new claim file."""
    with registry.lock(lock_timeout_s):
        # Every claim must be seen, or a claimed GPU could be handed out again: refuse rather
        # than guess when the registry cannot be read whole.
        scan = registry.scan(MAX_ALLOCATION_FILES)
        if scan.refused is not None:
            raise RegistryError(scan.refused)
        if scan.unread:
            owner, count_left = max(scan.unread.items(), key=lambda item: item[1])
            raise RegistryError(
                f"the claims registry {registry.path} holds more claim files than gpumon reads "
                f"before allocating ({MAX_ALLOCATION_FILES}; {count_left} unread of "
                f"{user_name(owner)}'s), so it cannot tell which GPUs are free — ask root to "
                "clean it up"
            )
        chosen = choose_gpus(gpus, scan.claims, request, count)
        record = new_record(job, command, chosen)
        registry.create(record)
    return record
