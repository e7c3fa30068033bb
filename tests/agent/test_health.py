"""Health warnings: each condition gives its stable code and a short message, a healthy host
gives none, and values the agent could not read never warn by themselves."""

from __future__ import annotations

import dataclasses

import pytest

from gpumon_agent.health import HEALTH_CODES, evaluate
from gpumon_agent.report import Gpu, Host, Nvml, Report, utc_iso

GiB = 1 << 30


def healthy(**host_changes: object) -> Report:
    host = Host(
        hostname="gpu1",
        load_avg=[3.0, 2.0, 1.0],
        cpu_count=32,
        memory_percent=40.0,
        swap_total_bytes=8 * GiB,
        swap_percent=5.0,
        disk_root_percent=60.0,
    )
    gpus = [
        Gpu(
            index=i,
            uuid=f"GPU-{i}",
            memory_used_bytes=10 * GiB,
            memory_total_bytes=80 * GiB,
            temperature_c=55.0,
            throttle_reasons=[],
            processes=[],
        )
        for i in range(2)
    ]
    return Report(
        generated_at=utc_iso(),
        host=dataclasses.replace(host, **host_changes),
        nvml=Nvml(available=True, driver_version="535.154.05"),
        gpus=gpus,
    )


def codes(report: Report, previous: int | None = 2) -> list[tuple[str, int | None]]:
    return [(w.code, w.gpu_index) for w in evaluate(report, previous)]


def test_a_healthy_host_has_no_warnings():
    assert evaluate(healthy(), 2) == []


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"load_avg": [80.0, 33.0, 20.0]}, "load_high"),
        ({"memory_percent": 93.5}, "memory_high"),
        ({"swap_percent": 51.0}, "swap_high"),
        ({"disk_root_percent": 97.0}, "disk_root_full"),
    ],
)
def test_host_conditions(changes, code):
    assert codes(healthy(**changes)) == [(code, None)]


@pytest.mark.parametrize(
    "changes",
    [
        {"load_avg": [80.0, 32.0, 20.0]},  # a burst, and the 5-min load only at the core count
        {"memory_percent": 90.0},
        {"swap_percent": 50.0},
        {"swap_total_bytes": 0, "swap_percent": 100.0},  # no swap configured
        {"disk_root_percent": 95.0},
        {"load_avg": None, "cpu_count": None, "memory_percent": None, "disk_root_percent": None},
    ],
)
def test_at_or_below_the_limits_and_unknown_values_do_not_warn(changes):
    assert codes(healthy(**changes)) == []


def test_gpu_conditions_name_their_gpu():
    report = healthy()
    report.gpus[0].memory_used_bytes = 79 * GiB  # 98.75 %
    report.gpus[1].temperature_c = 85.0
    report.gpus[1].throttle_reasons = ["power_cap", "hw_thermal"]

    warnings = evaluate(report, 2)

    assert [(w.code, w.gpu_index) for w in warnings] == [
        ("gpu_memory_high", 0),
        ("gpu_temperature_high", 1),
        ("gpu_thermal_throttle", 1),
    ]
    assert warnings[0].message == "GPU 0 memory 99% used"
    assert warnings[1].message == "GPU 1 at 85 °C"
    assert "hw_thermal" in warnings[2].message and "power_cap" not in warnings[2].message


def test_power_capping_alone_is_not_a_thermal_warning():
    report = healthy()
    report.gpus[0].throttle_reasons = ["power_cap", "sw_thermal"]
    report.gpus[1].throttle_reasons = ["power_cap"]

    assert codes(report) == [("gpu_thermal_throttle", 0)]


def test_fewer_gpus_than_before():
    report = healthy()

    assert codes(report, previous=3) == [("gpu_count_dropped", None)]
    assert evaluate(report, 3)[0].message == "2 GPUs, had 3"
    assert codes(report, previous=None) == []
    assert codes(report, previous=1) == []


def test_nvml_errors():
    unavailable = healthy()
    unavailable.nvml = Nvml(
        available=False,
        error="the driver was upgraded",
        error_code="driver_library_mismatch",
    )
    unavailable.gpus = []
    broken = healthy()
    broken.gpus[0].state = "lost"
    broken.gpus[0].temperature_c = 99.0  # a stale value of a lost GPU does not warn too
    broken.gpus[1].state = "error"
    broken.gpus[1].error = "nvmlDeviceGetPowerUsage did not return within 2 s"

    assert codes(unavailable, previous=2) == [("nvml_unavailable", None)]
    assert "the driver was upgraded" in evaluate(unavailable, 2)[0].message
    assert codes(broken) == [("gpu_lost", 0), ("gpu_error", 1)]
    assert "did not return" in evaluate(broken, 2)[1].message


def test_every_code_produced_is_documented():
    report = healthy(load_avg=[99.0, 99.0, 99.0], memory_percent=99.0, swap_percent=99.0)
    report.host.disk_root_percent = 99.0
    report.gpus[0].memory_used_bytes = 80 * GiB
    report.gpus[0].temperature_c = 95.0
    report.gpus[0].throttle_reasons = ["sw_thermal"]
    report.gpus[1].state = "lost"
    report.gpus.append(Gpu(index=2, state="error", error="x"))
    unavailable = healthy()
    unavailable.nvml = Nvml(available=False, error_code="timeout")

    produced = {w.code for w in evaluate(report, 5) + evaluate(unavailable, None)}
    report.gpus = report.gpus[:1]
    produced |= {w.code for w in evaluate(report, 5)}

    assert produced == set(HEALTH_CODES)
