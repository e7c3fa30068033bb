"""The trainer hook, as trainers use it: ``with claim(...)`` in a Python process, under the fake
libnvidia-ml.so.1 and the real pynvml. Every trainer is its own process (pynvml keeps its
library globally, and signals need a process to kill)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpumon_agent.claims import ClaimRegistry
from harness.fakenvml import FakeProcess, FakeState, make_gpu

ME = pwd.getpwuid(os.geteuid()).pw_name

# A trainer: claims, reports as JSON lines, waits for a file to appear before leaving.
PRELUDE = """
import json, os, signal, sys, time
from gpumon_agent.hook import claim
from gpumon_agent.claims import ClaimError, NoFreeGpu

def say(**kw):
    print(json.dumps(kw), flush=True)

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)
"""


@pytest.fixture
def claims_dir(tmp_path: Path) -> Path:
    return tmp_path / "claims"


@pytest.fixture
def env_for(claims_dir):
    """env_for(fake) -> the environment of a trainer on that fake NVML and this registry."""

    def make(fake, **extra: str) -> dict:
        env = fake.env(log=False)
        env["GPUMON_CLAIMS_DIR"] = str(claims_dir)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.update(extra)
        return env

    return make


def start(code: str, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(code: str, env: dict, *args: str, timeout: float = 60) -> tuple[int, list[dict], str]:
    proc = start(code, env, *args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err


def claim_files(claims_dir: Path) -> list[str]:
    if not claims_dir.exists():
        return []
    return sorted(n for n in os.listdir(claims_dir) if not n.startswith("."))


def test_claim_sets_cuda_env_records_the_job_and_restores_everything_on_exit(
    fake_nvml, env_for, claims_dir
):
    utils = [8, 3, 0, 1]  # all below usage.BUSY_UTILIZATION_PCT: busier ones are in use
    gpus = [make_gpu(i, utilization_gpu=u) for i, u in enumerate(utils)]
    gpus[2].compute_processes = [FakeProcess(os.getpid())]  # idle-looking but in use
    fake = fake_nvml(FakeState(gpus=gpus))
    code = """
with claim(count=2, job="kws ch32 do0.75") as c:
    c.update(epoch=3, loss=0.41)
    c.update(val_acc=0.93, loss=float("nan"))
    say(indices=c.gpu_indices, uuids=c.gpu_uuids, cvd=os.environ["CUDA_VISIBLE_DEVICES"],
        order=os.environ["CUDA_DEVICE_ORDER"], file=json.load(open(c.record.path)),
        handlers=[signal.getsignal(s) == c._on_signal for s in (signal.SIGINT, signal.SIGTERM)])
say(cvd=os.environ.get("CUDA_VISIBLE_DEVICES"), order=os.environ.get("CUDA_DEVICE_ORDER"),
    handlers=[signal.getsignal(signal.SIGINT) is signal.default_int_handler,
              signal.getsignal(signal.SIGTERM) == signal.SIG_DFL])
"""
    rc, (inside, after), err = run(code, env_for(fake, CUDA_VISIBLE_DEVICES="7"))
    assert rc == 0, err
    assert inside["indices"] == [3, 1]  # free GPUs, least utilized first; GPU 2 runs a process
    assert inside["uuids"] == [gpus[3].uuid, gpus[1].uuid]
    assert (inside["cvd"], inside["order"]) == ("3,1", "PCI_BUS_ID")
    assert inside["handlers"] == [True, True]
    record = inside["file"]
    assert record["job"] == "kws ch32 do0.75"
    assert record["uid"] == os.geteuid() and record["user"] == ME
    assert record["hostname"] == os.uname().nodename
    assert "python" in record["command"]
    assert record["progress"] == {"epoch": 3, "loss": "nan", "val_acc": 0.93}
    assert record["updated_at"].endswith("Z")
    assert after == {"cvd": "7", "order": None, "handlers": [True, True]}
    assert claim_files(claims_dir) == []
    assert (claims_dir / ".lock").exists()


def test_explicit_uuids_become_cuda_visible_devices(fake_nvml, env_for):
    fake = fake_nvml(FakeState.with_gpus(3))
    uuid = fake.state.gpus[2].uuid
    code = f"""
with claim(gpus=["{uuid}"]) as c:
    say(indices=c.gpu_indices, cvd=os.environ["CUDA_VISIBLE_DEVICES"])
"""
    rc, [out], err = run(code, env_for(fake))
    assert rc == 0, err
    assert out == {"indices": [2], "cvd": uuid}


RACER = """
n = sys.argv[1]
say(ready=n)
wait_for(sys.argv[2])  # everyone imported: now all claim at once
try:
    with claim(job="racer " + n, lock_timeout_s=60) as c:
        say(gpus=c.gpu_indices)
        wait_for(sys.argv[3])
except NoFreeGpu as e:
    say(error=str(e))
"""


def test_racing_claimers_never_share_a_gpu_and_the_rest_fail_clearly(
    fake_nvml, env_for, claims_dir, tmp_path
):
    fake = fake_nvml(FakeState.with_gpus(8))
    env = env_for(fake)
    go, leave = tmp_path / "go", tmp_path / "leave"
    racers = [start(RACER, env, str(n), str(go), str(leave)) for n in range(24)]
    try:
        for p in racers:
            assert "ready" in p.stdout.readline()
        go.touch()
        answers = [json.loads(p.stdout.readline() or "{}") for p in racers]
        holding = len(claim_files(claims_dir))
    finally:
        go.touch()
        leave.touch()
        errs = [p.communicate(timeout=60)[1] for p in racers]
    assert all(p.returncode == 0 for p in racers), errs
    won = [a["gpus"] for a in answers if "gpus" in a]
    lost = [a["error"] for a in answers if "error" in a]
    assert sorted(g for gpus in won for g in gpus) == list(range(8))  # each GPU exactly once
    assert len(lost) == 16
    assert all("need 1 free GPU, 0 of 8 free" in e and f"claimed by {ME}" in e for e in lost)
    assert holding == 8
    assert claim_files(claims_dir) == []


HOLD = """
with claim(job="holder") as c:
    say(gpus=c.gpu_indices, file=c.record.path)
    time.sleep(60)
"""


def test_a_killed_claimer_is_ignored_then_cleaned(fake_nvml, env_for, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(2))
    env = env_for(fake)
    holder = start(HOLD, env)
    first = json.loads(holder.stdout.readline())
    holder.kill()
    holder.wait()
    assert claim_files(claims_dir) == [os.path.basename(first["file"])]  # left behind
    # A new claimer may take every GPU, the dead one's included; the dead claim is removed.
    rc, [out], err = run("with claim(count=2) as c: say(gpus=c.gpu_indices)", env)
    assert rc == 0, err
    assert out["gpus"] == [0, 1]
    assert not os.path.exists(first["file"])


def test_sigterm_in_the_block_releases_and_ends_with_the_signal_status(
    fake_nvml, env_for, claims_dir
):
    fake = fake_nvml(FakeState.with_gpus(1))
    holder = start(HOLD + "say(after=True)", env_for(fake))
    first = json.loads(holder.stdout.readline())
    assert os.path.exists(first["file"])
    holder.send_signal(signal.SIGTERM)
    out, err = holder.communicate(timeout=30)
    assert holder.returncode == -signal.SIGTERM, err
    assert out == ""  # died at once, as with the default SIGTERM action
    assert claim_files(claims_dir) == []


def test_sigint_in_the_block_releases_via_keyboardinterrupt(fake_nvml, env_for, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(1))
    holder = start(HOLD, env_for(fake))
    holder.stdout.readline()
    holder.send_signal(signal.SIGINT)
    _, err = holder.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert holder.returncode == -signal.SIGINT  # Python re-raises an uncaught ^C
    assert claim_files(claims_dir) == []


def test_sigterm_chains_to_the_trainers_own_handler(fake_nvml, env_for, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(1))
    code = (
        """
def graceful(signum, frame):
    say(graceful=signum)
    sys.exit(5)

signal.signal(signal.SIGTERM, graceful)
try:
"""
        + "\n".join("    " + line for line in HOLD.strip().splitlines())
        + """
finally:
    say(restored=signal.getsignal(signal.SIGTERM) is graceful)
"""
    )
    holder = start(code, env_for(fake))
    holder.stdout.readline()
    holder.send_signal(signal.SIGTERM)
    out, err = holder.communicate(timeout=30)
    assert holder.returncode == 5, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"graceful": signal.SIGTERM},
        {"restored": True},
    ]
    assert claim_files(claims_dir) == []


def test_an_exception_in_the_block_releases(fake_nvml, env_for, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(1))
    rc, _, err = run("with claim() as c:\n    raise RuntimeError('diverged')", env_for(fake))
    assert rc == 1 and "RuntimeError: diverged" in err
    assert claim_files(claims_dir) == []


def test_without_nvml_auto_fails_clearly_unless_cpu_fallback_is_allowed(no_nvml_env, claims_dir):
    env = dict(no_nvml_env, GPUMON_CLAIMS_DIR=str(claims_dir))
    code = """
try:
    with claim() as c:
        pass
except ClaimError as e:
    say(error=str(e))
with claim(required=False) as c:
    say(indices=c.gpu_indices, cvd=os.environ["CUDA_VISIBLE_DEVICES"], active=c.active)
    c.update(epoch=1)  # nothing to record
"""
    rc, (refused, cpu), err = run(code, env)
    assert rc == 0, err
    assert "cannot read the GPUs through NVML" in refused["error"]
    assert "required=False" in refused["error"]
    assert cpu == {"indices": [], "cvd": "", "active": False}  # no registry here: no record
    assert not claims_dir.exists()  # ...and none made


def test_without_nvml_the_cpu_fallback_is_a_cpu_claim_where_the_registry_exists(
    no_nvml_env, claims_dir
):
    ClaimRegistry(str(claims_dir)).ensure()  # as the agent makes it on a server
    env = dict(no_nvml_env, GPUMON_CLAIMS_DIR=str(claims_dir))
    code = """
with claim(required=False, job="kws ch32") as c:
    c.update(epoch=1)
    say(cvd=os.environ["CUDA_VISIBLE_DEVICES"], active=c.active,
        file=json.load(open(c.record.path)))
say(left=[n for n in os.listdir(os.environ["GPUMON_CLAIMS_DIR"]) if not n.startswith(".")])
"""
    rc, (inside, after), err = run(code, env)
    assert rc == 0, err
    assert inside["cvd"] == "" and inside["active"] is True
    record = inside["file"]
    assert (record["cpu"], record["gpus"], record["job"]) == (True, [], "kws ch32")
    assert record["progress"] == {"epoch": 1}
    assert after == {"left": []}


def test_busy_gpus_are_not_a_reason_to_fall_back_to_the_cpu(fake_nvml, env_for):
    fake = fake_nvml(FakeState.with_gpus(1, compute_processes=[FakeProcess(os.getpid())]))
    code = """
try:
    with claim(required=False):
        pass
except NoFreeGpu as e:
    say(error=str(e))
"""
    rc, [out], err = run(code, env_for(fake))
    assert rc == 0, err
    assert f"GPU 0: 1 unclaimed process ({ME})" in out["error"]


def test_a_gpu_whose_processes_are_unknown_is_never_claimed_automatically(fake_nvml, env_for):
    state = FakeState.with_gpus(2)
    state.gpus[1].compute_processes = [FakeProcess(os.getpid())]  # busy, but nobody can tell
    fake = fake_nvml(state.processes_fail("NOT_SUPPORTED"))  # GeForce boards, an older driver
    code = """
try:
    with claim(count=1):
        pass
except NoFreeGpu as e:
    say(error=str(e))
with claim(gpus=[1]) as c:  # naming the GPU is the user's call
    say(indices=c.gpu_indices)
"""
    rc, [refused, named], err = run(code, env_for(fake))
    assert rc == 0, err
    assert "need 1 free GPU, 0 of 2 free" in refused["error"]
    assert (
        "GPU 0: unknown use (processes unknown: nvmlDeviceGetComputeRunningProcesses_v3: "
        "Not Supported" in refused["error"]
    )
    assert named == {"indices": [1]}


def test_claims_registry_is_made_by_the_first_claimer_when_missing(fake_nvml, env_for, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(1))
    assert not claims_dir.exists()
    rc, _, err = run("with claim(): pass", env_for(fake))
    assert rc == 0, err
    assert oct(claims_dir.stat().st_mode & 0o7777) == "0o1777"
    assert ClaimRegistry(str(claims_dir)).live_claims() == ([], [])


def test_claim_entered_after_cuda_started_warns(fake_nvml, env_for):
    fake = fake_nvml(FakeState.with_gpus(1))
    code = """
import types, warnings
torch = types.ModuleType("torch")
torch.cuda = types.SimpleNamespace(is_initialized=lambda: True)
sys.modules["torch"] = torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with claim():
        pass
say(warnings=[str(w.message) for w in caught])
"""
    rc, [out], err = run(code, env_for(fake))
    assert rc == 0, err
    assert "before the first torch.cuda call" in out["warnings"][0]


def test_a_claimers_child_that_claims_adopts_the_parents_claim(fake_nvml, env_for, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(4))
    code = """
import subprocess
child = '''
import json, os
from gpumon_agent.hook import claim
with claim() as d:
    print(json.dumps({"gpus": d.gpu_indices, "adopted": d.adopted,
                      "cvd": os.environ["CUDA_VISIBLE_DEVICES"]}))
'''
with claim(count=2, job="launcher") as c:
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    say(parent=c.gpu_indices, child=json.loads(out.stdout), err=out.stderr)
say(env=os.environ.get("GPUMON_CLAIM_FILE"))
"""
    rc, (inside, after), err = run(code, env_for(fake))
    assert rc == 0, err
    assert inside["child"] == {"gpus": inside["parent"], "adopted": True, "cvd": "0,1"}, inside
    assert after == {"env": None}
    assert claim_files(claims_dir) == []


def test_progress_that_cannot_be_recorded_warns_and_training_goes_on(fake_nvml, env_for):
    fake = fake_nvml(FakeState.with_gpus(1))
    code = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with claim() as c:
        os.unlink(c.record.path)  # e.g. root cleaned the registry
        c.update(epoch=1)
        say(warnings=[str(w.message) for w in caught])
"""
    rc, [out], err = run(code, env_for(fake))
    assert rc == 0, err
    assert len(out["warnings"]) == 1
    assert "progress not recorded" in out["warnings"][0] and "is gone" in out["warnings"][0]
