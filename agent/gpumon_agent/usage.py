"""Is a GPU free, in use, or is its use unknown? One pure judgement over a Gpu record, used by
everything that hands GPUs out or says which are free (`gpumon claim` picking GPUs itself, and
the central side's free-GPU views), so they all agree.

Unknown is never free. The evidence, strongest first:

1. A listed process, or a live claim: in use.
2. GPU memory in use (``BUSY_MEMORY_BYTES`` or more) or the GPU busy (``BUSY_UTILIZATION_PCT``
   or more, instant or mean): in use, whatever the process list says — the process may be in
   another PID namespace (a container), or NVML could not list processes at all.
3. A lost GPU, a GPU whose reads failed, or processes that could not be listed: unknown use.
4. Otherwise (processes listed and none, no claim, memory and utilization low or not offered):
   free.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from gpumon_agent.report import GPU_LOST, GPU_OK, Gpu

USE_FREE = "free"
USE_BUSY = "in use"
USE_UNKNOWN = "unknown use"

# An idle GPU holds a few MiB (a few hundred with a display, or with memory v1 counting the
# driver's reservation); a CUDA context alone is ~300 MiB, a training job GiBs.
BUSY_MEMORY_BYTES = 1 << 30
# An idle GPU reads 0 %, one driving a desktop a few %.
BUSY_UTILIZATION_PCT = 10.0


@dataclass(frozen=True)
class GpuUse:
    state: str  # USE_FREE | USE_BUSY | USE_UNKNOWN
    reason: str  # short words for people, e.g. "2 processes: alice, bob"

    @property
    def free(self) -> bool:
        return self.state == USE_FREE


def judge_use(gpu: Gpu) -> GpuUse:
    """Whether `gpu` is free to hand out, and why (see the module docstring)."""
    if gpu.processes:
        users = sorted({p.user for p in gpu.processes})
        n = len(gpu.processes)
        return GpuUse(USE_BUSY, f"{n} process{'es' if n != 1 else ''}: {', '.join(users)}")
    if gpu.claims:
        holders = ", ".join(f"{c.user} ({c.job})" for c in gpu.claims)
        return GpuUse(USE_BUSY, f"claimed by {holders}")
    evidence = use_evidence(gpu)
    if evidence:
        unlisted = "processes unknown" if gpu.processes is None else "no process listed"
        return GpuUse(USE_BUSY, f"{', '.join(evidence)}; {unlisted}")
    if gpu.state == GPU_LOST:
        return GpuUse(USE_UNKNOWN, "GPU lost (fell off the bus)")
    if gpu.state != GPU_OK:
        return GpuUse(USE_UNKNOWN, f"GPU {gpu.state}: {gpu.error or 'NVML error'}")
    if gpu.processes is None:
        return GpuUse(USE_UNKNOWN, f"processes unknown: {gpu.processes_error or 'not read'}")
    return GpuUse(USE_FREE, "no process")


def use_evidence(gpu: Gpu) -> List[str]:
    """What GPU memory and utilization say about use, whatever the process list says:
    ["20.0 GiB used", "85% busy"], or [] when they say nothing (low, or not read)."""
    found = []
    used = gpu.memory_used_bytes
    if used is not None and used >= BUSY_MEMORY_BYTES:
        found.append(f"{used / 2**30:.1f} GiB used")
    busy = _highest(gpu.utilization_pct, gpu.utilization_mean_pct)
    if busy is not None and busy >= BUSY_UTILIZATION_PCT:
        found.append(f"{busy:.0f}% busy")
    return found


def _highest(*values: Optional[float]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return max(known) if known else None
