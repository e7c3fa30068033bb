"""A wall-clock step (NTP, an admin's `date -s`, a VM resumed) must not make the agent delete
live claims: a claim is live while its process runs, told apart from a later process with the
same pid by the boot-relative start time (/proc/PID/stat field 22), which no clock step moves.

The real clock cannot be stepped in a test; what is shown instead: a claim whose recorded
wall-clock start is a day off (what a step of a day does to psutil's create_time() of the same
process) stays live when its boot-relative start matches, a claim off by one tick is stale
whatever its wall-clock start says, and psutil's clock is not consulted at all."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
from agent_proc import wait_for

from gpumon_agent import pidstat
from gpumon_agent.claims import ClaimRegistry, check_owner_process, new_record
from gpumon_agent.report import Gpu

GPUS = [Gpu(index=0, uuid="GPU-0")]


def field_22(pid: int) -> int:
    """starttime, read here independently of the agent's parser."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


@pytest.fixture
def process(tmp_path):
    # A command name (field 2) with spaces and ") " — what trips naive /proc/PID/stat parsers.
    odd = tmp_path / "x ) 1 2 3"
    odd.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(odd), "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_wall_clock_step_does_not_make_the_agent_delete_a_live_claim(
    tmp_path, process, monkeypatch
):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    record = new_record("long training", "python train.py", GPUS, pid=process.pid)
    assert record.pid_start_ticks == field_22(process.pid)
    record.pid_started -= 86_400  # the clock was a day behind when the claim was written
    reg.create(record)

    # psutil's wall-clock view of the process must play no part.
    def no_psutil(*args: object) -> None:
        raise AssertionError("psutil consulted for liveness")

    monkeypatch.setattr(psutil, "Process", no_psutil)
    live, errors = reg.live_claims()
    assert [c.job for c in live] == ["long training"] and errors == []
    assert os.path.exists(record.path)


def test_a_claim_one_tick_off_is_a_reused_pid_whatever_its_wall_clock_says(tmp_path, process):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    record = new_record("an earlier process", "cmd", GPUS, pid=process.pid)
    record.pid_start_ticks -= 1  # started one tick earlier: a different process
    record.pid_started = pidstat.wall_start(field_22(process.pid))  # wall clock agrees exactly
    reg.create(record)
    assert check_owner_process(record) == "stale"
    assert reg.live_claims() == ([], [])
    assert not os.path.exists(record.path)  # stale: removed


def test_the_agent_reads_field_22_past_a_command_name_with_spaces_and_parentheses(process):
    comm = Path(f"/proc/{process.pid}/comm")
    wait_for("the exec", lambda: comm.read_text().strip() == "x ) 1 2 3")
    proc = pidstat.proc_stat(process.pid)
    assert proc is not None and proc.visible
    assert proc.start_ticks == field_22(process.pid)
    assert proc.state in ("S", "R") and proc.uids[:2] == (os.getuid(), os.geteuid())
    process.kill()
    process.wait()
    assert pidstat.proc_stat(process.pid) is None
