"""deploy/systemd/gpumon-agent.service: valid, hardened to the measured exposure, and its
sandbox does not break the agent where that can be checked without systemd running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent_proc import AGENT, Daemon, agent_env

from gpumon_agent.report import Report
from harness.fakenvml import FakeState
from harness.systemd_units import SYSTEMD_ANALYZE, exposure, under_mdwe, unit_settings, verify

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "gpumon-agent.service"
# Measured with systemd 252 (Debian 12): 1.5 "OK". Raising it needs a reason in the unit.
MAX_EXPOSURE = 1.5


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's agent (verify checks it exists)."""
    text = UNIT.read_text().replace("/opt/gpumon-agent/bin/gpumon-agent", str(AGENT))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_systemd_analyze_is_installed():
    # CI installs systemd (scripts/test.sh); the checks below must not silently vanish.
    assert SYSTEMD_ANALYZE, "systemd-analyze not found: apt-get install systemd"


def test_unit_verifies_cleanly(tmp_path):
    done = verify(local_copy(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def test_exposure_score_stays_at_the_measured_level(tmp_path):
    measured = exposure(local_copy(tmp_path))
    assert measured <= MAX_EXPOSURE
    # The figure quoted at the top of the unit is the one measured.
    assert f"overall exposure {measured}" in UNIT.read_text()


def test_unit_runs_the_daemon_unprivileged_with_its_runtime_dir():
    s = unit_settings(UNIT)
    assert s["ExecStart"] == ["/opt/gpumon-agent/bin/gpumon-agent run"]
    assert s["User"] == ["gpumon"] and s["DynamicUser"] == ["yes"]
    assert s["RuntimeDirectory"] == ["gpumon"] and s["RuntimeDirectoryMode"] == ["0755"]
    assert s["RuntimeDirectoryPreserve"] == ["yes"]  # claims survive an agent restart
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    # NVML needs the NVIDIA devices; other users' processes must stay visible (see the unit).
    assert s["DeviceAllow"] == ["char-nvidia* rw"]
    for hides_processes in ("ProtectProc", "ProcSubset", "PrivateUsers", "PrivateDevices"):
        assert hides_processes not in s


UNDER_MDWE = under_mdwe("gpumon_agent.cli")


def test_agent_works_under_memory_deny_write_execute(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)

    oneshot = subprocess.run(
        [sys.executable, "-c", UNDER_MDWE, "report", "--json"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert oneshot.returncode == 0, oneshot.stderr.decode()
    report = Report.from_json(oneshot.stdout)
    assert report.nvml.available and len(report.gpus) == 2

    # The daemon too, with its /metrics thread (prometheus_client, wsgiref).
    argv = [sys.executable, "-c", UNDER_MDWE, "run", "--interval", "0.2"]
    with Daemon(env, state, argv=[*argv, "--metrics", "127.0.0.1:0"]) as daemon:
        daemon.metrics_port()
        assert len(daemon.wait_snapshot().gpus) == 2
        assert daemon.stop() == 0
