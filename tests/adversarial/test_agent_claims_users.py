"""Claims on a GPU server deployed as the shipped unit deploys it: the agent runs as its own
unprivileged user with UMask=0077 and the unit's Environment=, two other unprivileged users
claim GPUs (`gpumon claim` and the `with claim()` hook, on the fake NVML), see each other's
claims in `gpumon agent report --json`, and cannot delete, overwrite or forge each other's."""

from __future__ import annotations

import json
import os
import stat
import sys

from agent_proc import wait_for

from gpumon_agent.report import Report
from harness.users import AGENT, GPUMON

HOOK_JOB = """
import time
from gpumon_agent.hook import claim
with claim(gpus=[1], job="bob's hook job") as c:
    print("ready", c.gpu_indices, flush=True)
    time.sleep(300)
"""

# Run as bob against alice's claim file (argv[1]) and alice's pid (argv[2]): every way to
# remove, replace or impersonate it; prints {attack: outcome}.
ATTACKS = r"""
import json, os, sys
from gpumon_agent.claims import ClaimError, ClaimRecord, ClaimRegistry
path, alice_pid = sys.argv[1], int(sys.argv[2])
registry = ClaimRegistry(os.path.dirname(path))
data = json.loads(open(path, "rb").read())
me = os.geteuid()
out = {}

def attempt(name, action):
    try:
        action()
        out[name] = "done"
    except (OSError, ClaimError) as e:
        out[name] = type(e).__name__

def overwrite():
    with open(path, "wb") as f:
        f.write(b"{}")

def rename_over():
    mine = os.path.join(registry.path, f"u{me}-p{os.getpid()}-0badc0de.json")
    with open(mine, "wb") as f:
        f.write(b"{}")
    try:
        os.rename(mine, path)
    finally:
        if os.path.exists(mine):
            os.unlink(mine)

def release_by_api():
    registry.release(ClaimRecord.from_dict(data, path))

def rewrite_by_api():
    record = ClaimRecord.from_dict(data, path)
    record.job = "stolen"
    registry.rewrite(record)

def lock_out_everyone():
    os.chmod(registry.lock_path, 0)

attempt("unlink", lambda: os.unlink(path))
attempt("overwrite", overwrite)
attempt("rename_over", rename_over)
attempt("release_by_api", release_by_api)
attempt("rewrite_by_api", rewrite_by_api)
attempt("chmod_lock", lock_out_everyone)

# Forgeries, written by bob: a claim in alice's name, and one in bob's name on alice's process.
# (Made readable: a forgery the agent cannot read would not fool it anyway.)
def plant(name, content):
    target = os.path.join(registry.path, name)
    with open(target, "w") as f:
        json.dump(content, f)
    os.chmod(target, 0o644)

plant(os.path.basename(path).rsplit("-", 1)[0] + "-f0f0f0f0.json", dict(data, job="forged"))
plant(f"u{me}-p{alice_pid}-a1a1a1a1.json", dict(data, job="on alice's pid", uid=me, user="bob"))
print(json.dumps(out))
"""


def report_as(deployment, user) -> Report:
    done = deployment.run_as(user, [str(GPUMON), "agent", "report", "--json"])
    assert done.returncode == 0, done.stderr
    return Report.from_json(done.stdout)


def jobs_by_gpu(report: Report) -> dict[int, list[str]]:
    return {g.index: sorted(c.job for c in g.claims) for g in report.gpus}


def test_users_claim_under_the_shipped_unit_see_each_other_and_cannot_touch_each_others_claims(
    deployment, lab_users
):
    alice, bob, agent = lab_users["alice"], lab_users["bob"], lab_users["agent"]
    assert deployment.umask == 0o077  # what the unit says; the agent runs with it
    daemon = deployment.start_agent()
    wait_for("the agent's first snapshot", lambda: (deployment.state / "report.json").exists())

    # What the agent made, as its own user, under UMask=0077: others can enter, read and lock.
    claims = deployment.claims
    st = os.lstat(claims)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (agent.uid, 0o1777)
    lock = os.lstat(claims / ".lock")
    assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (agent.uid, 0o644)
    assert stat.S_IMODE(os.lstat(deployment.state / "report.json").st_mode) == 0o644

    job = [str(GPUMON), "claim", "--gpus", "0", "--job", "alice's job", "--"]
    alice_claim = deployment.spawn_as(alice, [*job, "sh", "-c", "echo ready; exec sleep 300"])
    assert alice_claim.stdout.readline().strip() == "ready", alice_claim.communicate()[1]
    bob_hook = deployment.spawn_as(bob, [sys.executable, "-c", HOOK_JOB])
    assert bob_hook.stdout.readline().strip() == "ready [1]", bob_hook.communicate()[1]

    expected = {0: ["alice's job"], 1: ["bob's hook job"], 2: [], 3: []}
    for user in (alice, bob):
        seen = wait_for(
            f"both claims in {user.name}'s report",
            lambda user=user: jobs_by_gpu(report_as(deployment, user)) == expected,
            timeout=30,
            every=0.2,
        )
        assert seen

    alice_file = next(p for p in claims.iterdir() if p.name.startswith(f"u{alice.uid}-"))
    before = alice_file.read_bytes()
    done = deployment.run_as(
        bob, [sys.executable, "-c", ATTACKS, str(alice_file), str(alice_claim.pid)]
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "unlink": "PermissionError",
        "overwrite": "PermissionError",
        "rename_over": "PermissionError",
        "release_by_api": "ClaimError",
        "rewrite_by_api": "ClaimError",
        "chmod_lock": "PermissionError",
    }
    assert alice_file.read_bytes() == before

    def forgeries_refused() -> Report | None:
        report = report_as(deployment, alice)
        return report if len(report.claim_errors) == 2 else None

    report = wait_for("the forgeries in claim_errors", forgeries_refused, timeout=30, every=0.2)
    assert jobs_by_gpu(report) == expected  # neither forgery counts
    reasons = sorted(e.error for e in report.claim_errors)
    assert reasons == [
        f"owned by uid {bob.uid} but named for uid {alice.uid}; refused",
        f"pid {alice_claim.pid} runs as uid {alice.uid}, not the claim's uid {bob.uid}; refused",
    ]

    # A third claim for GPU 0 (alice's) is refused; `auto` gets a free one.
    taken = deployment.run_as(bob, [str(GPUMON), "claim", "--gpus", "0", "--", "true"])
    assert taken.returncode == 75 and "claimed by gpumon-t-alice" in taken.stderr
    free = deployment.run_as(
        bob, [str(AGENT), "claim", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]
    )
    assert free.returncode == 0, free.stderr
    assert free.stdout.strip() in ("2", "3")

    alice_claim.terminate()
    bob_hook.terminate()
    assert alice_claim.wait(20) == 128 + 15 and bob_hook.wait(20) != 0
    wait_for(
        "the released claims gone from the report",
        lambda: all(not g.claims for g in report_as(deployment, bob).gpus),
        timeout=30,
        every=0.2,
    )
    assert daemon.poll() is None, deployment.agent_log()
    assert "Traceback" not in deployment.agent_log()
