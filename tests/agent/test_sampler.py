"""The Sampler: a complete Report (less claims and warnings) from the fake NVML, real processes
and this host; utilization means over the window; never an exception."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.fakenvml import Child, FakeProcess, FakeState, make_gpu

SETUP = """
import dataclasses, json
from gpumon_agent.report import Report
from gpumon_agent.sampler import Sampler
from gpumon_agent.settings import AgentSettings
# The windows run on this clock: a test moves it (now[0] += seconds), never waits for it.
now = [1000.0]
sampler = Sampler(
    AgentSettings(interval_s={interval}, window_s={window}), call_timeout_s=5, clock=lambda: now[0]
)

def sample():
    return json.loads(sampler.sample().to_json())
"""


@pytest.fixture
def child_sampler():
    """child_sampler(env, interval=2, window=60): a Child holding a Sampler."""
    children = []

    def start(env, interval: float = 2.0, window: float = 60.0) -> Child:
        child = Child(env)
        children.append(child)
        child.run(SETUP.format(interval=interval, window=window))
        return child

    yield start
    for child in children:
        child.close()


@pytest.fixture
def sleepers():
    """Real processes owned by other users (nobody, daemon) and by us, for NVML to list.

    Running as another user needs root, as in CI."""
    started = []

    def spawn(user: str | None, seconds: int) -> int:
        kwargs = {"user": user} if user else {}
        process = subprocess.Popen(["sleep", str(seconds)], **kwargs)
        started.append(process)
        return process.pid

    yield spawn
    for process in started:
        process.kill()
        process.wait()


def test_a_sample_is_a_complete_report(fake_nvml, child_sampler):
    fake = fake_nvml(FakeState.with_gpus(2, utilization_gpu=30))
    child = child_sampler(fake.env(), interval=3, window=45)

    report = child.run("result = sample()")
    round_trips = child.run("r = sampler.sample()\nresult = Report.from_json(r.to_json()) == r")

    assert round_trips is True
    assert report["schema"] == "gpumon.report"
    assert report["source"] == "daemon"
    assert report["generated_at"].endswith("Z")
    assert (report["interval_s"], report["window_s"]) == (3.0, 45.0)
    assert report["agent_version"]
    assert report["timezone"]
    assert isinstance(report["utc_offset_s"], int)
    assert report["host"]["hostname"] == os.uname().nodename
    assert report["host"]["cpu_count"] == os.cpu_count()
    assert report["nvml"]["available"] is True
    assert [g["utilization_mean_pct"] for g in report["gpus"]] == [30.0, 30.0]
    assert report["warnings"] == []  # compose.py adds warnings and claims
    assert all(g["claims"] == [] for g in report["gpus"])


def test_processes_show_their_real_users_and_commands(fake_nvml, child_sampler, sleepers):
    nobody = sleepers("nobody", 61)
    daemon = sleepers("daemon", 62)
    mine = sleepers(None, 63)
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: NVML still lists it, psutil no longer finds it
    state = FakeState(
        gpus=[
            make_gpu(0, compute_processes=[FakeProcess(nobody), FakeProcess(gone.pid)]),
            make_gpu(1, compute_processes=[FakeProcess(daemon), FakeProcess(mine)]),
        ]
    )
    fake = fake_nvml(state)
    child = child_sampler(fake.env())

    report = child.run("result = sample()")

    seen = {p["pid"]: (p["user"], p["command"]) for g in report["gpus"] for p in g["processes"]}
    assert seen == {
        nobody: ("nobody", "sleep 61"),
        daemon: ("daemon", "sleep 62"),
        mine: ("root", "sleep 63"),
        gone.pid: ("?", "?"),
    }


def test_a_process_that_exits_between_samples_becomes_unknown(fake_nvml, child_sampler, sleepers):
    pid = sleepers(None, 60)
    fake = fake_nvml(FakeState.with_gpus(1, compute_processes=[FakeProcess(pid)]))
    child = child_sampler(fake.env())
    before = child.run("result = sample()")["gpus"][0]["processes"]

    os.kill(pid, 9)
    os.waitpid(pid, 0)
    after = child.run("result = sample()")["gpus"][0]["processes"]

    assert before[0]["command"] == "sleep 60"
    assert (after[0]["pid"], after[0]["user"], after[0]["command"]) == (pid, "?", "?")


def test_the_mean_covers_the_window_only(fake_nvml, child_sampler):
    state = FakeState.with_gpus(1)
    fake = fake_nvml(state)
    child = child_sampler(fake.env(), interval=0.1, window=1.5)

    means = []
    for at, utilization in ((1000.25, 10), (1000.5, 20), (1000.75, 30), (1001.0, 60)):
        state.gpus[0].utilization_gpu = utilization
        fake.write(state)
        gpu = child.run(f"now[0] = {at}; result = sample()")["gpus"][0]
        means.append(gpu["utilization_mean_pct"])
    at_the_edge = child.run("now[0] = 1002.5; result = sample()")["gpus"][0]  # 1001.0 + window
    state.gpus[0].utilization_gpu = 90
    fake.write(state)
    after_window = child.run("now[0] = 1004.25; result = sample()")["gpus"][0]  # all out

    assert means == [10.0, 15.0, 20.0, 30.0]
    assert at_the_edge["utilization_mean_pct"] == 60.0  # 60 (at 1001.0) and 60 now; 10-30 left
    assert (after_window["utilization_pct"], after_window["utilization_mean_pct"]) == (90.0, 90.0)


def test_the_history_is_bounded_and_forgets_gpus_that_left(fake_nvml, child_sampler):
    state = FakeState.with_gpus(2, utilization_gpu=40)
    fake = fake_nvml(state)
    child = child_sampler(fake.env(), interval=1, window=10)

    child.run("for _ in range(40): sampler.sample()")
    lengths = child.run("result = sorted(len(h) for h in sampler._history.values())")
    state.gpus.pop()
    fake.write(state)
    child.run("sampler.sample()")
    remaining = child.run("result = list(sampler._history)")

    assert lengths == [12, 12]  # window / interval + 2, however often sample() runs
    assert remaining == [state.gpus[0].uuid]


def test_a_lost_gpu_has_no_mean(fake_nvml, child_sampler):
    state = FakeState.with_gpus(2, utilization_gpu=70)
    fake = fake_nvml(state)
    child = child_sampler(fake.env())
    child.run("sampler.sample()")

    state.gpus[0].lost = True
    fake.write(state)
    report = child.run("result = sample()")

    assert report["gpus"][0]["state"] == "lost"
    assert report["gpus"][0]["utilization_mean_pct"] is None
    assert report["gpus"][1]["utilization_mean_pct"] == 70.0


def test_a_cpu_only_host_is_reported_with_the_reason(no_nvml_env, child_sampler):
    child = child_sampler(no_nvml_env)

    report = child.run("result = sample()")

    assert report["gpus"] == []
    assert report["nvml"]["error_code"] == "library_not_found"
    assert report["host"]["memory_total_bytes"] > 0
    assert report["host"]["load_avg"] is not None


def test_sample_never_raises(fake_nvml, child_sampler):
    # Nothing real makes the host reader raise (it guards every value); a patch forces it.
    fake = fake_nvml(FakeState.with_gpus(1))
    child = child_sampler(fake.env())
    child.run(
        "def broken():\n    raise RuntimeError('host exploded')\nsampler._host.read = broken\n"
    )

    report = child.run("result = sample()")

    assert report["notes"] and "host exploded" in report["notes"][0]
    assert report["nvml"]["available"] is False
    assert report["interval_s"] == 2.0


def test_close_shuts_nvml_down(fake_nvml, child_sampler):
    fake = fake_nvml(FakeState.with_gpus(1))
    child = child_sampler(fake.env())
    child.run("sampler.sample()")

    child.run("sampler.close()")

    assert fake.calls()[-1] == ("nvmlShutdown", -1)


def test_the_light_modules_do_not_import_pynvml_or_psutil():
    code = (
        "import sys, gpumon_agent, gpumon_agent.cli, gpumon_agent.health, gpumon_agent.report\n"
        "print(sorted(m for m in ('pynvml', 'psutil') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"
