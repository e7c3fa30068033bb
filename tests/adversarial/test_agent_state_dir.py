"""The agent's state dir: a root-run agent in a directory another user can write would follow
what they plant there — a symlink at agent.lock made the old daemon truncate its target. Such a
state dir is refused with the fix, and every file in it is opened O_NOFOLLOW (a symlink is
refused, never followed; a FIFO does not hang the open)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from agent_proc import AGENT, agent_env

from gpumon_agent.compose import read_gpu_count
from gpumon_agent.filelock import FileLock, LockFileError
from gpumon_agent.settings import AgentSettings
from gpumon_agent.snapshot import read_snapshot
from harness.timing import SLACK_S

PLANT = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"


@pytest.mark.parametrize("how", ["world-writable", "owned by the user", "a symlink"])
def test_a_root_agent_refuses_a_state_dir_another_user_controls(deployment, lab_users, how):
    alice = lab_users["alice"]
    victim = deployment.top / "precious"
    victim.write_text("root's data\n")
    sticky = deployment.top / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp
    state = sticky / "gpumon"
    if how == "a symlink":  # alice makes GPUMON_STATE_DIR point where she wants
        mine = sticky / "alice-dir"
        done = deployment.run_as(
            alice,
            [sys.executable, "-c", f"import os; os.mkdir({str(mine)!r}, 0o755)"],
        )
        assert done.returncode == 0, done.stderr
        target = mine
        done = deployment.run_as(alice, [sys.executable, "-c", PLANT, str(mine), str(state)])
        assert done.returncode == 0, done.stderr
    else:
        state.mkdir()
        if how == "world-writable":
            os.chmod(state, 0o777)
        else:
            os.chown(state, alice.uid, alice.gid)
        target = state
    link = target / "agent.lock"
    done = deployment.run_as(alice, [sys.executable, "-c", PLANT, str(victim), str(link)])
    assert done.returncode == 0, done.stderr

    env = agent_env(deployment.fake.env(log=False), state)
    ran = subprocess.run(
        [str(AGENT), "run", "--interval", "0.2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1, ran.stderr
    assert f"refusing the state dir {state}" in ran.stderr
    assert "Fix:" in ran.stderr and "GPUMON_STATE_DIR" in ran.stderr
    assert victim.read_text() == "root's data\n"  # never opened, never truncated
    assert sorted(os.listdir(target)) == ["agent.lock"]  # nothing written there either


def test_a_symlink_planted_at_a_lock_file_is_refused_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "agent.lock").symlink_to(victim)
    with pytest.raises(LockFileError, match="a symlink"):
        FileLock(str(tmp_path / "agent.lock"), record_pid=True).acquire()
    assert victim.read_text() == "keep me\n"


def test_planted_snapshot_and_gpu_count_files_are_not_followed_nor_hang(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text('{"schema": "gpumon.report"}\n')
    (state / "report.json").symlink_to(outside)
    secret = tmp_path / "secret"
    secret.write_text("4\n")
    (state / "gpu-count").symlink_to(secret)
    settings = AgentSettings(state_dir=str(state))
    data, fresh, why = read_snapshot(settings)
    assert data is None and not fresh and "unreadable" in why
    assert read_gpu_count(str(state / "gpu-count")) is None

    (state / "report.json").unlink()
    os.mkfifo(state / "report.json")  # nobody writes it: a blocking open would hang forever
    started = time.monotonic()
    data, fresh, why = read_snapshot(settings)
    assert time.monotonic() - started < 0 + SLACK_S  # no wait at all: the open did not block
    assert data is None and "not a regular file" in why
