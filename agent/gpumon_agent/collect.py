"""The one place that composes a full Report: the sampler's GPUs and host, the live claims laid
over them, and the health warnings. Used by the daemon (every interval) and by `report` when it
has to sample once itself.

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
from gpumon_agent.claims import ClaimRegistry, IdleTracker, apply_claims
from gpumon_agent.report import Report
from gpumon_agent.sampler import Sampler
from gpumon_agent.settings import AgentSettings

log = logging.getLogger("gpumon_agent")

GPU_COUNT_FILE = "gpu-count"


class Collector:
    """Keeps what must outlive one sample: the sampler's window, the idle tracker, the GPU count.

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
        self.registry = ClaimRegistry(settings.claims_path)
        self.tracker = IdleTracker.from_report(previous)
        self.count_path = os.path.join(settings.state_dir, GPU_COUNT_FILE)
        self.expected_gpus = read_gpu_count(self.count_path)

    def collect(self, now: Optional[float] = None) -> Report:
        now = time.time() if now is None else now
        report = self.sampler.sample()

        apply_claims(report, self.registry, self.tracker, self.settings.idle_after_s, now)

        report.warnings.extend(health.evaluate(report, self.expected_gpus))
        if report.nvml.available:
            # An NVML outage says nothing about the count; a smaller count is what we warn on.
            count = len(report.gpus)
            if self.expected_gpus is None or count > self.expected_gpus:
                self.expected_gpus = count
                if not self.oneshot:
                    write_gpu_count(self.count_path, count)
        return report

    @property
    def hung_nvml_calls(self) -> int:
        """NVML calls abandoned after their deadline that have not returned yet."""
        return self.sampler.hung_nvml_calls

    def close(self) -> None:
        self.sampler.close()


def read_gpu_count(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
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
