"""`kws train` as users run it: a subprocess that claims a GPU through gpumon's trainer hook.

The GPUs are the fake NVML library's (tests/harness/fakenvml.py), so `--gpus auto` finds two
free A100s to claim while torch (a CPU build) trains on the CPU; the registry lives in a temp
dir (GPUMON_CLAIMS_DIR). The claim must show in `gpumon-agent claims --json` and `report --json`
while training, with progress, and be gone after a normal exit, a crash and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.fakenvml import FakeNvml, FakeProcess, FakeState, env_without_nvml

BIN = Path(sys.executable).parent
MODEL = ["--model", "ch8", "--depth", "6", "--bn", "--lr", "0.003", "--batch-size", "16"]
JOB = "kws ch8 d6 bn"


@dataclass
class Run:
    proc: subprocess.Popen
    out: Path
    env: dict[str, str]
    seen: list[dict] = field(default_factory=list)  # every live claim of ours we polled

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def agent(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [str(BIN / "gpumon-agent"), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def live_claims(env: dict[str, str]) -> list[dict]:
    return agent(env, "claims")["claims"]


def claim_files(env: dict[str, str]) -> list[str]:
    folder = Path(env["GPUMON_CLAIMS_DIR"])
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


@pytest.fixture(scope="module")
def gpu_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("kws-claim")
    nvml = FakeNvml(root / "nvml", FakeState.with_gpus(2))
    env = nvml.env(log=False)
    env.update(GPUMON_STATE_DIR=str(root / "state"), GPUMON_CLAIMS_DIR=str(root / "claims"))
    (root / "state").mkdir()
    return env


def start(env, data: Path, out: Path, epochs: int, *extra: str) -> Run:
    command = [str(BIN / "kws"), "train", *MODEL, "--data", str(data), "--out", str(out)]
    command += ["--epochs", str(epochs), "--gpus", "auto", "--threads", "1", *extra]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return Run(proc, out, env)


def watch(run: Run, until_epoch: int | None = None, timeout: float = 120) -> None:
    """Poll the registry until our claim has reached ``until_epoch`` or the process ends."""
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None and time.monotonic() < deadline:
        ours = [c for c in live_claims(run.env) if c["pid"] == run.proc.pid]
        run.seen += ours
        if until_epoch and ours and ours[-1].get("progress", {}).get("epoch", 0) >= until_epoch:
            return
        time.sleep(0.5)  # each poll starts a Python: leave the CPU to the training


@pytest.fixture(scope="module")
def normal_run(gpu_env, synth_set, tmp_path_factory):
    """Six epochs, watched; the Report is taken once the claim shows progress."""
    run = start(gpu_env, synth_set, tmp_path_factory.mktemp("kws-run") / "out", 6)
    watch(run, until_epoch=1)
    report = agent(gpu_env, "report") if run.proc.poll() is None else None
    watch(run)
    rc, err = run.finish()
    return run, rc, err, report


def test_claim_is_visible_while_training_with_job_and_progress(normal_run):
    run, rc, err, report = normal_run
    assert rc == 0, err
    assert run.seen, "the claim never showed in `gpumon-agent claims --json`"
    assert {c["job"] for c in run.seen} == {JOB}
    assert [g["index"] for g in run.seen[0]["gpus"]] == [0]  # --gpus auto: one free GPU
    progress = [c["progress"] for c in run.seen if c.get("progress")]
    assert progress and {"epoch", "loss", "val_acc"} <= set(progress[-1])
    assert report is not None
    on_gpu0 = report["gpus"][0]["claims"]
    assert [c["job"] for c in on_gpu0] == [JOB] and on_gpu0[0]["progress"]["epoch"] >= 1
    assert report["gpus"][1]["claims"] == []


def test_claim_is_gone_after_a_normal_exit(normal_run, gpu_env):
    assert normal_run[1] == 0
    assert live_claims(gpu_env) == [] and claim_files(gpu_env) == []


def test_trains_on_the_cpu_while_holding_a_fake_gpu(normal_run):
    run = normal_run[0]
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert metrics["claimed_gpus"] == [0] and metrics["device"] == "cpu"
    assert metrics["finished"] and len(metrics["epochs"]) == 6
    assert metrics["config"]["threads"] == 1  # --threads 1
    assert (run.out / "last.pt").is_file() and (run.out / "best.pt").is_file()


def test_short_run_learns_well_above_chance(normal_run, synth_set):
    """Six epochs of ch8 d6 bn on 256 synthetic clips: ~0.85 on the training split (chance
    is 1/16); asserted >= 0.5. Validation speakers are unseen voices: not asserted."""
    run = normal_run[0]
    command = [str(BIN / "kws"), "eval", str(run.out / "last.pt"), "--data", str(synth_set)]
    done = subprocess.run(
        [*command, "--split", "train", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["clips"] == 256
    assert result["accuracy"] >= 0.5


def test_claim_is_gone_after_a_crash(gpu_env, synth_set, tmp_path):
    out = tmp_path / "out"
    (out / "last.pt").mkdir(parents=True)  # saving the first checkpoint will fail
    run = start(gpu_env, synth_set, out, 5)
    watch(run)
    rc, err = run.finish()
    assert rc == 1 and "IsADirectoryError" in err
    assert run.seen, "the claim never showed before the crash"
    assert live_claims(gpu_env) == [] and claim_files(gpu_env) == []


def test_claim_is_gone_after_sigterm(gpu_env, synth_set, tmp_path):
    run = start(gpu_env, synth_set, tmp_path / "out", 50)
    watch(run, until_epoch=1)
    assert run.seen and run.proc.poll() is None
    run.proc.send_signal(signal.SIGTERM)
    rc, _ = run.finish(timeout=60)
    assert rc == -signal.SIGTERM
    assert live_claims(gpu_env) == [] and claim_files(gpu_env) == []
    assert (tmp_path / "out" / "last.pt").is_file()  # resumable


def test_without_nvml_it_trains_on_the_cpu_with_no_claim(synth_set, tmp_path):
    env = env_without_nvml(tmp_path)
    env.update(GPUMON_STATE_DIR=str(tmp_path / "state"), GPUMON_CLAIMS_DIR=str(tmp_path / "cl"))
    run = start(env, synth_set, tmp_path / "out", 1, "--quiet")
    rc, err = run.finish()
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["claimed_gpus"] == [] and metrics["device"] == "cpu"
    assert metrics["claimed_cpu"] is False  # no registry here (no agent): nothing recorded
    assert not os.path.exists(tmp_path / "cl")


def test_without_nvml_where_the_agent_runs_it_trains_under_a_cpu_claim(synth_set, tmp_path):
    from gpumon_agent.claims import ClaimRegistry

    env = env_without_nvml(tmp_path)
    env.update(GPUMON_STATE_DIR=str(tmp_path / "state"), GPUMON_CLAIMS_DIR=str(tmp_path / "cl"))
    ClaimRegistry(env["GPUMON_CLAIMS_DIR"]).ensure()  # as the agent makes it at start
    run = start(env, synth_set, tmp_path / "out", 3, "--quiet")
    watch(run, until_epoch=1)
    listing = subprocess.run(
        [str(BIN / "gpumon-agent"), "claims"], env=env, capture_output=True, text=True, timeout=60
    )
    rc, err = run.finish()
    assert rc == 0, err
    assert run.seen, "the CPU claim never showed in `gpumon-agent claims --json`"
    assert {(c["job"], c["cpu"]) for c in run.seen} == {(JOB, True)}
    assert all(c["gpus"] == [] for c in run.seen)
    assert any(c["progress"].get("epoch", 0) >= 1 for c in run.seen)
    row = [line for line in listing.stdout.splitlines() if JOB in line]
    assert row and row[0].split()[0] == "CPU", listing.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["claimed_cpu"] is True and metrics["claimed_gpus"] == []
    assert metrics["device"] == "cpu"
    assert "GPUs claimed: none, a CPU claim" in err
    assert claim_files(env) == []  # released at the end


def test_no_free_gpu_exits_75_with_the_hooks_message(tmp_path, synth_set):
    busy = FakeState.with_gpus(1)
    busy.gpus[0].compute_processes = [FakeProcess(pid=os.getpid())]
    env = FakeNvml(tmp_path / "nvml", busy).env(log=False)
    env.update(GPUMON_STATE_DIR=str(tmp_path / "state"), GPUMON_CLAIMS_DIR=str(tmp_path / "cl"))
    rc, err = start(env, synth_set, tmp_path / "out", 1).finish()
    assert rc == 75, err
    assert "kws train: cannot claim a GPU:" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "last.pt").exists()
