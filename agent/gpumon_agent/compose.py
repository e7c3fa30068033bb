"""The one place that composes a full Report (``ReportComposer``): the Sampler's measurements
(GPUs and host, gpumon_agent.sampler), the live claims laid over them, and the health warnings.
Used by the daemon (every interval) and by `report` when it has to sample once itself.

The daemon (not a one-shot `report`, which runs as any user) also keeps the claims registry: it
makes it at the first sample, remakes it if it is deleted, repairs its lock file, and clears
temporary files of dead claimers once a minute (ClaimRegistry.upkeep / clean_temporary). Trouble
with it is logged once per change (gpumon_agent.statelog) and shown in the Report's
``claim_errors``; it never fails the sample.

The GPU count is remembered in ``<state_dir>/gpu-count`` so that a GPU that falls off the bus is
noticed across daemon restarts. It holds the highest count seen since boot (/run is cleared at
boot): a lost GPU keeps warning until it is back, or until someone removes the file after taking
the GPU out on purpose.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from gpumon_agent import health
from gpumon_agent.claims import ClaimError, ClaimRegistry, IdleTracker, apply_claims
from gpumon_agent.report import ClaimFileProblem, Report
from gpumon_agent.sampler import Sampler
from gpumon_agent.settings import AgentSettings
from gpumon_agent.statelog import StateLog

log = logging.getLogger("gpumon_agent")

GPU_COUNT_FILE = "gpu-count"
# Leftover temporary files of killed claimers are looked for this often (seconds).
CLEAN_TEMPORARY_EVERY_S = 60.0


class ReportComposer:
    """Composes Reports; keeps what must outlive one: the sampler (its utilization windows), the
    idle tracker, the GPU count.

    ``oneshot``: a single sample by `report`, which may run as any user — it reads the remembered
    GPU count but leaves the state dir to the daemon. ``previous``: the last Report known (a stale
    snapshot), which seeds how long claimed GPUs have been idle.
    """

    def __init__(
        self, settings: AgentSettings, oneshot: bool = False, previous: Optional[Report] = None
    ) -> None:
        self.settings = settings
        self.oneshot = oneshot
        self.sampler = Sampler(settings)
        self.registry = ClaimRegistry.for_settings(settings, agent=not oneshot)
        self.registry_log = StateLog(log)
        self.next_clean = 0.0
        self.registry_kept = False  # upkeep has run once (the first makes the registry)
        self.tracker = IdleTracker.from_report(previous)
        self.count_path = os.path.join(settings.state_dir, GPU_COUNT_FILE)
        self.expected_gpus = read_gpu_count(self.count_path)

    def compose(self, now: Optional[float] = None) -> Report:
        now = time.time() if now is None else now
        report = self.sampler.sample()

        trouble = None if self.oneshot else self.keep_registry()
        apply_claims(report, self.registry, self.tracker, self.settings.idle_after_s, now)
        if trouble is not None and all(e.error != trouble for e in report.claim_errors):
            report.claim_errors.insert(0, ClaimFileProblem(self.registry.path, trouble))

        report.warnings.extend(health.evaluate(report, self.expected_gpus))
        if report.nvml.available:
            # An NVML outage says nothing about the count; a smaller count is what we warn on.
            count = len(report.gpus)
            if self.expected_gpus is None or count > self.expected_gpus:
                self.expected_gpus = count
                if not self.oneshot:
                    write_gpu_count(self.count_path, count)
        return report

    def keep_registry(self) -> Optional[str]:
        """The daemon's upkeep of the claims registry; what is wrong with it, or None."""
        what = "keeping the claims registry " + self.registry.path
        try:
            repaired = self.registry.upkeep(starting=not self.registry_kept)
            self.registry_kept = True
        except (ClaimError, OSError) as e:
            self.registry_log.failed(what, e)
            return str(e)
        self.registry_log.ok(what)
        if repaired is not None:
            log.warning("%s", repaired)
        started = time.monotonic()
        if started >= self.next_clean:
            self.next_clean = started + CLEAN_TEMPORARY_EVERY_S
            removed = self.registry.clean_temporary()
            if removed:
                log.info("removed %d temporary file(s) of killed claimers", removed)
        return None

    @property
    def hung_nvml_calls(self) -> int:
        """NVML calls abandoned after their deadline that have not returned yet."""
        return self.sampler.hung_nvml_calls

    def close(self) -> None:
        self.sampler.close()


def read_gpu_count(path: str) -> Optional[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        count = int(text)
    except ValueError:
        log.warning("ignoring %s: %r is not a GPU count (it is rewritten)", path, text[:40])
        return None
    return count if count >= 0 else None


def write_gpu_count(path: str, count: int) -> None:
    from gpumon_agent.atomic import write_atomic

    try:
        write_atomic(path, f"{count}\n".encode("ascii"))
    except OSError as e:
        log.warning("could not remember the GPU count in %s: %s", path, e)
