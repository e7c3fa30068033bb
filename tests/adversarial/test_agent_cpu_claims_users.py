"""CPU-only jobs on a GPU server deployed as the shipped unit deploys it (the agent as its own
unprivileged user, UMask=0077, the unit's Environment=): an unprivileged user runs
`gpumon claim --cpu` (umask 0077 too), the agent reports it in ``cpu_claims``, another user
sees it in `gpumon-agent claims` and cannot forge one in their name, and a real `gpumon push`
over the sshd harness writes "USER: JOB (CPU)" into the server's Job cell — then clears it when
the job ends."""

from __future__ import annotations

import json
import os
import stat
import sys

import openpyxl
import pytest
from agent_proc import wait_for
from central_kit import gpumon, seed_workbook

from gpumon_agent.report import Report
from harness.sshd import Fleet
from harness.users import AGENT, GPUMON

pytestmark = pytest.mark.slow

JOB = "kws ch32"
JOB_CELL, HEALTH_CELL = "L8", "M8"  # hcpbsp's first row in the seed sheet, once pushed

FORGE = r"""
import json, os, sys
path, = sys.argv[1:]
data = json.load(open(path))
me = os.geteuid()
# A CPU claim in alice's name, by bob: named for alice, owned by bob.
target = os.path.join(os.path.dirname(path), os.path.basename(path).rsplit("-", 1)[0]
                      + "-f0f0f0f0.json")
with open(target, "w") as f:
    json.dump(dict(data, job="forged"), f)
os.chmod(target, 0o644)
try:
    os.unlink(path)
    print("unlinked")
except PermissionError:
    print("refused")
"""


def report_as(deployment, user) -> Report:
    done = deployment.run_as(user, [str(GPUMON), "agent", "report", "--json"])
    assert done.returncode == 0, done.stderr
    return Report.from_json(done.stdout)


def cpu_jobs(report: Report) -> list[tuple[str, str]]:
    return sorted((c.user, c.job) for c in report.cpu_claims)


def test_a_cpu_job_of_an_unprivileged_user_is_reported_and_pushed_into_the_job_cell(
    deployment, lab_users, tmp_path
):
    alice, bob = lab_users["alice"], lab_users["bob"]
    assert deployment.umask == 0o077
    deployment.start_agent()
    wait_for("the agent's first snapshot", lambda: (deployment.state / "report.json").exists())

    job = [str(GPUMON), "claim", "--cpu", "--job", JOB, "--"]
    script = 'echo "ready [$CUDA_VISIBLE_DEVICES]"; exec sleep 300'
    holder = deployment.spawn_as(alice, [*job, "sh", "-c", script])
    assert holder.stdout.readline().strip() == "ready []", holder.communicate()[1]

    files = [p for p in deployment.claims.iterdir() if not p.name.startswith(".")]
    assert len(files) == 1
    st = os.lstat(files[0])
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o644)  # despite umask 0077
    content = json.loads(files[0].read_bytes())
    assert (content["cpu"], content["gpus"], content["job"]) == (True, [], JOB)

    seen = wait_for(
        "the CPU claim in bob's report",
        lambda: cpu_jobs(report_as(deployment, bob)) == [(alice.name, JOB)],
        timeout=30,
        every=0.2,
    )
    assert seen
    report = report_as(deployment, bob)
    assert all(g.claims == [] for g in report.gpus)  # no GPU is claimed by it
    listing = deployment.run_as(bob, [str(AGENT), "claims"])
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if JOB in line)
    assert row.split()[:2] == ["CPU", alice.name]

    # bob can neither remove alice's CPU claim nor forge one in her name.
    forged = deployment.run_as(bob, [sys.executable, "-c", FORGE, str(files[0])])
    assert forged.returncode == 0 and forged.stdout.strip() == "refused", forged.stderr

    def forgery_refused() -> Report | None:
        got = report_as(deployment, bob)
        return got if got.claim_errors else None

    report = wait_for("the forgery in claim_errors", forgery_refused, timeout=30, every=0.2)
    assert cpu_jobs(report) == [(alice.name, JOB)]
    assert [e.error for e in report.claim_errors] == [
        f"owned by uid {bob.uid} but named for uid {alice.uid}; refused"
    ]

    # A real push over SSH: the agent's snapshot, read as the fleet's SSH user.
    ssh = Fleet()
    try:
        ssh.add("hcpbsp", behaviour=f"exec cat {deployment.state / 'report.json'}")
        ssh.start()
        workbook = seed_workbook(tmp_path / "sheet.xlsx")
        known = tmp_path / "known_hosts"
        known.write_text(ssh.known_hosts_text())
        config = tmp_path / "gpumon.toml"
        server = ssh.servers[0]
        config.write_text(
            f'state_dir = "{tmp_path}/state"\n'
            f'[sheet]\npath = "{workbook}"\ntime_zone = "Asia/Seoul"\n'
            f'[poll]\nuser = "{ssh.user.pw_name}"\nknown_hosts = "{known}"\n'
            f'identity_files = ["{ssh.client_key}"]\nssh_config = "{tmp_path}/none"\n'
            "servers_from_sheet = false\nstale_after_s = 86400\n"
            f'[servers.hcpbsp]\nhost = "{server.address}"\nport = {ssh.port}\n'
        )

        def push():
            done = gpumon("--config", str(config), "push", cwd=tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
            return openpyxl.load_workbook(workbook).active

        sheet = push()
        assert sheet["K7"].value == "Running" and sheet["L7"].value == "Job"
        assert sheet[JOB_CELL].value == f"{alice.name}: {JOB} (CPU)"
        assert "bad claim file" in (sheet[HEALTH_CELL].value or "")  # bob's forgery, named

        holder.terminate()
        assert holder.wait(20) == 128 + 15
        wait_for(
            "the CPU claim gone from the report",
            lambda: report_as(deployment, bob).cpu_claims == [],
            timeout=30,
            every=0.2,
        )
        assert not push()[JOB_CELL].value  # the job ended: the cell is cleared
    finally:
        ssh.close()
    assert "Traceback" not in deployment.agent_log()
