"""What one GPU's sample means in GPU-seconds — the one definition of the accounting.

For a GPU sample standing for ``seconds`` (pure, no I/O):

- a person's **used**: a process of theirs ran on the GPU;
- **reserved**: the GPU's reservation charges them (``reserved_by``);
- **reserved, unused**: reserved by them, the server ON and its processes known, and no process
  of theirs on it (a GPU down is not one they left unused);
- **on others' reservations**: used by them while the reservation charges others only;
- **without a reservation**: used by them while nobody had reserved it;
- **unclaimed**: used by them without a live claim of theirs on that GPU (`gpumon claim`).

Several people on one GPU are each charged its full time: these are hours a person held a GPU,
not a split of it. Per GPU: the time recorded, ON, busy (any process), processes unknown,
claimed, reserved, reserved but idle (no process at all), and utilization and memory weighted by
time. Everything is linear in the time, so sums over pushes, 5-minute and hourly buckets agree
exactly (the times are whole seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from gpumon.history.samples import GpuSample

PERSON_FIELDS = (
    "used_s",
    "reserved_s",
    "reserved_unused_s",
    "on_others_s",
    "unreserved_s",
    "unclaimed_s",
)
GPU_FIELDS = (
    "covered_s",
    "on_s",
    "busy_s",
    "unknown_s",
    "claimed_s",
    "reserved_s",
    "reserved_idle_s",
    "util_s",
    "util_known_s",
    "mem_s",
    "mem_known_s",
)


@dataclass
class GpuSeconds:
    covered_s: float = 0
    on_s: float = 0
    busy_s: float = 0  # some process ran on it
    unknown_s: float = 0  # ON, but its processes could not be listed
    claimed_s: float = 0  # a live claim on it
    reserved_s: float = 0
    reserved_idle_s: float = 0  # reserved, ON, no process at all
    util_s: float = 0  # utilization % × seconds, over util_known_s
    util_known_s: float = 0
    mem_s: float = 0  # memory used (MiB) × seconds, over mem_known_s
    mem_known_s: float = 0

    def add(self, other: GpuSeconds, weight: float = 1.0) -> None:
        for name in GPU_FIELDS:
            setattr(self, name, getattr(self, name) + weight * getattr(other, name))


@dataclass
class PersonSeconds:
    used_s: float = 0
    reserved_s: float = 0
    reserved_unused_s: float = 0
    on_others_s: float = 0
    unreserved_s: float = 0
    unclaimed_s: float = 0

    def add(self, other: PersonSeconds, weight: float = 1.0) -> None:
        for name in PERSON_FIELDS:
            setattr(self, name, getattr(self, name) + weight * getattr(other, name))

    def is_zero(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


MIB = 1024**2


def gpu_seconds(sample: GpuSample, seconds: int) -> tuple[GpuSeconds, dict[str, PersonSeconds]]:
    """The GPU's and each person's seconds for ``sample`` standing for ``seconds``."""
    g = GpuSeconds(covered_s=seconds)
    people: dict[str, PersonSeconds] = {}

    def person(name: str) -> PersonSeconds:
        return people.setdefault(name, PersonSeconds())

    reserved_by = set(sample.reserved_by)
    users = sample.users
    known = sample.on and users is not None
    if sample.on:
        g.on_s = seconds
        if users is None:
            g.unknown_s = seconds
        elif users:
            g.busy_s = seconds
        if sample.claims:
            g.claimed_s = seconds
        if sample.util_pct is not None:
            g.util_s = sample.util_pct * seconds
            g.util_known_s = seconds
        if sample.memory_used_bytes is not None:
            g.mem_s = sample.memory_used_bytes / MIB * seconds
            g.mem_known_s = seconds
    if reserved_by:
        g.reserved_s = seconds
        if known and not users:
            g.reserved_idle_s = seconds
        for name in reserved_by:
            p = person(name)
            p.reserved_s = seconds
            if known and name not in users:
                p.reserved_unused_s = seconds
    if known:
        claimants = {user for _, user in sample.claims}
        for name in users:
            p = person(name)
            p.used_s = seconds
            if not reserved_by:
                p.unreserved_s = seconds
            elif name not in reserved_by:
                p.on_others_s = seconds
            if name not in claimants:
                p.unclaimed_s = seconds
    return g, people
