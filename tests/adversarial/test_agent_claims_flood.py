"""Flooding the shared claims registry: junk names cost a name check each and hide nothing; files
are read in turns per owner, so whoever floods hides only their own claims; allocation refuses
rather than guess when it cannot read every claim; temporary-file names cost no process lookup
each (bench/claims_hostile.py has the figures)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from agent_proc import wait_for

from gpumon_agent import pidstat
from gpumon_agent.claims import (
    MAX_CLAIM_ERRORS,
    MAX_CLAIM_FILES,
    ClaimRegistry,
    RegistryError,
    claim_gpus,
    new_record,
)
from gpumon_agent.claims import allocation as claims_mod
from gpumon_agent.report import Gpu, Report
from harness.users import GPUMON

GPUS = [Gpu(index=i, uuid=f"GPU-{i}") for i in range(4)]

FLOOD = r"""
import os, sys
registry, alice = sys.argv[1], int(sys.argv[2])
me = os.geteuid()
def put(name, data=b"junk"):
    fd = os.open(os.path.join(registry, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
for i in range(130):
    put(f"aaa-junk-{i:04d}")            # not claim names, sorted before every claim
for i in range(200):
    put(f"u{me}-p1-{i:08x}.json")        # claim names of bob's, junk inside
for i in range(50):
    put(f"u{alice}-p1-{i:08x}.json")     # named for alice, but bob's files
"""


def report_as(deployment, user) -> Report:
    done = deployment.run_as(user, [str(GPUMON), "agent", "report", "--json"])
    assert done.returncode == 0, done.stderr
    return Report.from_json(done.stdout)


def test_130_junk_names_hide_no_claim_and_no_second_job_gets_a_claimed_gpu(deployment, lab_users):
    alice, bob = lab_users["alice"], lab_users["bob"]
    deployment.start_agent()
    wait_for("the registry", lambda: (deployment.claims / ".lock").exists())
    job = [str(GPUMON), "claim", "--gpus", "0", "--job", "alice on 0", "--"]
    holder = deployment.spawn_as(alice, [*job, "sh", "-c", "echo ready; exec sleep 300"])
    assert holder.stdout.readline().strip() == "ready", holder.communicate()[1]

    flood = deployment.run_as(
        bob, [sys.executable, "-c", FLOOD, str(deployment.claims), str(alice.uid)]
    )
    assert flood.returncode == 0, flood.stderr
    assert len(os.listdir(deployment.claims)) > 380

    def seen() -> Report | None:
        report = report_as(deployment, bob)
        return report if len(report.claim_errors) == MAX_CLAIM_ERRORS + 1 else None

    report = wait_for("the flood in the agent's report", seen, timeout=30, every=0.2)
    assert [c.job for c in report.gpus[0].claims] == ["alice on 0"]
    assert report.claim_errors[-1].error.endswith("more bad files in the registry, not listed")

    # Bob's jobs: three GPUs, none of them alice's; then nothing is free.
    three = [str(GPUMON), "claim", "--count", "3", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]
    done = deployment.run_as(bob, three)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1,2,3"
    taken = deployment.run_as(bob, [str(GPUMON), "claim", "--gpus", "0", "--", "true"])
    assert taken.returncode == 75, taken.stderr
    assert "GPU 0: claimed by gpumon-t-alice" in taken.stderr


@pytest.fixture
def alice_process(lab_users):
    proc = subprocess.Popen(["sleep", "300"], preexec_fn=lab_users["alice"].preexec())
    yield proc
    proc.kill()
    proc.wait()


def chowned(path: Path, data: bytes, uid: int) -> None:
    path.write_bytes(data)
    os.chown(path, uid, -1)


def test_a_user_who_floods_well_formed_names_hides_only_their_own_claims(
    tmp_path, lab_users, alice_process
):
    alice, bob = lab_users["alice"], lab_users["bob"]
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    record = new_record("alice's job", "python train.py", GPUS[:1], pid=alice_process.pid)
    record.uid, record.user = alice.uid, alice.name
    # Names a..: sorted before alice's; 300 of bob's own, 300 named for alice but bob's.
    for i in range(300):
        chowned(tmp_path / "claims" / f"u{bob.uid}-p1-{i:08x}.json", b"{}", bob.uid)
        chowned(tmp_path / "claims" / f"u{alice.uid}-p1-{i:08x}.json", b"{}", bob.uid)
    real = tmp_path / "claims" / f"u{alice.uid}-p{alice_process.pid}-ffffffff.json"
    chowned(real, record.to_json(), alice.uid)

    live, errors = reg.live_claims()
    assert [c.job for c in live] == ["alice's job"]
    assert len(errors) == MAX_CLAIM_ERRORS + 1  # capped, and the rest counted
    unread = reg.scan().unread
    assert unread == {bob.uid: 300 - (MAX_CLAIM_FILES - 1)}  # bob's turn ran out; alice's did not


def test_allocation_refuses_rather_than_guess_when_it_cannot_read_every_claim(
    tmp_path, lab_users, monkeypatch
):
    bob = lab_users["bob"]
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    monkeypatch.setattr(claims_mod, "MAX_ALLOCATION_FILES", 40)  # 4,096 in production
    for i in range(41):
        chowned(tmp_path / "claims" / f"u{bob.uid}-p1-{i:08x}.json", b"{}", bob.uid)
    with pytest.raises(RegistryError, match="cannot tell which GPUs are free") as err:
        claim_gpus(reg, GPUS, None, 1, "job", "cmd")
    assert "1 unread of gpumon-t-bob's" in str(err.value)
    assert [n for n in os.listdir(reg.path) if n.startswith(f"u{os.geteuid()}-")] == []


def test_30000_temporary_file_names_cost_no_process_lookup_each(tmp_path, monkeypatch):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    me = os.geteuid()
    for i in range(15_000):  # both shapes: gpumon 0.1's and gpumon_agent.atomic's
        for name in (
            f".u{me}-p1-{i:08x}.json.tmp0011aabb",
            f".u{me}-p1-{i:08x}.json.gpumon-tmp-1-0011aabb",
        ):
            os.close(os.open(os.path.join(reg.path, name), os.O_WRONLY | os.O_CREAT, 0o644))
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f".u{me}-p{dead.pid}-00000000.json.gpumon-tmp-{dead.pid}-0011aabb"
    os.close(os.open(os.path.join(reg.path, orphan), os.O_WRONLY | os.O_CREAT, 0o644))
    holder = subprocess.Popen(["sleep", "300"])
    try:
        reg.create(new_record("real", "cmd", GPUS[:1], pid=holder.pid))
        lookups: list[str] = []
        for name in ("alive", "proc_stat"):
            real = getattr(pidstat, name)
            monkeypatch.setattr(
                pidstat, name, lambda pid, real=real, name=name: lookups.append(name) or real(pid)
            )
        monkeypatch.setattr(psutil, "Process", lambda *a: lookups.append("psutil") or None)

        live, errors = reg.live_claims()  # every sample: the temporary names are not looked at
        assert [c.job for c in live] == ["real"] and errors == []
        assert lookups == ["proc_stat"]  # the one claim's liveness
        lookups.clear()
        assert reg.clean_temporary() == 1  # once a minute: one kill(pid, 0) per writer pid
        assert sorted(lookups) == ["alive", "alive"]  # pid 1 (alive) and the dead writer
        assert not os.path.exists(os.path.join(reg.path, orphan))
        assert len(os.listdir(reg.path)) == 30_000 + 2  # the live writers' files stay
    finally:
        holder.kill()
        holder.wait()


def test_the_agents_remembered_listing_never_misses_a_new_or_removed_claim(tmp_path):
    # The daemon keeps one registry across samples and reuses its listing while the directory
    # is unchanged; every change must still be seen at the next scan.
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    holders = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    try:
        assert reg.live_claims() == ([], [])
        first = new_record("at once", "cmd", GPUS[:1], pid=holders[0].pid)
        reg.create(first)  # right after a listing, maybe in the same timestamp tick
        assert [c.job for c in reg.live_claims()[0]] == ["at once"]
        time.sleep(1.2)
        assert len(reg.live_claims()[0]) == 1  # this listing is one to reuse
        assert reg._listing is not None
        second = new_record("later", "cmd", GPUS[1:2], pid=holders[1].pid)
        reg.create(second)
        assert sorted(c.job for c in reg.live_claims()[0]) == ["at once", "later"]
        time.sleep(1.2)
        reg.live_claims()
        reg.release(first)
        assert [c.job for c in reg.live_claims()[0]] == ["later"]
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
