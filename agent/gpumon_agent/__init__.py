"""gpumon agent: per-GPU status from NVML, GPU claims from training jobs, and the Report.

Kept import-light on purpose: `gpumon-agent report --json` must answer in tens of
milliseconds, so nothing here imports pynvml or psutil.
"""

__version__ = "0.1.0"
