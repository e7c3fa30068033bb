"""`[poll] agentless`: a server without the agent is read through nvidia-smi and ps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.poll import result as codes
from gpumon.poll.agentless import build_report
from gpumon.poll.poller import Poller
from gpumon.poll.transport import CommandOutput
from gpumon_agent.report import SOURCE_AGENTLESS
from harness.sshd import PLAIN, Fleet

GPUS_CSV = (
    "0, GPU-5f1e-0, NVIDIA GeForce RTX 2080 Ti, 00000000:01:00.0, 87, 10240, 11264, 71, "
    "215.30, 250.00\n"
    "1, GPU-5f1e-1, NVIDIA GeForce RTX 2080 Ti, 00000000:02:00.0, 0, 1, 11264, 35, "
    "[N/A], 250.00\n"
)
# pid 1 exists (its user and command come from ps); 4194000 is gone by the time ps looks.
APPS_CSV = "GPU-5f1e-0, 1, 10000\nGPU-5f1e-0, 4194000, 200\n"


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    fleet.add("bare", keys=PLAIN, agent_on_path=False, nvidia_smi=True)
    fleet.add("forced-bare", agent_on_path=False, nvidia_smi=True)
    fleet.add("nothing", keys=PLAIN, agent_on_path=False)
    fleet.smi_output(GPUS_CSV, APPS_CSV)
    fleet.start()
    yield fleet
    fleet.close()


def test_a_server_without_the_agent_is_read_through_nvidia_smi(
    fleet: Fleet, tmp_path: Path
) -> None:
    with Poller(fleet.config(tmp_path, agentless=True)) as poller:
        result = poller.sweep(["bare"])[0]
    assert result.on, result.reason
    assert result.degraded
    assert result.reason_code == codes.AGENTLESS
    report = result.report
    assert report.source == SOURCE_AGENTLESS
    assert report.host.primary_ip == fleet.server("bare").address
    assert report.host.hostname  # the sandbox's own name: `hostname` really ran
    assert report.host.load_avg is not None and len(report.host.load_avg) == 3
    first, second = report.gpus
    assert (first.index, first.uuid, first.pci_bus_id) == (0, "GPU-5f1e-0", "00000000:01:00.0")
    assert first.utilization_pct == 87.0
    assert first.memory_used_bytes == 10240 * 2**20
    assert first.memory_total_bytes == 11264 * 2**20
    assert (first.temperature_c, first.power_w, first.power_limit_w) == (71.0, 215.3, 250.0)
    assert second.power_w is None  # "[N/A]"
    init, gone = first.processes
    assert (init.pid, init.user, init.gpu_memory_bytes) == (1, "root", 10000 * 2**20)
    assert init.command not in ("", "?")
    assert (gone.pid, gone.user, gone.command) == (4194000, "?", "?")
    assert second.processes == []


def test_with_agentless_off_the_server_is_off_agent_missing(fleet: Fleet, tmp_path: Path) -> None:
    with Poller(fleet.config(tmp_path, agentless=False)) as poller:
        result = poller.sweep(["bare"])[0]
    assert not result.on
    assert result.reason_code == codes.AGENT_MISSING


def test_a_forced_command_key_cannot_fall_back(fleet: Fleet, tmp_path: Path) -> None:
    with Poller(fleet.config(tmp_path, agentless=True)) as poller:
        result = poller.sweep(["forced-bare"])[0]
    assert not result.on
    assert result.reason_code == codes.AGENT_MISSING
    assert "needs a key without a forced command" in result.reason


def test_no_agent_and_no_nvidia_smi_is_agent_missing(fleet: Fleet, tmp_path: Path) -> None:
    with Poller(fleet.config(tmp_path, agentless=True)) as poller:
        result = poller.sweep(["nothing"])[0]
    assert not result.on
    assert result.reason_code == codes.AGENT_MISSING
    assert "no nvidia-smi" in result.reason


def script_output(apps: str, apps_rc: int = 0) -> CommandOutput:
    """What the agentless script prints (its sections), with the given compute-apps answer."""
    text = (
        "@@hostname\ngeforce\n@@loadavg\n0.1 0.2 0.3 1/2 3\n@@nproc\n8\n"
        f"@@gpus\n{GPUS_CSV}@@rc 0\n@@apps\n{apps}\n@@rc {apps_rc}\n@@ps\n"
    )
    return CommandOutput(exit_status=0, stdout=text.encode(), stderr=b"")


def test_nvidia_smi_failing_to_list_processes_makes_them_unknown_not_none() -> None:
    out = script_output("Failed to initialize NVML: Unknown Error", apps_rc=255)
    report = build_report(out, "192.0.2.9")
    for gpu in report.gpus:
        assert gpu.processes is None
        assert gpu.processes_error == (
            "nvidia-smi --query-compute-apps failed: Failed to initialize NVML: Unknown Error"
        )
        assert gpu.unclaimed_use is None  # agentless reads no claims


def test_not_supported_in_place_of_a_pid_makes_that_gpus_processes_unknown() -> None:
    apps = "GPU-5f1e-0, [Not Supported], [Not Supported]\nGPU-5f1e-1, 1, 300"
    report = build_report(script_output(apps), "192.0.2.9")
    unknown, listed = report.gpus
    assert unknown.processes is None
    assert unknown.processes_error == "nvidia-smi --query-compute-apps: [Not Supported]"
    assert [p.pid for p in listed.processes] == [1] and listed.processes_error is None


def test_no_running_processes_is_an_empty_list() -> None:
    report = build_report(script_output("No running processes found"), "192.0.2.9")
    assert [(g.processes, g.processes_error) for g in report.gpus] == [([], None), ([], None)]
