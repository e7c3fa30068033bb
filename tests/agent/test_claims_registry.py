"""The claims registry: claim files are published atomically, read back checked, forgotten when
their process dies, and anything odd that users drop in the shared directory is reported, never
fatal. No NVML here: the GPUs are given as Report records."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gpumon_agent.claims import (
    MAX_CLAIM_BYTES,
    MAX_CLAIM_ERRORS,
    MAX_CLAIM_FILES,
    ClaimError,
    ClaimRegistry,
    LockTimeout,
    RegistryError,
    new_record,
)
from gpumon_agent.cli import claims_command
from gpumon_agent.report import Gpu
from gpumon_agent.settings import AgentSettings
from harness.timing import SLACK_S

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

GPUS = [Gpu(index=i, uuid=f"GPU-{i}") for i in range(4)]


@pytest.fixture
def registry(tmp_path: Path) -> ClaimRegistry:
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    return reg


@pytest.fixture
def shared_registry():
    """A registry every user can reach (tmp_path is private to root): under /tmp, mode 1777."""
    top = tempfile.mkdtemp(prefix="gpumon-claims-test-", dir="/tmp")
    os.chmod(top, 0o755)
    reg = ClaimRegistry(os.path.join(top, "claims"))
    reg.ensure()
    yield reg
    shutil.rmtree(top)


@pytest.fixture
def sleeper():
    """A live process of ours to hang claims on (one per call), killed at the end."""
    procs = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "60"])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def write_raw(reg: ClaimRegistry, name: str, data: bytes, uid: int | None = None) -> str:
    path = os.path.join(reg.path, name)
    with open(path, "wb") as f:
        f.write(data)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def valid_dict(pid: int, uid: int = 0) -> dict:
    """A well-formed claim by ``pid`` (alive, so it is not stale) in the name of ``uid``."""
    record = new_record("job", "cmd", GPUS[:1], pid=pid)
    data = record.to_dict()
    data["uid"] = uid
    return data


def as_user(uid: int, action) -> dict:
    """Run ``action()`` in a forked child that switched to ``uid``; its JSON result, or the
    exception it raised as {"error": class name, "message": text}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                out = {"result": action()}
            except BaseException as e:
                out = {"error": type(e).__name__, "message": str(e)}
            os.write(write_end, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


# --- the directory -----------------------------------------------------------------------------


def test_missing_registry_is_created_sticky_and_world_writable_with_its_lock(tmp_path):
    reg = ClaimRegistry(str(tmp_path / "run" / "gpumon" / "claims"))
    reg.ensure()
    mode = os.lstat(reg.path).st_mode
    assert stat.S_IMODE(mode) == 0o1777
    assert stat.S_ISREG(os.lstat(reg.lock_path).st_mode)


def test_unreachable_registry_says_to_start_the_agent_or_set_the_variable(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(RegistryError) as err:
        ClaimRegistry(str(tmp_path / "afile" / "claims")).ensure()
    assert "Not a directory" in str(err.value)
    assert "GPUMON_CLAIMS_DIR" in str(err.value) and "gpumon-agent" in str(err.value)
    with pytest.raises(RegistryError, match="does not exist"):
        ClaimRegistry(str(tmp_path / "nope")).ensure(create=False)


@root_only
def test_user_who_cannot_create_the_registry_is_told_what_to_do(shared_registry):
    # Like /run/gpumon/claims before the agent ran: the parent is root's, 0755.
    missing = os.path.join(os.path.dirname(shared_registry.path), "run", "claims")
    out = as_user(NOBODY, lambda: ClaimRegistry(missing).ensure())
    assert out["error"] == "RegistryError"
    assert "does not exist and cannot be created (Permission denied)" in out["message"]
    assert "systemctl start gpumon-agent" in out["message"]
    assert "GPUMON_CLAIMS_DIR" in out["message"]


def test_registry_refuses_a_symlink_and_a_shared_dir_without_sticky_bit(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(RegistryError, match="symlink"):
        ClaimRegistry(str(tmp_path / "link")).ensure()
    os.chmod(real, 0o777)
    with pytest.raises(RegistryError, match="chmod 1777"):
        ClaimRegistry(str(real)).ensure()


def test_missing_registry_reads_as_no_claims(tmp_path):
    assert ClaimRegistry(str(tmp_path / "none")).live_claims() == ([], [])


# --- claims round trip, staleness ------------------------------------------------------------


def test_claim_is_published_read_back_and_released(registry):
    record = new_record("kws ch32", "python train.py", GPUS[1:3])
    registry.create(record)
    name = os.path.basename(record.path)
    assert name.startswith(f"u{os.geteuid()}-p{os.getpid()}-") and name.endswith(".json")
    assert stat.S_IMODE(os.stat(record.path).st_mode) == 0o644
    live, errors = registry.live_claims()
    assert errors == []
    assert [(c.job, c.pid, [g.index for g in c.gpus]) for c in live] == [
        ("kws ch32", os.getpid(), [1, 2])
    ]
    record.progress = {"epoch": 2}
    registry.rewrite(record)
    assert registry.live_claims()[0][0].progress == {"epoch": 2}
    registry.release(record)
    assert registry.live_claims() == ([], [])
    registry.release(record)  # twice is fine
    assert [n for n in os.listdir(registry.path) if n != ".lock"] == []


def test_claim_of_a_dead_process_is_ignored_and_removed(registry, sleeper):
    proc = sleeper()
    record = new_record("doomed", "sleep", GPUS[:1], pid=proc.pid)
    registry.create(record)
    assert len(registry.live_claims()[0]) == 1
    proc.kill()
    proc.wait()
    assert registry.live_claims() == ([], [])
    assert not os.path.exists(record.path)


def test_claim_of_an_unreaped_zombie_is_stale(registry, sleeper):
    proc = sleeper()
    registry.create(new_record("zombie", "sleep", GPUS[:1], pid=proc.pid))
    proc.kill()
    time.sleep(0.1)  # killed, not yet waited for: a zombie
    assert registry.live_claims() == ([], [])


def test_a_reused_pid_does_not_revive_a_claim(registry):
    record = new_record("old", "cmd", GPUS[:1])
    # The pid belonged to an earlier process: one clock tick apart is apart (exact compare).
    record.pid_start_ticks -= 1
    registry.create(record)
    assert registry.live_claims() == ([], [])
    assert not os.path.exists(record.path)


def test_leftover_temporary_file_of_a_dead_writer_is_cleaned(registry):
    writer = subprocess.Popen(["true"])
    writer.wait()  # the writer died between writing its temporary file and renaming it
    claim = f"u{os.geteuid()}-p{writer.pid}-abcdef12.json"
    name = f".{claim}.gpumon-tmp-{writer.pid}-0011aabb"
    live_name = f".{claim}.gpumon-tmp-{os.getpid()}-0011aabb"
    write_raw(registry, name, b"{")
    write_raw(registry, live_name, b"{")  # a live writer's is left alone
    assert registry.live_claims() == ([], [])  # the scan skips them, unread
    assert registry.clean_temporary() == 1  # the agent's clean-up, once a minute
    assert not os.path.exists(os.path.join(registry.path, name))
    assert os.path.exists(os.path.join(registry.path, live_name))


# --- hostile and malformed files ---------------------------------------------------------------


def test_bad_claim_files_are_each_reported_and_good_ones_still_count(registry, sleeper, tmp_path):
    good = new_record("good", "cmd", GPUS[:1])
    registry.create(good)
    me, pid = os.geteuid(), os.getpid()
    name = lambda tag: f"u{me}-p{pid}-{tag}.json"  # noqa: E731
    write_raw(registry, name("a1a1a1"), b"{not json")
    write_raw(registry, name("b2b2b2"), b" " * (MAX_CLAIM_BYTES + 1))
    no_gpus = {"schema": "gpumon.claim", "version": 1}
    write_raw(registry, name("c3c3c3"), json.dumps(no_gpus).encode())
    wrong_type = valid_dict(pid, me)
    wrong_type["gpus"] = [{"index": "zero", "uuid": None}]
    write_raw(registry, name("d4d4d4"), json.dumps(wrong_type).encode())
    os.symlink("/etc/shadow", os.path.join(registry.path, name("e5e5e5")))
    os.mkfifo(os.path.join(registry.path, name("f6f6f6")))
    os.mkdir(os.path.join(registry.path, name("a7a7a7")))
    write_raw(registry, "notes.txt", b"hello")
    wrong_pid = valid_dict(pid, me)
    wrong_pid["pid"] = pid + 1
    write_raw(registry, name("b8b8b8"), json.dumps(wrong_pid).encode())
    big_progress = valid_dict(pid, me)
    big_progress["progress"] = {"log": "x" * 5000}
    write_raw(registry, name("c9c9c9"), json.dumps(big_progress).encode())

    started = time.monotonic()
    live, errors = registry.live_claims()
    assert time.monotonic() - started < 0 + SLACK_S  # no wait at all: the FIFO did not block
    assert [c.job for c in live] == ["good"]
    reasons = {os.path.basename(e.path).split("-")[-1]: e.error for e in errors}
    assert "not JSON" in reasons["a1a1a1.json"]
    assert "byte limit" in reasons["b2b2b2.json"]
    assert "field 'gpus': missing" in reasons["c3c3c3.json"]
    assert "'gpus[0].index': expected int, got str" in reasons["d4d4d4.json"]
    assert "symlink" in reasons["e5e5e5.json"]
    assert "FIFO" in reasons["f6f6f6.json"]
    assert "directory" in reasons["a7a7a7.json"]
    assert "not a claim file name" in reasons["notes.txt"]
    assert "named for pid" in reasons["b8b8b8.json"]
    assert "'progress': larger than" in reasons["c9c9c9.json"]
    assert len(errors) == 10
    # Reported, not removed: nothing a user wrote is lost.
    assert os.path.exists(os.path.join(registry.path, "notes.txt"))


@root_only
def test_a_file_claiming_someone_elses_uid_is_refused(registry, sleeper):
    proc = sleeper()  # runs as root (uid 0)
    # Named and filled for root, but written by nobody.
    as_root = json.dumps(valid_dict(proc.pid, 0)).encode()
    forged = write_raw(registry, f"u0-p{proc.pid}-aaaaaa.json", as_root, NOBODY)
    # Named for nobody and owned by nobody, but says uid 0 inside.
    inner = write_raw(
        registry,
        f"u{NOBODY}-p{proc.pid}-bbbbbb.json",
        json.dumps(valid_dict(proc.pid, 0)).encode(),
        NOBODY,
    )
    # Honest about being nobody, but hangs on root's process to live forever.
    hijack = write_raw(
        registry,
        f"u{NOBODY}-p{proc.pid}-cccccc.json",
        json.dumps(valid_dict(proc.pid, NOBODY)).encode(),
        NOBODY,
    )
    live, errors = registry.live_claims()
    assert live == []
    by_path = {e.path: e.error for e in errors}
    assert "owned by uid 65534 but named for uid 0" in by_path[forged]
    assert "records uid 0 but is named for uid 65534" in by_path[inner]
    assert "runs as uid 0, not the claim's uid 65534" in by_path[hijack]


def test_too_many_files_are_cut_off_and_the_errors_capped(registry):
    me, pid = os.geteuid(), os.getpid()
    for i in range(MAX_CLAIM_FILES + 5):
        write_raw(registry, f"u{me}-p{pid}-{i:06x}.json", b"")
    for i in range(100):
        write_raw(registry, f"junk{i:04d}", b"")
    live, errors = registry.live_claims()
    assert live == []
    assert len(errors) == MAX_CLAIM_ERRORS + 1
    assert errors[-1].error == (
        f"{100 + MAX_CLAIM_FILES + 1 - MAX_CLAIM_ERRORS} more bad files in the registry, not listed"
    )


# --- other users ---------------------------------------------------------------------------------


@root_only
def test_another_user_cannot_release_or_overwrite_my_claim(shared_registry):
    reg = shared_registry
    mine = new_record("root's job", "cmd", GPUS[:1])
    reg.create(mine)
    before = Path(mine.path).read_bytes()

    def release():
        reg.release(mine)

    def overwrite_by_api():
        mine.job = "stolen"
        reg.rewrite(mine)

    def unlink():
        os.unlink(mine.path)

    def open_for_write():
        with open(mine.path, "wb") as f:
            f.write(b"{}")

    def rename_over():
        tmp = os.path.join(reg.path, f"u{NOBODY}-p1-abcdef.json")
        with open(tmp, "w") as f:
            f.write("{}")
        os.rename(tmp, mine.path)

    assert as_user(NOBODY, release)["error"] == "ClaimError"
    assert "belongs to root, not to you" in as_user(NOBODY, release)["message"]
    assert as_user(NOBODY, overwrite_by_api)["error"] == "ClaimError"
    for action in (unlink, open_for_write, rename_over):
        assert as_user(NOBODY, action)["error"] == "PermissionError", action.__name__
    assert Path(mine.path).read_bytes() == before
    assert [c.job for c in reg.live_claims()[0]] == ["root's job"]


@root_only
def test_another_user_can_claim_in_the_shared_registry_and_root_sees_it(shared_registry):
    reg = shared_registry

    def claim_as_nobody():
        record = new_record("nobody's job", "cmd", GPUS[2:3])
        with reg.lock(5):
            reg.create(record)
        return {"path": record.path, "live": [c.job for c in reg.live_claims()[0]]}

    out = as_user(NOBODY, claim_as_nobody)["result"]
    # The forked child has exited: its claim is stale, and root (the agent) removes it.
    assert out["live"] == ["nobody's job"]
    assert os.stat(out["path"]).st_uid == NOBODY
    assert reg.live_claims() == ([], [])
    assert not os.path.exists(out["path"])


# --- the allocation lock --------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_held_forever_makes_others_fail_after_the_bounded_wait(registry):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, registry.lock_path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            with registry.lock(timeout_s=0.3):
                pass
        waited = time.monotonic() - started
        assert 0.3 <= waited < 0.3 + SLACK_S  # the bounded wait, not the holder's 60 s
        assert "fuser -v" in str(err.value) and registry.lock_path in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with registry.lock(timeout_s=1):  # free again once the holder is gone
        pass


def test_a_lock_file_deleted_while_held_is_taken_again_on_the_new_file(registry):
    fd = os.open(registry.lock_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.unlink(registry.lock_path)  # its owner removes it, keeping the old inode locked
    try:
        with registry.lock(timeout_s=1):
            held = os.stat(registry.lock_path)
            assert held.st_ino != os.fstat(fd).st_ino
            other = os.open(registry.lock_path, os.O_RDONLY)
            with pytest.raises(BlockingIOError):  # the new file really is locked
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(other)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_lock_file_is_refused_without_hanging(tmp_path, kind):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    os.mkdir(reg.path)
    if kind == "symlink":
        os.symlink("/etc/passwd", reg.lock_path)
    else:
        os.mkfifo(reg.lock_path)
    with pytest.raises(RegistryError, match="ask root to remove it"):
        reg.ensure()
    with pytest.raises(ClaimError):
        with reg.lock(timeout_s=0.2):
            pass


# --- `gpumon-agent claims` ---------------------------------------------------------------------


def test_claims_listing_shows_live_claims_and_escapes_control_characters(registry, capsys):
    record = new_record("evil\x1b[2Jjob", "cmd", GPUS[:2])
    record.progress = {"epoch": 4, "loss": 0.5}
    registry.create(record)
    write_raw(registry, "bad.json", b"x")
    settings = AgentSettings(claims_dir=registry.path)
    assert claims_command(settings) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out
    assert "evil\\x1b[2Jjob" in out and "0,1" in out and "epoch=4 loss=0.5" in out
    assert "bad.json" in err
    assert claims_command(settings, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["job"] for c in data["claims"]] == ["evil\x1b[2Jjob"]
    assert data["errors"][0]["path"].endswith("bad.json")


@root_only
def test_the_registrys_owner_cleans_other_users_stale_claims(shared_registry):
    # The agent runs as its own (systemd dynamic) user and owns the registry it made.
    reg = shared_registry
    os.chown(reg.path, NOBODY, NOBODY)
    writer = subprocess.Popen(["true"])
    writer.wait()
    dead = new_record("dead root job", "cmd", GPUS[:1])
    dead.pid, dead.pid_started = writer.pid, 0.0
    reg.create(dead)
    out = as_user(NOBODY, lambda: [c.job for c in reg.live_claims()[0]])
    assert out == {"result": []}
    assert not os.path.exists(dead.path)


@root_only
def test_claims_chowned_to_the_registry_owner_still_count(shared_registry, sleeper):
    # systemd chowns a service's RuntimeDirectory recursively to the service's user when a
    # DynamicUser= uid changes: claim files then belong to the agent, not to their makers.
    agent_uid = 4321
    reg = ClaimRegistry(shared_registry.path, trusted_owners={agent_uid})  # the agent's user
    os.chown(reg.path, agent_uid, agent_uid)
    proc = sleeper()
    chowned = new_record("root's job", "cmd", GPUS[:1], pid=proc.pid)
    reg.create(chowned)
    os.chown(chowned.path, agent_uid, agent_uid)
    stranger = write_raw(
        reg, f"u0-p{proc.pid}-dddddd.json", json.dumps(valid_dict(proc.pid, 0)).encode(), NOBODY
    )
    live, errors = reg.live_claims()
    assert [c.path for c in live] == [chowned.path]
    assert [(e.path, e.error) for e in errors] == [
        (stranger, "owned by uid 65534 but named for uid 0; refused")
    ]
