"""deploy/: the central units (serve, push + timer) and the cron line — valid, hardened to the
measured exposure, and the sandbox's MemoryDenyWriteExecute does not break a push over SSH."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
from sheetkit import seed_workbook

from gpumon.cli import build_parser
from gpumon.config import parse
from gpumon.configpath import default_state_dir
from harness.sshd import Fleet, canned_report
from harness.systemd_units import SYSTEMD_ANALYZE, exposure, under_mdwe, unit_settings, verify

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
UNITS = ("gpumon-serve.service", "gpumon-push.service")
CRON = REPO / "deploy" / "cron" / "gpumon-push"
INSTALLED = "/opt/gpumon/bin/gpumon"
# Measured with systemd 252 (Debian 12): 1.1 "OK". Raising it needs a reason in the unit.
MAX_EXPOSURE = 1.1


def settings(name: str) -> dict[str, list[str]]:
    return unit_settings(SYSTEMD / name)


def local_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's gpumon (verify checks it exists)."""
    gpumon = str(Path(sys.executable).with_name("gpumon"))
    copies = []
    for name in (*UNITS, "gpumon-push.timer"):
        copy = tmp_path / name
        copy.write_text((SYSTEMD / name).read_text().replace(INSTALLED, gpumon))
        copies.append(copy)
    return copies


def test_systemd_analyze_is_installed():
    assert SYSTEMD_ANALYZE, "systemd-analyze not found: apt-get install systemd"


def test_units_verify_cleanly(tmp_path):
    done = verify(*local_copies(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


@pytest.mark.parametrize("name", UNITS)
def test_exposure_stays_at_the_measured_level(tmp_path, name):
    measured = exposure(next(p for p in local_copies(tmp_path) if p.name == name))
    assert measured <= MAX_EXPOSURE
    assert f"overall exposure {measured}" in (SYSTEMD / name).read_text()


def test_units_run_gpumon_unprivileged_with_the_commands_it_knows():
    serve, push = settings("gpumon-serve.service"), settings("gpumon-push.service")
    for unit in (serve, push):
        assert unit["User"] == ["gpumon"] and unit["StateDirectory"] == ["gpumon"]
        assert unit["CapabilityBoundingSet"] == [""] and unit["NoNewPrivileges"] == ["yes"]
        assert unit["MemoryDenyWriteExecute"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert serve["ExecStart"] == [f"{INSTALLED} --config /etc/gpumon/gpumon.toml serve"]
    assert push["ExecStart"] == [f"{INSTALLED} --config /etc/gpumon/gpumon.toml push"]
    assert serve["RestartPreventExitStatus"] == ["2"]  # config errors: restarting cannot help
    assert push["Type"] == ["oneshot"] and push["SuccessExitStatus"] == ["5"]  # 5: lock held
    for unit in (serve, push):
        args = shlex.split(unit["ExecStart"][0])[1:]
        build_parser().parse_args(args)  # exits (SystemExit) on an unknown option
    timer = settings("gpumon-push.timer")
    assert timer["OnCalendar"] == ["*-*-* *:*:00"]


def test_cron_line_is_one_push_a_minute_as_gpumon():
    lines = [line for line in CRON.read_text().splitlines() if line and line[0] not in "#"]
    jobs = [line for line in lines if "=" not in line.split()[0]]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 6)
    assert fields[:6] == ["*", "*", "*", "*", "*", "gpumon"]
    command = shlex.split(fields[6])
    assert command[0] == INSTALLED and command[-1] == ">/dev/null"
    build_parser().parse_args(command[1:-1])
    assert command[1:-1] == ["--config", "/etc/gpumon/gpumon.toml", "push"]
    # No StateDirectory= under cron: the line gives gpumon the units' state directory itself.
    env = dict(line.split("=", 1) for line in lines if "=" in line.split()[0])
    assert env["STATE_DIRECTORY"] == "/var/lib/gpumon"
    assert default_state_dir(env) == "/var/lib/gpumon"


# paramiko's crypto, openpyxl and the rest of a push must run under the units' MDWE rule.
UNDER_MDWE = under_mdwe("gpumon.cli")


@pytest.mark.slow
def test_push_over_ssh_works_under_memory_deny_write_execute(tmp_path):
    fleet = Fleet()
    try:
        server = fleet.add("hcpbsp")
        server.report = canned_report("hcpbsp", server.address, gpus=1)
        fleet.start()
        known = tmp_path / "known_hosts"
        known.write_text(fleet.known_hosts_text())
        seed_workbook(tmp_path / "sheet.xlsx")
        config = tmp_path / "gpumon.toml"
        config.write_text(
            f"""
state_dir = "{tmp_path / "state"}"
[poll]
servers_from_sheet = false
user = "{fleet.user.pw_name}"
known_hosts = "{known}"
ssh_config = "{tmp_path / "ssh_config"}"
identity_files = ["{fleet.client_key}"]
[sheet]
path = "sheet.xlsx"
[servers.hcpbsp]
host = "{server.address}"
port = {fleet.port}
"""
        )
        done = subprocess.run(
            [sys.executable, "-c", UNDER_MDWE, "--config", str(config), "push"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
    finally:
        fleet.close()
    assert done.returncode == 0, done.stderr
    assert "1 ON, 0 OFF" in done.stdout
    assert openpyxl.load_workbook(tmp_path / "sheet.xlsx").active["G8"].value == "ON"


def test_setup_guide_config_example_is_valid(monkeypatch):
    serve = settings("gpumon-serve.service")
    # As the units run it: systemd sets STATE_DIRECTORY from StateDirectory=.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/" + serve["StateDirectory"][0])
    guide = (REPO / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", guide, re.S)
    assert len(blocks) == 1
    text = "\n".join(
        line[3:] if line.startswith("   ") else line for line in blocks[0].splitlines()
    )
    config = parse(text, "README.md")
    assert config.sheet.backend == "google" and config.poll.user == "gpumon-poll"
    assert config.servers["grubsp"].port == 2222
    assert config.state_dir == serve["WorkingDirectory"][0]  # the units' state directory
