"""judge_use: free, in use, or unknown use — unknown is never free, and memory or utilization
in use overrules an empty or unknown process list."""

from __future__ import annotations

import pytest

from gpumon_agent.report import GPU_ERROR, GPU_LOST, ClaimInfo, Gpu, GpuProcess
from gpumon_agent.usage import (
    BUSY_MEMORY_BYTES,
    BUSY_UTILIZATION_PCT,
    USE_BUSY,
    USE_FREE,
    USE_UNKNOWN,
    judge_use,
)

GiB = 1 << 30
NOT_SUPPORTED = "nvmlDeviceGetComputeRunningProcesses_v3: Not Supported"


def idle(**changes: object) -> Gpu:
    gpu = Gpu(
        index=0,
        uuid="GPU-0",
        utilization_pct=0.0,
        utilization_mean_pct=0.0,
        memory_used_bytes=3 << 20,
        memory_total_bytes=24 * GiB,
        processes=[],
    )
    for name, value in changes.items():
        setattr(gpu, name, value)
    return gpu


def test_listed_none_and_low_use_is_free():
    assert judge_use(idle()).state == USE_FREE
    assert judge_use(idle()).free
    # A board that does not report memory or utilization at all: the process list decides.
    assert judge_use(idle(memory_used_bytes=None, utilization_pct=None)).free


def test_unknown_processes_are_unknown_use_never_free_and_say_why():
    use = judge_use(idle(processes=None, processes_error=NOT_SUPPORTED))
    assert use.state == USE_UNKNOWN
    assert not use.free
    assert use.reason == f"processes unknown: {NOT_SUPPORTED}"
    assert judge_use(idle(processes=None)).reason == "processes unknown: not read"


@pytest.mark.parametrize("processes", [None, []], ids=["unknown", "listed-none"])
def test_memory_in_use_is_in_use_whatever_the_process_list_says(processes):
    use = judge_use(idle(processes=processes, memory_used_bytes=20 * GiB))
    assert use.state == USE_BUSY
    assert use.reason.startswith("20.0 GiB used; ")
    assert use.reason.endswith("processes unknown" if processes is None else "no process listed")


@pytest.mark.parametrize("field", ["utilization_pct", "utilization_mean_pct"])
def test_a_busy_gpu_is_in_use_even_with_no_process_listed(field):
    use = judge_use(idle(**{field: 97.0}))
    assert use.state == USE_BUSY
    assert "97% busy" in use.reason


def test_just_below_the_thresholds_is_still_free():
    gpu = idle(memory_used_bytes=BUSY_MEMORY_BYTES - 1, utilization_pct=BUSY_UTILIZATION_PCT - 1)
    assert judge_use(gpu).free
    assert not judge_use(idle(memory_used_bytes=BUSY_MEMORY_BYTES)).free


def test_processes_or_claims_make_it_in_use():
    procs = [GpuProcess(pid=1, user="lww"), GpuProcess(pid=2, user="niv")]
    assert judge_use(idle(processes=procs)).reason == "2 processes: lww, niv"
    # Some listed while another query failed: those at least run.
    assert judge_use(idle(processes=procs[:1], processes_error="graphics: x")).state == USE_BUSY
    claim = ClaimInfo(job="kws", user="lww", pid=1, started_at="2024-01-01T00:00:00Z")
    assert judge_use(idle(claims=[claim])).reason == "claimed by lww (kws)"


def test_lost_or_failing_gpus_are_unknown_use():
    assert judge_use(idle(state=GPU_LOST, processes=None)).state == USE_UNKNOWN
    failing = judge_use(idle(state=GPU_ERROR, error="nvmlDeviceGetTemperature: Unknown Error"))
    assert failing.state == USE_UNKNOWN
    assert "Unknown Error" in failing.reason
