"""Health warnings: a pure function over a Report, so the daemon, `report` and tests agree.

Each warning has a stable ``code`` (``HEALTH_CODES`` lists them, for docs and for the sheet) and
a short human ``message``. A value the agent could not read (``None``) never warns by itself;
NVML failures warn through their own codes.
"""

from __future__ import annotations

from typing import List, Optional

from gpumon_agent.report import GPU_ERROR, GPU_LOST, Gpu, HealthWarning, Report

# Thresholds. Load uses the 5-minute average: overload that lasts, not a one-minute burst.
MEMORY_PERCENT_MAX = 90.0
SWAP_PERCENT_MAX = 50.0
DISK_ROOT_PERCENT_MAX = 95.0
GPU_MEMORY_PERCENT_MAX = 95.0
GPU_TEMPERATURE_MAX_C = 85.0
THERMAL_THROTTLE_REASONS = ("sw_thermal", "hw_thermal")

HEALTH_CODES = {
    "load_high": "5-minute load average above the number of CPUs",
    "memory_high": f"memory more than {MEMORY_PERCENT_MAX:g} % used",
    "swap_high": f"swap more than {SWAP_PERCENT_MAX:g} % used",
    "disk_root_full": f"root file system more than {DISK_ROOT_PERCENT_MAX:g} % full",
    "gpu_count_dropped": "fewer GPUs than this host had before",
    "nvml_unavailable": "NVML cannot be used (no driver, driver/library mismatch, hang, ...)",
    "gpu_lost": "a GPU fell off the bus",
    "gpu_error": "NVML calls on a GPU failed",
    "gpu_processes_unknown": "NVML cannot list a GPU's processes (all or some): its use is unknown",
    "gpu_memory_high": f"a GPU's memory more than {GPU_MEMORY_PERCENT_MAX:g} % used",
    "gpu_temperature_high": f"a GPU at {GPU_TEMPERATURE_MAX_C:g} °C or hotter",
    "gpu_thermal_throttle": "a GPU slowed down because it is too hot",
}


def evaluate(report: Report, previous_gpu_count: Optional[int]) -> List[HealthWarning]:
    """The warnings `report` calls for; `previous_gpu_count`: GPUs the host had (None: unknown)."""
    warnings: List[HealthWarning] = []

    def warn(code: str, message: str, gpu_index: Optional[int] = None) -> None:
        warnings.append(HealthWarning(code=code, message=message, gpu_index=gpu_index))

    host = report.host
    if host.load_avg and len(host.load_avg) >= 2 and host.cpu_count:
        load = host.load_avg[1]
        if load > host.cpu_count:
            warn("load_high", f"load {load:.1f} (5 min) above {host.cpu_count} CPUs")
    if _above(host.memory_percent, MEMORY_PERCENT_MAX):
        warn("memory_high", f"memory {host.memory_percent:.0f}% used")
    if host.swap_total_bytes and _above(host.swap_percent, SWAP_PERCENT_MAX):
        warn("swap_high", f"swap {host.swap_percent:.0f}% used")
    if _above(host.disk_root_percent, DISK_ROOT_PERCENT_MAX):
        warn("disk_root_full", f"disk / {host.disk_root_percent:.0f}% full")

    nvml = report.nvml
    if not nvml.available:
        warn("nvml_unavailable", f"NVML unavailable: {nvml.error or nvml.error_code}")
    elif previous_gpu_count is not None and len(report.gpus) < previous_gpu_count:
        warn(
            "gpu_count_dropped",
            f"{len(report.gpus)} GPUs, had {previous_gpu_count}",
        )

    for gpu in report.gpus:
        i = gpu.index
        if gpu.state == GPU_LOST:
            warn("gpu_lost", f"GPU {i} lost (fell off the bus)", i)
            continue
        if gpu.state == GPU_ERROR:
            warn("gpu_error", "GPU {}: {}".format(i, gpu.error or "NVML error"), i)
        unknown = processes_unknown(gpu)
        if unknown and not in_gpu_error(gpu):
            warn("gpu_processes_unknown", unknown, i)
        if gpu.memory_used_bytes is not None and gpu.memory_total_bytes:
            percent = 100.0 * gpu.memory_used_bytes / gpu.memory_total_bytes
            if percent > GPU_MEMORY_PERCENT_MAX:
                warn("gpu_memory_high", f"GPU {i} memory {percent:.0f}% used", i)
        if gpu.temperature_c is not None and gpu.temperature_c >= GPU_TEMPERATURE_MAX_C:
            warn("gpu_temperature_high", f"GPU {i} at {gpu.temperature_c:.0f} °C", i)
        hot = [r for r in gpu.throttle_reasons or [] if r in THERMAL_THROTTLE_REASONS]
        if hot:
            warn(
                "gpu_thermal_throttle",
                "GPU {} throttled for heat ({})".format(i, ", ".join(hot)),
                i,
            )
    return warnings


def processes_unknown(gpu: Gpu) -> Optional[str]:
    """Why a GPU's processes are unknown (all or some of them), in words; None when listed."""
    if gpu.processes is not None and not gpu.processes_error:
        return None
    partly = "" if gpu.processes is None else "partly "
    return f"GPU {gpu.index} processes {partly}unknown: {gpu.processes_error or 'not reported'}"


def in_gpu_error(gpu: Gpu) -> bool:
    """Whether the failed process query is already told by the GPU's error (gpu_error)."""
    return (
        gpu.state == GPU_ERROR
        and bool(gpu.processes_error)
        and gpu.processes_error in (gpu.error or "")
    )


def _above(value: Optional[float], limit: float) -> bool:
    return value is not None and value > limit
