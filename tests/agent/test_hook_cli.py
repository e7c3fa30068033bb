"""`gpumon claim -- CMD`: any command runs with GPUs claimed; its exit status comes back, signals
sent to gpumon reach it once, and the claim is released when it ends."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from harness.fakenvml import FakeProcess, FakeState

GPUMON = str(Path(sys.executable).parent / "gpumon")


@pytest.fixture
def claims_dir(tmp_path: Path) -> Path:
    return tmp_path / "claims"


@pytest.fixture
def env(fake_nvml, claims_dir) -> dict:
    fake = fake_nvml(FakeState.with_gpus(2))
    env = fake.env(log=False)
    env["GPUMON_CLAIMS_DIR"] = str(claims_dir)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def claim_files(claims_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(claims_dir) if not n.startswith("."))


def gpumon_claim(env: dict, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [GPUMON, "claim", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_command_runs_with_the_claim_and_its_exit_status_comes_back(env, claims_dir):
    script = (
        'echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"; cat "$GPUMON_CLAIM_FILE"; echo; exit 3'
    )
    proc = gpumon_claim(env, "--gpus", "1", "--job", "sweep lr=0.1", "--", "sh", "-c", script)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    first, record = out.splitlines()[:2]
    assert first == "1 PCI_BUS_ID"
    data = json.loads(record)
    assert data["job"] == "sweep lr=0.1"
    assert data["pid"] == proc.pid  # the claim lives as long as gpumon claim does
    assert data["command"].startswith("sh -c ")
    assert [g["index"] for g in data["gpus"]] == [1]
    assert claim_files(claims_dir) == []


def test_a_command_killed_by_a_signal_gives_128_plus_the_signal(env, claims_dir):
    proc = gpumon_claim(env, "--", "sh", "-c", "kill -KILL $$")
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
    assert claim_files(claims_dir) == []


def test_sigterm_to_gpumon_is_forwarded_and_the_claim_released(env, claims_dir):
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    proc = gpumon_claim(env, "--", "sh", "-c", script)
    assert proc.stdout.readline().strip() == "ready"
    assert len(claim_files(claims_dir)) == 1
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert out.strip() == "got TERM"
    assert proc.returncode == 7, err
    assert claim_files(claims_dir) == []


def test_a_command_that_dies_of_the_forwarded_signal_gives_143(env, claims_dir):
    proc = gpumon_claim(env, "--", "sh", "-c", "echo ready; exec sleep 60")
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert claim_files(claims_dir) == []


# Reports every SIGINT it gets: who sent it (pid; 0 for the kernel) and how (si_code). Taken
# with sigtimedwait, so two deliveries are seen as two unless the second arrives before the first
# was taken (then the kernel merges them: a duplicate can go unseen, a clean run never fails).
COUNT_SIGINT = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("ready", flush=True)
seen = [signal.sigtimedwait({signal.SIGINT}, 30)]
while seen[-1] is not None:
    seen.append(signal.sigtimedwait({signal.SIGINT}, 0.5))
print("sigints", [[i.si_code, i.si_pid] for i in seen[:-1]], flush=True)
"""
SI_USER, SI_KERNEL = 0, 0x80


def sigints(out: str) -> list:
    # On a terminal the line follows the echoed "^C".
    return json.loads(out.split("sigints ", 1)[1].splitlines()[0])


def test_sigint_sent_to_gpumon_reaches_the_command_once(env, claims_dir):
    proc = gpumon_claim(env, "--", sys.executable, "-c", COUNT_SIGINT)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert sigints(out) == [[SI_USER, proc.pid]], err  # relayed by gpumon
    assert proc.returncode == 0
    assert claim_files(claims_dir) == []


def test_terminal_ctrl_c_reaches_the_command_once_not_twice(env, claims_dir):
    # gpumon claim as the foreground job of its own terminal: ^C signals the whole process
    # group (gpumon and the command); gpumon must not relay it a second time.
    master, slave = os.openpty()

    def take_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [GPUMON, "claim", "--", sys.executable, "-c", COUNT_SIGINT],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    try:
        seen = _read_until(master, b"ready")
        os.write(master, b"\x03")
        seen += _read_until(master, b"sigints")
        seen += _read_until(master, b"\n")
        assert proc.wait(timeout=30) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert sigints(seen.decode()) == [[SI_KERNEL, 0]]  # the terminal's, and no relayed copy
    assert claim_files(claims_dir) == []


def _read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} on the terminal; got {data!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_claim_inside_gpumon_claim_adopts_it_instead_of_claiming_more(env, claims_dir):
    trainer = """
import json, os
from gpumon_agent.hook import claim
with claim(job="inner") as c:
    c.update(epoch=2)
    names = [n for n in os.listdir(os.environ["GPUMON_CLAIMS_DIR"]) if not n.startswith(".")]
    print(json.dumps({"gpus": c.gpu_indices, "adopted": c.adopted, "files": len(names),
                      "file": json.load(open(os.environ["GPUMON_CLAIM_FILE"]))}))
print(json.dumps({"still": os.path.exists(os.environ["GPUMON_CLAIM_FILE"])}), flush=True)
"""
    proc = gpumon_claim(env, "--gpus", "1", "--job", "outer", "--", sys.executable, "-c", trainer)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    inside, after = (json.loads(line) for line in out.splitlines())
    assert (inside["gpus"], inside["adopted"], inside["files"]) == ([1], True, 1)
    assert inside["file"]["job"] == "outer"
    assert inside["file"]["progress"] == {"epoch": 2}
    assert after == {"still": True}  # the outer claim is gpumon claim's to release
    assert claim_files(claims_dir) == []


def test_no_free_gpu_exits_75_with_the_reason(fake_nvml, env, claims_dir):
    fake = fake_nvml(FakeState.with_gpus(1, compute_processes=[FakeProcess(1)]), name="busy")
    busy = dict(env, **{k: v for k, v in fake.env(log=False).items() if "NVML" in k})
    busy["LD_LIBRARY_PATH"] = fake.env(log=False)["LD_LIBRARY_PATH"]
    proc = gpumon_claim(busy, "--", "true")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75
    assert "gpumon claim: need 1 free GPU, 0 of 1 free — GPU 0: 1 unclaimed process" in err


def test_a_missing_command_exits_127(env, claims_dir):
    proc = gpumon_claim(env, "--", "no-such-command-xyz")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 127
    assert "no-such-command-xyz: command not found" in err
    assert claim_files(claims_dir) == []


def test_claims_lists_what_is_held(env, claims_dir):
    proc = gpumon_claim(env, "--job", "listed", "--", "sh", "-c", "gpumon-agent claims --json")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert [(c["job"], c["pid"]) for c in data["claims"]] == [("listed", proc.pid)]
    assert data["errors"] == []


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def blocks(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return bool(mask & (1 << (signum - 1)))


def test_sigterm_while_waiting_for_the_lock_never_starts_the_command(env, claims_dir, tmp_path):
    from gpumon_agent.claims import ClaimRegistry

    ClaimRegistry(str(claims_dir)).ensure()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(claims_dir / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    started = tmp_path / "started"
    proc = gpumon_claim(env, "--", "touch", str(started))
    try:
        deadline = time.monotonic() + 30
        while not blocks(proc.pid, signal.SIGTERM):  # gpumon is up, now waiting for the lock
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
    finally:
        holder.communicate("\n", timeout=30)  # let go of the lock
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not started.exists()
    assert claim_files(claims_dir) == []


def test_without_nvml_gpumon_claim_exits_1_and_runs_nothing(no_nvml_env, claims_dir, tmp_path):
    env = dict(no_nvml_env, GPUMON_CLAIMS_DIR=str(claims_dir))
    started = tmp_path / "started"
    proc = gpumon_claim(env, "--", "touch", str(started))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "gpumon claim: cannot read the GPUs through NVML" in err
    assert "for a CPU-only job, use `gpumon claim --cpu" in err and "required=False" not in err
    assert not started.exists()
