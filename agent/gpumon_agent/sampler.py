"""The Sampler: the measurements — one call gives a Report of this host and its GPUs (NVML,
psutil), with utilization means over ``settings.window_s``. It composes nothing else: claims and
health warnings are laid on by gpumon_agent.compose's ReportComposer.

``sample()`` never raises: NVML trouble is in ``Report.nvml`` and the GPUs' state, an unreadable
host value is ``None``, and an unexpected bug leaves a note and a minimal report.

The mean is the plain average of the instant utilizations sampled within the window, the current
one included (the daemon samples at a steady interval, so no time weighting is needed). The
history is a bounded deque per GPU, keyed by UUID so a renumbered GPU keeps its own history.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Callable, Deque, Dict, List, Tuple

from gpumon_agent import __version__
from gpumon_agent.host import HostReader, local_timezone
from gpumon_agent.nvml import NvmlReader
from gpumon_agent.procs import name_processes
from gpumon_agent.report import GPU_LOST, SOURCE_DAEMON, Gpu, Host, Nvml, Report, utc_iso
from gpumon_agent.settings import AgentSettings

# However small the interval, a GPU's history never holds more samples than this.
MAX_HISTORY = 10_000


class Sampler:
    """``clock``: the monotonic clock the utilization windows are measured on."""

    def __init__(
        self,
        settings: AgentSettings,
        call_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._nvml = NvmlReader(call_timeout_s=call_timeout_s)
        self._host = HostReader()
        self._history: Dict[str, Deque[Tuple[float, float]]] = {}
        self._history_len = min(MAX_HISTORY, math.ceil(settings.window_s / settings.interval_s) + 2)
        self._lock = threading.Lock()  # sample() from two threads must not interleave NVML reads

    @property
    def hung_nvml_calls(self) -> int:
        """NVML calls abandoned after their deadline that have not returned yet."""
        return self._nvml.hung_calls

    def sample(self) -> Report:
        with self._lock:
            try:
                return self._sample()
            except Exception as e:  # a bug must cost one report's detail, not the daemon
                return Report(
                    generated_at=utc_iso(),
                    host=Host(hostname="?"),
                    agent_version=__version__,
                    interval_s=self.settings.interval_s,
                    window_s=self.settings.window_s,
                    nvml=Nvml(available=False, error="sampling failed", error_code="nvml_error"),
                    notes=[f"sampling failed: {e!r}"[:300]],
                )

    def close(self) -> None:
        with self._lock:
            self._nvml.close()

    def _sample(self) -> Report:
        nvml_sample = self._nvml.read()
        now = self._clock()
        host = self._host.read()
        zone, offset = local_timezone()
        name_processes(nvml_sample.gpus)
        self._fill_means(nvml_sample.gpus, now)
        notes = [f"host: could not read the {problem}" for problem in self._host.problems]
        return Report(
            notes=notes,
            generated_at=utc_iso(),
            host=host,
            source=SOURCE_DAEMON,
            agent_version=__version__,
            timezone=zone,
            utc_offset_s=offset,
            interval_s=self.settings.interval_s,
            window_s=self.settings.window_s,
            nvml=nvml_sample.nvml,
            gpus=nvml_sample.gpus,
        )

    def _fill_means(self, gpus: List[Gpu], now: float) -> None:
        oldest = now - self.settings.window_s
        current = set()
        for gpu in gpus:
            key = gpu.key
            current.add(key)
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = collections.deque(maxlen=self._history_len)
            if gpu.utilization_pct is not None:
                history.append((now, gpu.utilization_pct))
            while history and history[0][0] < oldest:
                history.popleft()
            if history and gpu.state != GPU_LOST:
                gpu.utilization_mean_pct = round(sum(u for _, u in history) / len(history), 1)
        for key in list(self._history):
            if key not in current:  # a GPU that left takes its history with it
                del self._history[key]
