"""Prometheus /metrics: served on loopback by the daemon when asked, with the documented names,
the Report's values, and nothing made up for values the agent could not read."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request

import pytest
from agent_proc import AGENT, Daemon, agent_env
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpumon_agent import metrics
from gpumon_agent.daemon import DaemonState
from gpumon_agent.metrics import MetricsError, ReportCollector, parse_listen
from gpumon_agent.report import (
    ClaimFileProblem,
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    Host,
    LoggedInUser,
    Nvml,
    Report,
    utc_iso,
)
from gpumon_agent.settings import AgentSettings
from harness.fakenvml import FakeProcess, FakeState, make_gpu
from harness.timing import SLACK_S


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} from an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def documented_names() -> set[str]:
    return set(re.findall(r"``(gpumon_[a-z_0-9]+)", metrics.__doc__ or ""))


def test_daemon_serves_metrics_on_loopback_with_the_documented_names(tmp_path, fake_nvml):
    gpus = [
        make_gpu(0, utilization_gpu=37, temperature=61, power_usage_mw=123_000),
        make_gpu(1, compute_processes=[FakeProcess(pid=1)]),
    ]
    fake = fake_nvml(FakeState(gpus=gpus))
    state = tmp_path / "state"
    with Daemon(
        agent_env(fake.env(), state), state, ("--interval", "0.2", "--metrics", "127.0.0.1:0")
    ) as daemon:
        port = daemon.metrics_port()
        daemon.wait_snapshot()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        assert daemon.stop() == 0

    got = samples(text)
    uuid0 = gpus[0].uuid
    assert got[("gpumon_gpu_utilization_percent", (("gpu", "0"), ("uuid", uuid0)))] == 37.0
    assert got[("gpumon_gpu_temperature_celsius", (("gpu", "0"), ("uuid", uuid0)))] == 61.0
    assert got[("gpumon_gpu_power_watts", (("gpu", "0"), ("uuid", uuid0)))] == 123.0
    assert got[("gpumon_gpu_processes", (("gpu", "1"), ("uuid", gpus[1].uuid)))] == 1.0
    assert got[("gpumon_nvml_up", ())] == 1.0
    assert got[("gpumon_last_sample_ok", ())] == 1.0
    assert got[("gpumon_samples_total", ())] >= 1
    stale_s = AgentSettings().max_age_s  # a report this old is stale: the daemon samples anew
    assert 0 <= got[("gpumon_report_age_seconds", ())] < stale_s + SLACK_S
    names = {name for name, _ in got}
    assert {"gpumon_host_load_average", "gpumon_host_memory_used_bytes"} <= names
    assert "process_resident_memory_bytes" in names  # the daemon's own footprint
    assert names & documented_names() >= documented_names() - OPTIONAL_IN_A_PLAIN_SAMPLE


# Names that need something the plain fake sample lacks (a warning, a bad claim file, swap...).
OPTIONAL_IN_A_PLAIN_SAMPLE = {
    "gpumon_warnings",
    "gpumon_host_swap_used_bytes",
    "gpumon_host_swap_total_bytes",
    "gpumon_host_cpu_percent",
    "gpumon_gpu_utilization_mean_percent",
    "gpumon_gpu_memory_utilization_percent",
    "gpumon_gpu_power_limit_watts",
    "gpumon_host_logged_in_users",
}


def full_report() -> Report:
    gpu = Gpu(
        index=0,
        uuid="GPU-full",
        name="NVIDIA A100",
        pci_bus_id="00000000:07:00.0",
        utilization_pct=90.0,
        utilization_mean_pct=80.0,
        memory_utilization_pct=30.0,
        memory_used_bytes=1 << 30,
        memory_total_bytes=80 << 30,
        temperature_c=70.0,
        power_w=300.0,
        power_limit_w=400.0,
        processes=[GpuProcess(pid=4242, user="alice", command="python train.py")],
        claims=[ClaimInfo(job="j", user="alice", pid=4242, started_at=utc_iso(0))],
        unclaimed_use=False,
        claimed_idle=False,
    )
    return Report(
        generated_at=utc_iso(1_700_000_000),
        host=Host(
            hostname="h",
            load_avg=[1.0, 2.0, 3.0],
            cpu_count=8,
            cpu_percent=12.5,
            memory_total_bytes=64 << 30,
            memory_used_bytes=8 << 30,
            swap_total_bytes=8 << 30,
            swap_used_bytes=0,
            disk_root_total_bytes=100 << 30,
            disk_root_used_bytes=50 << 30,
            users=[LoggedInUser(name="alice"), LoggedInUser(name="alice"), LoggedInUser("bob")],
        ),
        agent_version="0.1.0",
        nvml=Nvml(available=True, driver_version="535.154.05"),
        gpus=[gpu, Gpu(index=1, uuid="GPU-lost", state="lost", error="fell off the bus")],
        warnings=[
            HealthWarning(code="gpu_hot", message="hot", gpu_index=0),
            HealthWarning(code="gpu_hot", message="hot", gpu_index=1),
        ],
        claim_errors=[ClaimFileProblem(path="/run/gpumon/claims/x.json", error="bad")],
    )


def exposition(report: Report | None, now: float = 1_700_000_010) -> str:
    state = DaemonState()
    state.report = report
    state.samples, state.sample_errors, state.sample_ok = 7, 2, True
    registry = CollectorRegistry()
    registry.register(ReportCollector(state, clock=lambda: now))
    return generate_latest(registry).decode()


def test_every_documented_name_is_exported_for_a_full_report():
    names = {name for name, _ in samples(exposition(full_report()))}
    missing = documented_names() - names - {"gpumon_samples_total", "gpumon_sample_errors_total"}
    assert missing == set()
    assert {"gpumon_samples_total", "gpumon_sample_errors_total"} <= names


def test_values_and_labels_follow_the_report():
    got = samples(exposition(full_report()))
    ok0 = (("gpu", "0"), ("uuid", "GPU-full"))
    lost = (("gpu", "1"), ("uuid", "GPU-lost"))
    assert got[("gpumon_gpu_memory_total_bytes", ok0)] == float(80 << 30)
    assert got[("gpumon_gpu_utilization_mean_percent", ok0)] == 80.0
    assert got[("gpumon_gpu_claims", ok0)] == 1.0
    assert got[("gpumon_gpu_ok", ok0)] == 1.0 and got[("gpumon_gpu_ok", lost)] == 0.0
    assert got[("gpumon_warnings", (("code", "gpu_hot"),))] == 2.0
    assert got[("gpumon_claim_errors", ())] == 1.0
    assert got[("gpumon_host_load_average", (("period", "15m"),))] == 3.0
    assert got[("gpumon_host_logged_in_users", ())] == 2.0
    assert got[("gpumon_report_age_seconds", ())] == 10.0
    assert got[("gpumon_sample_errors_total", ())] == 2.0
    info = (("driver", "535.154.05"), ("version", "0.1.0"))
    assert got[("gpumon_agent_info", info)] == 1.0


def test_values_the_agent_could_not_read_are_left_out_not_zero():
    got = samples(exposition(full_report()))
    lost = (("gpu", "1"), ("uuid", "GPU-lost"))
    assert ("gpumon_gpu_utilization_percent", lost) not in got
    assert ("gpumon_gpu_temperature_celsius", lost) not in got


def test_unknown_processes_and_verdicts_are_left_out_not_exported_as_none():
    report = full_report()
    gpu = report.gpus[0]
    gpu.processes, gpu.processes_error = None, "nvmlDeviceGetComputeRunningProcesses_v3: x"
    gpu.claims, gpu.unclaimed_use, gpu.claimed_idle = [], None, False
    report.host.users = None

    got = samples(exposition(report))

    ok0 = (("gpu", "0"), ("uuid", "GPU-full"))
    assert ("gpumon_gpu_processes", ok0) not in got  # 0 would read "nobody"
    assert ("gpumon_gpu_unclaimed_use", ok0) not in got
    assert got[("gpumon_gpu_claimed_idle", ok0)] == 0.0  # not claimed: that much is known
    assert ("gpumon_host_logged_in_users", ()) not in got


def test_before_the_first_sample_only_the_daemons_own_figures():
    names = {name for name, _ in samples(exposition(None))}
    assert names == {
        "gpumon_samples_total",
        "gpumon_sample_errors_total",
        "gpumon_last_sample_ok",
        "gpumon_sample_duration_seconds",
        "gpumon_nvml_hung_calls",
    }


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("9835", ("127.0.0.1", 9835)),
        ("127.0.0.1:9835", ("127.0.0.1", 9835)),
        ("localhost:9835", ("127.0.0.1", 9835)),
        ("0.0.0.0:9835", ("0.0.0.0", 9835)),
        ("[::1]:9835", ("::1", 9835)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_listen_address_forms(spec, expected):
    assert parse_listen(spec) == expected


@pytest.mark.parametrize("spec", ["", "http", "gpu1.lab:9835", "9835x", "70000", "[::1]9835"])
def test_bad_listen_addresses_are_refused_without_a_lookup(spec):
    with pytest.raises(MetricsError, match=r"give PORT .* numeric address"):
        parse_listen(spec)


def test_daemon_with_a_bad_metrics_address_exits_with_the_reason(tmp_path, no_nvml_env):
    done = subprocess.run(
        [str(AGENT), "run", "--metrics", "gpu1.lab:9835"],
        env=agent_env(no_nvml_env, tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--metrics 'gpu1.lab:9835': give PORT" in done.stderr


def test_daemon_with_a_port_in_use_exits_with_the_reason(tmp_path, no_nvml_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(AGENT), "run", "--metrics", str(port)],
            env=agent_env(no_nvml_env, tmp_path / "state"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot serve /metrics on 127.0.0.1:{port}: Address already in use" in done.stderr
