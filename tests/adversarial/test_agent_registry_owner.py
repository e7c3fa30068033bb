"""A claims registry an ordinary user made (as the GPUMON_CLAIMS_DIR hint invites) would let that
user delete and forge everyone's claims in it — a sticky directory's owner may remove any file,
and files the registry's owner writes are taken as named. Only root and the agent's user may own
the registry and the directories above it; anything else is refused, saying the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from agent_proc import wait_for

from gpumon_agent.claims import ClaimRegistry, RegistryError
from gpumon_agent.report import Report
from harness.users import GPUMON

MAKE_REGISTRY = "import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o1777)"

FORGE = r"""
import json, os, sys
registry, victim_uid, victim_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
claim = {"schema": "gpumon.claim", "version": 1, "job": "forged for bob", "user": "bob",
         "uid": victim_uid, "pid": victim_pid, "pid_started": 0.0, "pid_start_ticks": None,
         "hostname": "h", "command": "c", "started_at": "2026-01-01T00:00:00Z",
         "updated_at": None, "gpus": [{"index": 3, "uuid": None}], "progress": {}}
path = os.path.join(registry, f"u{victim_uid}-p{victim_pid}-f0f0f0f0.json")
with open(path, "w") as f:
    json.dump(claim, f)
os.chmod(path, 0o644)
"""


def test_a_registry_an_ordinary_user_made_is_refused_by_claimers_and_the_agent(
    deployment, lab_users
):
    alice, bob = lab_users["alice"], lab_users["bob"]
    open_dir = deployment.top / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o1777)  # like /tmp
    registry = open_dir / "claims"
    made = deployment.run_as(alice, [sys.executable, "-c", MAKE_REGISTRY, str(registry)])
    assert made.returncode == 0, made.stderr
    bob_job = deployment.spawn_as(bob, ["sleep", "300"])
    forged = deployment.run_as(
        alice, [sys.executable, "-c", FORGE, str(registry), str(bob.uid), str(bob_job.pid)]
    )
    assert forged.returncode == 0, forged.stderr

    env = dict(deployment.user_env, GPUMON_CLAIMS_DIR=str(registry))
    done = deployment.run_as(bob, [str(GPUMON), "claim", "--", "true"], env=env)
    assert done.returncode == 1
    assert f"the claims registry {registry} is not safe" in done.stderr
    assert f"{registry} is owned by gpumon-t-alice (uid {alice.uid})" in done.stderr
    assert f"sudo install -d -o root -g root -m 1777 {registry}" in done.stderr
    assert "unset GPUMON_CLAIMS_DIR" in done.stderr

    # The agent, pointed there too, counts nothing from it and says why in every Report.
    deployment.agent_env["GPUMON_CLAIMS_DIR"] = str(registry)
    deployment.start_agent()
    report = wait_for(
        "a snapshot",
        lambda: (
            (deployment.state / "report.json").exists()
            and Report.from_json((deployment.state / "report.json").read_bytes())
        ),
    )
    assert all(not g.claims for g in report.gpus)  # the forgery for bob does not count
    assert [e.path for e in report.claim_errors] == [str(registry)]
    assert "is owned by gpumon-t-alice" in report.claim_errors[0].error

    # The fix the message gives works.
    subprocess.run(["rm", "-rf", str(registry)], check=True)
    subprocess.run(["install", "-d", "-o", "root", "-g", "root", "-m", "1777", str(registry)])
    holder = deployment.spawn_as(
        bob,
        [str(GPUMON), "claim", "--job", "bob's", "--", "sh", "-c", "echo ok; exec sleep 300"],
        env,
    )
    assert holder.stdout.readline().strip() == "ok", holder.communicate()[1]

    def counted() -> list[str]:
        data = (deployment.state / "report.json").read_bytes()
        return [c.job for g in Report.from_json(data).gpus for c in g.claims]

    assert wait_for("bob's claim in the report", counted, timeout=30) == ["bob's"]


def test_a_root_registry_below_a_users_directory_is_refused(tmp_path, lab_users):
    alice = lab_users["alice"]
    home = tmp_path / "home-alice"
    home.mkdir()
    os.chown(home, alice.uid, alice.gid)  # alice could rename `claims` away and put her own
    reg = ClaimRegistry(str(home / "claims"), trusted_owners=())
    os.mkdir(reg.path)
    os.chmod(reg.path, 0o1777)
    with pytest.raises(RegistryError, match=f"{home} is owned by gpumon-t-alice"):
        reg.ensure()
    live, errors = reg.live_claims()
    assert live == [] and "is not safe" in errors[0].error


def test_only_root_or_the_agents_user_may_create_a_missing_registry(deployment, lab_users):
    alice, agent = lab_users["alice"], lab_users["agent"]
    top = deployment.top / "shared"
    top.mkdir()
    os.chmod(top, 0o1777)
    code = (
        "import json, sys\n"
        "from gpumon_agent.claims import ClaimRegistry, ClaimError\n"
        "try:\n"
        "    ClaimRegistry(sys.argv[1], trusted_owners={int(sys.argv[2])}).ensure()\n"
        "    print(json.dumps('made'))\n"
        "except ClaimError as e:\n"
        "    print(json.dumps(str(e)))\n"
    )
    out = deployment.run_as(
        alice, [sys.executable, "-c", code, str(top / "claims"), str(agent.uid)]
    )
    assert out.returncode == 0, out.stderr
    message = json.loads(out.stdout)
    assert "does not exist, and only root or the agent's user gpumon-t-agent" in message
    assert not (top / "claims").exists()
