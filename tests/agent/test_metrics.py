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
from gpumon_agent.metrics import MetricsError, ReportCollector, ScrapeStats, parse_listen
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
from harness.paths import REPO
from harness.timing import SLACK_S

DOCS = REPO / "docs" / "metrics.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} from an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict, metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` whose labels include ``labels``."""
    found = [v for (n, lv), v in got.items() if n == metric and set(labels.items()) <= set(lv)]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def has(got: dict, metric: str, /, **labels: str) -> bool:
    return any(n == metric and set(labels.items()) <= set(lv) for (n, lv) in got)


def documented_names() -> set[str]:
    """Every gpumon metric docs/metrics.md lists."""
    return set(re.findall(r"`(gpumon_[a-z_0-9]+)`", DOCS.read_text()))


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
        for _ in range(2):  # the second answer reports the first one's cost
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = r.read().decode()
        assert daemon.stop() == 0

    got = samples(text)
    gpu0 = {"gpu": "0", "uuid": gpus[0].uuid, "name": gpus[0].name}
    assert value(got, "gpumon_gpu_utilization_ratio", **gpu0) == 0.37
    assert value(got, "gpumon_gpu_temperature_celsius", **gpu0) == 61.0
    assert value(got, "gpumon_gpu_power_watts", **gpu0) == 123.0
    assert value(got, "gpumon_gpu_processes", gpu="1") == 1.0
    assert value(got, "gpumon_nvml_up") == 1.0
    assert value(got, "gpumon_last_sample_ok") == 1.0
    assert value(got, "gpumon_samples_total") >= 1
    stale_s = AgentSettings().max_age_s  # a report this old is stale: the daemon samples anew
    assert 0 <= value(got, "gpumon_report_age_seconds") < stale_s + SLACK_S
    assert value(got, "gpumon_scrapes_total") >= 1
    assert 0 < value(got, "gpumon_scrape_duration_seconds") < 5
    assert value(got, "gpumon_scrape_size_bytes") > 1000
    hostname = value_labels(got, "gpumon_host_info")["hostname"]
    assert all(dict(lv).get("server") == hostname for n, lv in got if n.startswith("gpumon_"))
    names = {name for name, _ in got}
    assert {"gpumon_host_load_average", "gpumon_host_memory_used_bytes"} <= names
    assert "process_resident_memory_bytes" in names  # the daemon's own footprint
    assert not any(n.startswith("DCGM_") for n in names)  # only when asked for
    assert names & documented_names() >= documented_names() - OPTIONAL_IN_A_PLAIN_SAMPLE


def value_labels(got: dict, name: str) -> dict[str, str]:
    found = [dict(lv) for (n, lv) in got if n == name]
    assert len(found) == 1, (name, found)
    return found[0]


# Names that need something the plain fake sample lacks (a warning, a bad claim file, swap...).
OPTIONAL_IN_A_PLAIN_SAMPLE = {
    "gpumon_health_warning",
    "gpumon_host_swap_used_bytes",
    "gpumon_host_swap_total_bytes",
    "gpumon_host_swap_used_ratio",
    "gpumon_host_cpu_utilization_ratio",
    "gpumon_gpu_utilization_mean_ratio",
    "gpumon_gpu_memory_utilization_ratio",
    "gpumon_gpu_power_limit_watts",
    "gpumon_gpu_throttled",
    "gpumon_gpu_user_memory_used_bytes",
    "gpumon_gpu_idle_since_timestamp_seconds",
    "gpumon_host_logged_in_users",
    "gpumon_host_gpus_expected",
    "gpumon_claim_info",
    "gpumon_claim_started_timestamp_seconds",
    "gpumon_claim_progress",
    "gpumon_claim_error_info",
    "gpumon_cpu_claim_info",
    "gpumon_cpu_claim_started_timestamp_seconds",
    "gpumon_nvml_error_info",
    "gpumon_metrics_folded",
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
        throttle_reasons=["power_cap"],
        processes=[
            GpuProcess(
                pid=4242,
                user="alice",
                command="/usr/bin/python3 -u train.py --lr 1",
                gpu_memory_bytes=1 << 29,
            ),
            GpuProcess(
                pid=4243, user="alice", command="python3 train.py", gpu_memory_bytes=1 << 29
            ),
        ],
        claims=[
            ClaimInfo(
                job="j",
                user="alice",
                pid=4242,
                started_at=utc_iso(1_600_000_000),
                progress={"loss": 0.25, "epoch": 3, "epochs": 30, "note": "warm-up", "ok": True},
            )
        ],
        unclaimed_use=False,
        claimed_idle=False,
        idle_since=utc_iso(1_650_000_000),
    )
    return Report(
        generated_at=utc_iso(1_700_000_000),
        host=Host(
            hostname="h",
            primary_ip="192.0.2.7",
            boot_time=utc_iso(1_500_000_000),
            load_avg=[1.0, 2.0, 3.0],
            cpu_count=8,
            cpu_percent=12.5,
            memory_total_bytes=64 << 30,
            memory_used_bytes=8 << 30,
            memory_percent=15.0,
            swap_total_bytes=8 << 30,
            swap_used_bytes=0,
            swap_percent=0.0,
            disk_root_total_bytes=100 << 30,
            disk_root_used_bytes=50 << 30,
            disk_root_percent=50.0,
            users=[LoggedInUser(name="alice"), LoggedInUser(name="alice"), LoggedInUser("bob")],
        ),
        agent_version="0.1.0",
        interval_s=2.0,
        window_s=60.0,
        nvml=Nvml(available=True, driver_version="535.154.05"),
        gpus=[gpu, Gpu(index=1, uuid="GPU-lost", state="lost", error="fell off the bus")],
        warnings=[
            HealthWarning(code="gpu_lost", message="GPU 1 lost", gpu_index=1),
            HealthWarning(code="load_high", message="load"),
        ],
        claim_errors=[ClaimFileProblem(path="/run/gpumon/claims/x.json", error="bad")],
        cpu_claims=[ClaimInfo(job="prep", user="niv", pid=4243, started_at="2023-11-14T22:10:00Z")],
    )


def exposition(report: Report | None, now: float = 1_700_000_010, dcgm_names: bool = False) -> str:
    state = DaemonState()
    state.report = report
    state.samples, state.sample_errors, state.sample_ok = 7, 2, True
    state.expected_gpus = 2
    stats = ScrapeStats()
    stats.record(0.003, 12345)
    registry = CollectorRegistry()
    collector = ReportCollector(state, clock=lambda: now, dcgm_names=dcgm_names, stats=stats)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_every_documented_name_is_exported_for_a_full_report():
    report = full_report()
    names = {name for name, _ in samples(exposition(report))}
    report.nvml = Nvml(available=False, error="no driver", error_code="library_not_found")
    names |= {name for name, _ in samples(exposition(report))}
    assert documented_names() - names - {"gpumon_metrics_folded"} == set()


def test_every_exported_name_is_documented():
    report = full_report()
    names = {name for name, _ in samples(exposition(report, dcgm_names=True))}
    gpumon = {n for n in names if n.startswith("gpumon_")}
    assert gpumon - documented_names() == set()
    text = DOCS.read_text()
    assert all(f"`{n}`" in text for n in names if n.startswith("DCGM_"))


def test_values_and_labels_follow_the_report():
    got = samples(exposition(full_report()))
    ok0 = {"gpu": "0", "uuid": "GPU-full", "name": "NVIDIA A100", "server": "h"}
    lost = {"gpu": "1", "uuid": "GPU-lost"}
    assert value(got, "gpumon_gpu_memory_total_bytes", **ok0) == float(80 << 30)
    assert value(got, "gpumon_gpu_utilization_mean_ratio", **ok0) == 0.8
    assert value(got, "gpumon_gpu_claims", **ok0) == 1.0
    assert value(got, "gpumon_gpu_ok", **ok0) == 1.0 and value(got, "gpumon_gpu_ok", **lost) == 0
    assert value(got, "gpumon_gpu_info", **lost, state="lost", error="fell off the bus") == 1.0
    assert value(got, "gpumon_gpu_throttled", **ok0, reason="power_cap") == 1.0
    assert value(got, "gpumon_gpu_throttle_reasons", **ok0) == 1.0
    assert value(got, "gpumon_health_warning", code="gpu_lost", gpu="1") == 1.0
    assert value(got, "gpumon_health_warning", code="load_high", gpu="") == 1.0
    assert value(got, "gpumon_claim_errors") == 1.0
    assert value(got, "gpumon_claim_error_info", file="x.json", error="bad") == 1.0
    assert value(got, "gpumon_host_load_average", period="15m") == 3.0
    assert value(got, "gpumon_host_logged_in_users") == 2.0
    assert value(got, "gpumon_host_memory_used_ratio") == 0.15
    assert value(got, "gpumon_host_gpus_expected") == 2.0
    assert value(got, "gpumon_host_info", hostname="h", primary_ip="192.0.2.7") == 1.0
    assert value(got, "gpumon_report_age_seconds") == 10.0
    assert value(got, "gpumon_report_timestamp_seconds") == 1_700_000_000
    assert value(got, "gpumon_sample_errors_total") == 2.0
    assert value(got, "gpumon_scrape_duration_seconds") == 0.003
    assert value(got, "gpumon_agent_info", driver_version="535.154.05", version="0.1.0") == 1.0


def test_processes_are_exported_by_user_and_program_never_by_pid():
    got = samples(exposition(full_report()))
    who = {"gpu": "0", "user": "alice", "command": "python3 train.py"}
    assert value(got, "gpumon_gpu_user_processes", **who) == 2.0
    assert value(got, "gpumon_gpu_user_memory_used_bytes", **who) == float(1 << 30)
    assert value(got, "gpumon_gpu_processes", gpu="0") == 2.0
    assert not any("pid" in dict(lv) for _, lv in got)


def test_claims_are_info_series_per_gpu_with_numeric_progress_only():
    got = samples(exposition(full_report()))
    claim = {"gpu": "0", "user": "alice", "job_name": "j", "uuid": "GPU-full"}
    assert value(got, "gpumon_claim_info", **claim) == 1.0
    assert value(got, "gpumon_claim_started_timestamp_seconds", **claim) == 1_600_000_000
    keys = {dict(lv)["key"]: v for (n, lv), v in got.items() if n == "gpumon_claim_progress"}
    assert keys == {"epoch": 3.0, "epochs": 30.0, "loss": 0.25}  # not text, not booleans


def test_values_the_agent_could_not_read_are_left_out_not_zero():
    got = samples(exposition(full_report()))
    for name in (
        "gpumon_gpu_utilization_ratio",
        "gpumon_gpu_temperature_celsius",
        "gpumon_gpu_throttle_reasons",
        "gpumon_gpu_processes",
    ):
        assert not has(got, name, gpu="1"), name


def test_unknown_processes_and_verdicts_are_left_out_not_exported_as_none():
    report = full_report()
    gpu = report.gpus[0]
    gpu.processes, gpu.processes_error = None, "nvmlDeviceGetComputeRunningProcesses_v3: x"
    gpu.claims, gpu.unclaimed_use, gpu.claimed_idle = [], None, False
    gpu.throttle_reasons = None
    report.host.users = None

    got = samples(exposition(report))

    assert not has(got, "gpumon_gpu_processes", gpu="0")  # 0 would read "nobody"
    assert not has(got, "gpumon_gpu_user_processes", gpu="0")
    assert not has(got, "gpumon_gpu_unclaimed_use", gpu="0")
    assert not has(got, "gpumon_gpu_throttle_reasons", gpu="0")  # unknown, not "none"
    assert value(got, "gpumon_gpu_claimed_idle", gpu="0") == 0.0  # not claimed: that much is known
    assert value(got, "gpumon_gpu_info", gpu="0", processes_error=gpu.processes_error) == 1.0
    assert not has(got, "gpumon_host_logged_in_users")


def test_no_throttling_is_a_zero_count_not_a_missing_one():
    report = full_report()
    report.gpus[0].throttle_reasons = []
    got = samples(exposition(report))
    assert value(got, "gpumon_gpu_throttle_reasons", gpu="0") == 0.0
    assert not has(got, "gpumon_gpu_throttled", gpu="0")


def test_fifty_users_on_one_gpu_make_at_most_eight_series_and_the_rest_is_counted():
    report = full_report()
    gpu = report.gpus[0]
    gpu.processes = [
        GpuProcess(pid=100 + i, user=f"user{i:02d}", command=f"prog{i} --x", gpu_memory_bytes=i)
        for i in range(50)
    ] + [GpuProcess(pid=99, user="user49", command="prog49", gpu_memory_bytes=1000)]

    got = samples(exposition(report))

    series = {dict(lv)["user"]: v for (n, lv), v in got.items() if n == "gpumon_gpu_user_processes"}
    assert len(series) == metrics.MAX_PROCESS_GROUPS
    assert series["user49"] == 2.0  # the largest groups are the ones kept
    assert series[metrics.FOLDED] == 51 - sum(v for u, v in series.items() if u != metrics.FOLDED)
    assert sum(series.values()) == value(got, "gpumon_gpu_processes", gpu="0") == 51
    assert value(got, "gpumon_metrics_folded", what="process_groups") == 50 - 7


def test_fifty_thousand_character_names_are_cut_in_labels():
    report = full_report()
    long = "u" * 50_000
    report.gpus[0].processes = [GpuProcess(pid=1, user=long, command="x" * 50_000)]
    report.gpus[0].claims[0].job = "j" * 50_000
    text = exposition(report)
    got = samples(text)
    labels = value_labels_of(got, "gpumon_gpu_user_processes")
    assert len(labels["user"]) == len(labels["command"]) == metrics.LABEL_CHARS
    assert labels["user"].endswith("…")
    assert len(value_labels_of(got, "gpumon_claim_info")["job_name"]) == metrics.LABEL_CHARS
    assert len(text) < 20_000


def value_labels_of(got: dict, name: str) -> dict[str, str]:
    return value_labels(got, name)


def test_many_claims_on_one_gpu_are_capped_and_counted():
    report = full_report()
    report.gpus[0].claims = [
        ClaimInfo(job=f"job{i}", user="alice", pid=i + 1, started_at=utc_iso(1_600_000_000 + i))
        for i in range(10)
    ]
    got = samples(exposition(report))
    assert sum(1 for n, _ in got if n == "gpumon_claim_info") == metrics.MAX_CLAIMS_PER_GPU
    assert value(got, "gpumon_gpu_claims", gpu="0") == 10.0
    assert value(got, "gpumon_metrics_folded", what="claims") == 10 - metrics.MAX_CLAIMS_PER_GPU


def test_many_progress_keys_keep_the_sheets_known_ones_first():
    report = full_report()
    progress = {f"k{i:02d}": float(i) for i in range(20)}
    progress.update(epoch=1, step=2, loss=float("nan"))
    report.gpus[0].claims[0].progress = progress
    got = samples(exposition(report))
    keys = [dict(lv)["key"] for (n, lv) in got if n == "gpumon_claim_progress"]
    assert len(keys) == metrics.MAX_PROGRESS_KEYS
    assert {"epoch", "step"} <= set(keys) and "loss" not in keys


def test_dcgm_names_carry_dcgm_exporters_labels_and_units():
    got = samples(exposition(full_report(), dcgm_names=True))
    labels = {
        "gpu": "0",
        "UUID": "GPU-full",
        "pci_bus_id": "00000000:07:00.0",
        "device": "nvidia0",
        "modelName": "NVIDIA A100",
        "Hostname": "h",
        "DCGM_FI_DRIVER_VERSION": "535.154.05",
    }
    assert value(got, "DCGM_FI_DEV_GPU_UTIL", **labels) == 90.0  # percent, instant
    assert value(got, "DCGM_FI_DEV_FB_USED", **labels) == 1024.0  # MiB
    assert value(got, "DCGM_FI_DEV_FB_FREE", **labels) == 80 * 1024 - 1024.0
    assert value(got, "DCGM_FI_DEV_GPU_TEMP", **labels) == 70.0
    assert value(got, "DCGM_FI_DEV_POWER_USAGE", **labels) == 300.0
    dcgm = [dict(lv) for (n, lv) in got if n.startswith("DCGM_")]
    assert all("server" not in lv for lv in dcgm)
    assert not has(got, "DCGM_FI_DEV_GPU_UTIL", gpu="1")  # the lost GPU: nothing to say
    assert has(got, "gpumon_gpu_utilization_ratio")  # gpumon's own names stay


def test_before_the_first_sample_only_the_daemons_own_figures():
    names = {name for name, _ in samples(exposition(None))}
    assert names == {
        "gpumon_samples_total",
        "gpumon_sample_errors_total",
        "gpumon_last_sample_ok",
        "gpumon_sample_duration_seconds",
        "gpumon_nvml_hung_calls",
        "gpumon_scrapes_total",
        "gpumon_scrape_duration_seconds_total",
        "gpumon_scrape_duration_seconds",
        "gpumon_scrape_size_bytes",
    }


def test_daemon_with_dcgm_names_in_its_environment_serves_them(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState(gpus=[make_gpu(0, utilization_gpu=55)]))
    state = tmp_path / "state"
    env = dict(agent_env(fake.env(), state), GPUMON_METRICS_DCGM_NAMES="yes")
    with Daemon(env, state, ("--interval", "0.2", "--metrics", "127.0.0.1:0")) as daemon:
        port = daemon.metrics_port()
        daemon.wait_snapshot()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            got = samples(r.read().decode())
        assert daemon.stop() == 0
    assert value(got, "DCGM_FI_DEV_GPU_UTIL", gpu="0", device="nvidia0") == 55.0


def test_a_bad_dcgm_names_value_stops_the_agent_naming_the_variable(tmp_path, no_nvml_env):
    env = dict(agent_env(no_nvml_env, tmp_path / "state"), GPUMON_METRICS_DCGM_NAMES="maybe")
    done = subprocess.run(
        [str(AGENT), "run", "--metrics", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "GPUMON_METRICS_DCGM_NAMES='maybe': give 1 (or true, yes, on)" in done.stderr


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


def test_the_dcgm_names_flag_turns_them_on(monkeypatch):
    from gpumon_agent.cli import build_parser, settings_from

    monkeypatch.delenv("GPUMON_METRICS_DCGM_NAMES", raising=False)
    flag = settings_from(build_parser().parse_args(["run", "--metrics-dcgm-names"]))
    assert flag.metrics_dcgm_names is True
    assert settings_from(build_parser().parse_args(["run"])).metrics_dcgm_names is False


def worst_report(gpus: int = 8) -> Report:
    """What users can make of one server: every GPU crowded with long names, claims, progress
    keys, throttling and warnings."""
    long = "n" * 1000
    report = full_report()
    report.gpus = []
    for i in range(gpus):
        report.gpus.append(
            Gpu(
                index=i,
                uuid=f"GPU-{i}",
                name="NVIDIA A100",
                utilization_pct=1.0,
                utilization_mean_pct=1.0,
                memory_utilization_pct=1.0,
                memory_used_bytes=1,
                memory_total_bytes=2,
                temperature_c=99.0,
                power_w=1.0,
                power_limit_w=2.0,
                throttle_reasons=[
                    "app_clocks",
                    "power_cap",
                    "hw_slowdown",
                    "sync_boost",
                    "sw_thermal",
                    "hw_thermal",
                    "hw_power_brake",
                    "display_clocks",
                ],
                processes=[
                    GpuProcess(pid=p, user=f"{p}{long}", command=f"{p}{long} x", gpu_memory_bytes=1)
                    for p in range(1, 1025)
                ],
                claims=[
                    ClaimInfo(
                        job=f"{c}{long}",
                        user=f"{c}{long}",
                        pid=c,
                        started_at=utc_iso(c),
                        progress={f"{k}{long}": k for k in range(32)},
                    )
                    for c in range(1, 129)
                ],
                unclaimed_use=True,
                claimed_idle=True,
                idle_since=utc_iso(1),
            )
        )
    report.warnings = [
        HealthWarning(code=code, message="m", gpu_index=i)
        for code in (
            "gpu_lost",
            "gpu_error",
            "gpu_processes_unknown",
            "gpu_memory_high",
            "gpu_temperature_high",
            "gpu_thermal_throttle",
        )
        for i in range(gpus)
    ]
    host_codes = ("load_high", "memory_high", "swap_high", "disk_root_full", "gpu_count_dropped")
    report.warnings += [HealthWarning(code=c, message="m") for c in host_codes]
    report.claim_errors = [ClaimFileProblem(path=f"/x/{i}{long}", error=long) for i in range(256)]
    report.cpu_claims = [
        ClaimInfo(job=f"{c}{long}", user=f"{c}{long}", pid=c, started_at=utc_iso(c))
        for c in range(1, 129)
    ]
    return report


def test_the_documented_bound_holds_for_the_worst_a_server_can_send():
    text = exposition(worst_report())
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    per_gpu = sum(1 for line in series if 'gpu="3"' in line)
    assert per_gpu <= 78, per_gpu  # docs/metrics.md: "at most 78 series"
    assert len(series) <= 705, len(series)  # an 8-GPU server
    assert len(text) <= 190_000, len(text)


def test_a_cpu_claim_has_series_of_its_own_without_gpu_labels():
    report = full_report()
    report.cpu_claims = []
    gpu_claims_before = samples(exposition(report))
    report.cpu_claims = [
        ClaimInfo(job="kws ch32", user="lww", pid=7, started_at=utc_iso(1_700_000_000)),
        ClaimInfo(job="kws ch32", user="lww", pid=8, started_at=utc_iso(1_700_000_005)),
        ClaimInfo(job="prep", user="niv", pid=9, started_at="not a time"),
    ]
    got = samples(exposition(report))
    assert value(got, "gpumon_cpu_claims") == 3.0
    assert value(got, "gpumon_cpu_claim_info", user="lww", job_name="kws ch32") == 2.0
    assert value(got, "gpumon_cpu_claim_info", user="niv", job_name="prep") == 1.0
    lww = value(got, "gpumon_cpu_claim_started_timestamp_seconds", user="lww")
    assert lww == 1_700_000_000.0  # the earliest of the two
    assert not has(got, "gpumon_cpu_claim_started_timestamp_seconds", user="niv")
    for (name, labels), _v in got.items():
        if name.startswith("gpumon_cpu_claim"):
            assert "gpu" not in dict(labels) and "uuid" not in dict(labels), (name, labels)
    claim_series = {k: v for k, v in got.items() if k[0].startswith("gpumon_claim_info")}
    assert claim_series == {
        k: v for k, v in gpu_claims_before.items() if k[0].startswith("gpumon_claim_info")
    }  # `count by (user) (gpumon_claim_info)` still counts claimed GPUs only


def test_cpu_claim_series_are_bounded_however_many_jobs_a_user_starts():
    report = full_report()
    report.cpu_claims = [
        ClaimInfo(job=f"job {i}", user="lww", pid=i, started_at=utc_iso(i)) for i in range(1, 129)
    ]
    got = samples(exposition(report))
    assert value(got, "gpumon_cpu_claims") == 128.0
    infos = [k for k in got if k[0] == "gpumon_cpu_claim_info"]
    assert len(infos) == metrics.MAX_CPU_CLAIMS


def test_unreadable_times_are_left_out_not_a_failed_answer():
    report = full_report()
    report.generated_at = "not a time"
    report.host.boot_time = "yesterday"
    report.gpus[0].idle_since = "9999-99-99"
    report.gpus[0].claims[0].started_at = "soon"
    got = samples(exposition(report))
    for name in ("gpumon_report_timestamp_seconds", "gpumon_report_age_seconds",
                 "gpumon_host_boot_timestamp_seconds", "gpumon_gpu_idle_since_timestamp_seconds",
                 "gpumon_claim_started_timestamp_seconds"):  # fmt: skip
        assert not has(got, name), name
    assert value(got, "gpumon_claim_info", gpu="0") == 1.0


def test_an_answer_that_cannot_be_built_is_a_500_and_the_listener_goes_on():
    class Broken:
        def collect(self):
            raise RuntimeError("a bug")

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(Broken())
    server = metrics.MetricsServer(registry, "127.0.0.1", 0)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(url, timeout=10)
            assert caught.value.code == 500
            assert b"cannot build /metrics: a bug" in caught.value.read()
        assert thread.is_alive()
    finally:
        server.shutdown()
        server.server_close()
