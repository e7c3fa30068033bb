"""Claims laid over a Report: each GPU's live claims, whether it is used without a claim, and
whether a claimed GPU has stood idle too long (``annotate``, with the ``IdleTracker`` that
remembers when each GPU last had a process; ``apply_claims`` reads the registry and annotates in
one call).

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import contextlib
import time
from typing import (
    Dict,
    Optional,
    Sequence,
)

from gpumon_agent.claims.record import ClaimRecord
from gpumon_agent.claims.registry import ClaimRegistry
from gpumon_agent.report import (
    Gpu,
    Report,
    parse_utc_iso,
    utc_iso,
)

# --- Report annotation -------------------------------------------------------------------------


class IdleTracker:
    """Remembers, per GPU (UUID, else index), the last time a process was seen on it.

    The daemon keeps one across samples. A one-shot report starts from nothing or from the
    previous snapshot (``from_report``). What annotate() does with it: see its docstring."""

    def __init__(self) -> None:
        self.last_busy: Dict[str, float] = {}

    def observe(self, gpu: Gpu, now: float) -> Optional[float]:
        """Record this sample; the last time ``gpu`` had a process (``now`` if it has one).

        Processes unknown count as busy: an idle stretch starts only where "none" was seen."""
        key = gpu.key
        if gpu.processes is None or gpu.processes:
            self.last_busy[key] = now
        return self.last_busy.get(key)

    @classmethod
    def from_report(cls, previous: Optional[Report]) -> IdleTracker:
        """Seed from an earlier Report: a GPU with processes then was busy at its
        ``generated_at``; an idle one was last busy at its ``idle_since`` (if it had one)."""
        tracker = cls()
        if previous is None:
            return tracker
        try:
            at = parse_utc_iso(previous.generated_at).timestamp()
        except ValueError:
            return tracker
        for gpu in previous.gpus:
            if gpu.processes is None or gpu.processes:  # unknown counts as busy, as in observe
                tracker.last_busy[gpu.key] = at
            elif gpu.idle_since:
                with contextlib.suppress(ValueError):
                    since = parse_utc_iso(gpu.idle_since).timestamp()
                    tracker.last_busy[gpu.key] = min(since, at)
        return tracker


def annotate(
    report: Report,
    claims: Sequence[ClaimRecord],
    tracker: IdleTracker,
    idle_after_s: float,
    now: Optional[float] = None,
) -> None:
    """Set each GPU's ``claims``, ``unclaimed_use``, ``claimed_idle`` and ``idle_since``, and
    the Report's ``cpu_claims`` (the live CPU-only claims, which cover no GPU).

    - claims: every live claim covering the GPU (matched by GPU, not by pid, so a claimer's
      children — dataloader workers, the command under `gpumon claim` — are covered).
    - unclaimed_use: the GPU runs a process and no live claim covers it.
    - processes unknown (None): nothing is read into them. unclaimed_use is False if a claim
      covers the GPU, else None; claimed_idle is None if claimed, else False; idle_since None.
    - idle_since: for a GPU without processes, since when it has had none as far as known:
      the last time ``tracker`` saw a process there, or, for a claimed GPU, the newest covering
      claim's start if that is later (a new claim gets the full idle allowance). None while
      processes run, or when unknown (unclaimed and never seen busy).
    - claimed_idle: claimed, no process, and ``now - idle_since >= idle_after_s``.

    One-shot rule: with no history (fresh tracker) a claimed GPU counts as idle since its claim
    started — seed the tracker with IdleTracker.from_report(previous snapshot) to do better.
    """
    now = time.time() if now is None else now
    report.cpu_claims = [c.info() for c in claims if c.cpu]
    for gpu in report.gpus:
        holders = [c for c in claims if c.covers(gpu)]
        gpu.claims = [c.info() for c in holders]
        last_busy = tracker.observe(gpu, now)
        if gpu.processes is None:
            gpu.unclaimed_use = False if holders else None
            gpu.claimed_idle = None if holders else False
            gpu.idle_since = None
            continue
        gpu.unclaimed_use = bool(gpu.processes) and not holders
        if gpu.processes:
            gpu.idle_since = None
            gpu.claimed_idle = False
            continue
        since = last_busy
        for c in holders:
            started = _timestamp(c.started_at)
            if started is not None and (since is None or started > since):
                since = started
        gpu.idle_since = utc_iso(since) if since is not None else None
        gpu.claimed_idle = bool(holders) and since is not None and now - since >= idle_after_s


def _timestamp(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return parse_utc_iso(text).timestamp()
    except ValueError:
        return None


def apply_claims(
    report: Report,
    registry: ClaimRegistry,
    tracker: IdleTracker,
    idle_after_s: float,
    now: Optional[float] = None,
) -> None:
    """What compose.py needs in one call: read the live claims (cleaning stale ones), annotate
    the GPUs, and add the bad claim files to ``report.claim_errors``."""
    claims, errors = registry.live_claims()
    annotate(report, claims, tracker, idle_after_s, now)
    report.claim_errors.extend(errors)
