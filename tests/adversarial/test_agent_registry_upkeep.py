"""The agent keeps its claims registry and state dir working without flooding the journal: a
deleted claims directory comes back, a full disk is logged once when it fills and once when it
has room again, not at every sample."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from agent_proc import wait_for

from gpumon_agent.daemon import DaemonState, tick_once
from gpumon_agent.report import Host, Report, utc_iso
from gpumon_agent.settings import AgentSettings
from gpumon_agent.statelog import StateLog
from harness.users import AGENT


def test_a_deleted_claims_directory_is_recreated_by_the_agent(deployment, lab_users):
    agent, alice = lab_users["agent"], lab_users["alice"]
    daemon = deployment.start_agent()
    claims = deployment.claims
    wait_for("the registry", lambda: (claims / ".lock").exists())
    shutil.rmtree(claims)  # an admin's clean-up, systemd-tmpfiles, a stray rm -rf

    wait_for("the registry made again", lambda: (claims / ".lock").exists(), timeout=20)
    st, lock = os.lstat(claims), os.lstat(claims / ".lock")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (agent.uid, 0o1777)
    assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (agent.uid, 0o644)
    done = deployment.run_as(alice, [str(AGENT), "claim", "--", "true"])
    assert done.returncode == 0, done.stderr
    assert deployment.agent_log().count("was missing: recreated it") == 1
    assert daemon.poll() is None


@contextlib.contextmanager
def small_tmpfs(path: Path, uid: int, gid: int) -> Iterator[bool]:
    """A 256 KiB tmpfs at ``path`` owned by uid:gid, 0755 (what systemd's RuntimeDirectory
    looks like on /run); yields False where mounting is not allowed (no CAP_SYS_ADMIN)."""
    options = f"size=256k,mode=0755,uid={uid},gid={gid}"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its file system is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def log_lines(log: str) -> list[str]:
    """The log's lines without the time stamp (the agent adds one outside journald)."""
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line) for line in log.splitlines()]


def error_lines(log: str, what: str) -> list[str]:
    return [line for line in log_lines(log) if line.startswith("ERROR ") and what in line]


def test_a_full_disk_is_logged_once_per_state_change_not_every_sample(deployment, lab_users):
    agent = lab_users["agent"]
    with small_tmpfs(deployment.state, agent.uid, agent.gid) as mounted:
        if not mounted:  # the real part cannot be had here: force ENOSPC where it would come
            forced_enospc_is_logged_once()
            return
        snapshot = deployment.state / "report.json"
        daemon = deployment.start_agent()
        wait_for("a snapshot on the small tmpfs", snapshot.exists)
        filler = fill(deployment.state)
        full_since = snapshot.stat().st_mtime
        wait_for(
            "the failure in the log",
            lambda: error_lines(deployment.agent_log(), "No space left on device"),
            timeout=20,
        )
        time.sleep(3)  # ~15 more samples at 0.2 s, each failing to write
        assert snapshot.stat().st_mtime == full_since  # it really could not write
        filler.unlink()
        wait_for("a fresh snapshot", lambda: snapshot.stat().st_mtime > full_since, timeout=20)
        log = deployment.agent_log()
        assert daemon.poll() is None
        # Not one temporary file of the failed writes is left behind.
        assert sorted(os.listdir(deployment.state)) == [
            "agent.lock",
            "claims",
            "gpu-count",
            "report.json",
        ]
    failures = error_lines(log, f"writing {snapshot} failed")
    assert failures == [
        f"ERROR writing {snapshot} failed: OSError: No space left on device (errno 28)"
    ]
    recovered = [line for line in log_lines(log) if "works again" in line]
    assert len(recovered) == 1 and recovered[0].startswith(f"INFO writing {snapshot} works again")
    assert int(recovered[0].split("after ")[1].split()[0]) >= 10


class OneHost:
    def compose(self) -> Report:
        return Report(generated_at=utc_iso(), host=Host(hostname="h"))


def forced_enospc_is_logged_once() -> None:
    """Without a mountable tmpfs: the snapshot write fails as a full disk makes it fail, with a
    different temporary name at every try (that is what made every repeat look new)."""
    with tempfile.TemporaryDirectory() as top:
        settings = AgentSettings(state_dir=top)
        state, failure = DaemonState(), StateLog()
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("gpumon_agent")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            for attempt in range(10):
                full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{top}/.tmp{attempt}")
                with mock.patch("gpumon_agent.snapshot.write_snapshot", side_effect=full):
                    tick_once(settings, OneHost(), state, failure)
            tick_once(settings, OneHost(), state, failure)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    messages = [r.getMessage() for r in records]
    assert messages == [
        f"writing {top}/report.json failed: OSError: No space left on device (errno 28)",
        f"writing {top}/report.json works again after 10 failure(s)",
    ]


def test_a_lock_file_a_user_owns_is_replaced_by_the_agent(deployment, lab_users):
    # A user whose claim made the lock (the registry had none) could chmod it 0 and lock every
    # other claimer out. The agent replaces such a lock with its own at the next sample.
    agent, alice, bob = lab_users["agent"], lab_users["alice"], lab_users["bob"]
    deployment.start_agent()
    lock = deployment.claims / ".lock"
    wait_for("the registry", lock.exists)
    planted = deployment.claims / ".alice-lock"
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)
    os.fchown(fd, alice.uid, alice.gid)
    os.close(fd)
    os.rename(planted, lock)  # in one step: the agent never sees the registry without a lock

    def agents_again() -> bool:
        st = os.lstat(lock)
        return (st.st_uid, stat.S_IMODE(st.st_mode)) == (agent.uid, 0o644)

    wait_for("the agent's lock back", agents_again, timeout=20)
    done = deployment.run_as(bob, [str(AGENT), "claim", "--", "true"])
    assert done.returncode == 0, done.stderr
    replaced = [line for line in log_lines(deployment.agent_log()) if "lock file" in line]
    assert replaced == [
        f"WARNING the claims registry {deployment.claims}: lock file owned by gpumon-t-alice"
        " → replaced"
    ]
