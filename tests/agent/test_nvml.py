"""gpumon_agent.nvml under the real pynvml and the fake library: every value lands in the right
field, old drivers are read through the fallbacks, and every NVML failure becomes data.

NvmlReader runs in a child interpreter (pynvml holds its library globally), driven by Child."""

from __future__ import annotations

import os
import time

import pytest

from gpumon_agent.nvml import (
    MAX_TIMEOUTS_PER_READ,
    NVML_ERROR_CODES,
    THROTTLE_REASONS,
    throttle_names,
)
from harness.fakenvml import (
    OLD_DRIVER_MISSING,
    ONLY_V3_PROCESS_QUERIES,
    PROCESS_QUERIES,
    Child,
    FakeProcess,
    FakeState,
    make_gpu,
    run_python,
)
from harness.timing import SLACK_S

READ_ONCE = """
import dataclasses, json
from gpumon_agent.nvml import NvmlReader
reader = NvmlReader(call_timeout_s=5)
print(json.dumps(dataclasses.asdict(reader.read())))
reader.close()
"""

SETUP = """
import dataclasses, threading, time
from gpumon_agent.nvml import NvmlReader
reader = NvmlReader(call_timeout_s={timeout})

def read():
    started = time.monotonic()
    sample = dataclasses.asdict(reader.read())
    sample["seconds"] = time.monotonic() - started
    sample["hung"] = reader.hung_calls
    sample["threads"] = threading.active_count()
    return sample
"""


@pytest.fixture
def child_reader():
    """child_reader(fake, timeout=5): a Child holding a NvmlReader; run("result = read()")."""
    children = []

    def start(fake, timeout: float = 5.0) -> Child:
        child = Child(fake.env())
        children.append(child)
        child.run(SETUP.format(timeout=timeout))
        return child

    yield start
    for child in children:
        child.close()


def test_every_value_lands_in_its_field(fake_nvml):
    gpu = make_gpu(
        0,
        name="NVIDIA RTX A6000",
        utilization_gpu=73,
        utilization_memory=41,
        memory_total=48 << 30,
        memory_used=20 << 30,
        memory_reserved=512 << 20,
        temperature=64,
        power_usage_mw=212_345,
        power_limit_mw=300_000,
        throttle_reasons=0x4 | 0x20 | 0x1,
        compute_processes=[FakeProcess(101, 4 << 30), FakeProcess(102, None)],
        graphics_processes=[FakeProcess(103, 64 << 20)],
    )
    fake = fake_nvml(FakeState(gpus=[gpu], driver_version="550.90.07", cuda_driver_version=12040))

    sample = run_python(READ_ONCE, fake.env())

    assert sample["nvml"] == {
        "available": True,
        "driver_version": "550.90.07",
        "nvml_version": "12.535.154.05",
        "cuda_driver_version": 12040,
        "error": None,
        "error_code": None,
    }
    [g] = sample["gpus"]
    assert (g["index"], g["uuid"], g["name"], g["pci_bus_id"]) == (
        0,
        gpu.uuid,
        "NVIDIA RTX A6000",
        "00000000:07:00.0",
    )
    assert (g["state"], g["error"]) == ("ok", None)
    assert (g["utilization_pct"], g["memory_utilization_pct"]) == (73.0, 41.0)
    assert (g["memory_used_bytes"], g["memory_total_bytes"]) == (20 << 30, 48 << 30)
    assert g["temperature_c"] == 64.0
    assert (g["power_w"], g["power_limit_w"]) == (212.345, 300.0)
    assert g["throttle_reasons"] == ["power_cap", "sw_thermal"]  # the idle bit is not a throttle
    assert [(p["pid"], p["kind"], p["gpu_memory_bytes"]) for p in g["processes"]] == [
        (101, "compute", 4 << 30),
        (102, "compute", None),
        (103, "graphics", 64 << 20),
    ]


def test_a_process_in_both_lists_is_listed_once(fake_nvml):
    both = FakeProcess(200, 3 << 30)
    fake = fake_nvml(FakeState.with_gpus(1, compute_processes=[both], graphics_processes=[both]))

    [g] = run_python(READ_ONCE, fake.env())["gpus"]

    assert [(p["pid"], p["kind"], p["gpu_memory_bytes"]) for p in g["processes"]] == [
        (200, "compute+graphics", 3 << 30)
    ]


@pytest.mark.parametrize("count", [0, 1, 8])
def test_every_gpu_is_reported(fake_nvml, count):
    fake = fake_nvml(FakeState.with_gpus(count, utilization_gpu=5))

    sample = run_python(READ_ONCE, fake.env())

    assert sample["nvml"]["available"] is True
    assert [g["index"] for g in sample["gpus"]] == list(range(count))
    assert len({g["uuid"] for g in sample["gpus"]}) == count
    assert all(g["state"] == "ok" and g["utilization_pct"] == 5.0 for g in sample["gpus"])


def test_without_a_driver_the_host_has_no_gpus_and_says_why(no_nvml_env):
    sample = run_python(READ_ONCE, no_nvml_env)

    assert sample["gpus"] == []
    assert sample["nvml"]["available"] is False
    assert sample["nvml"]["error_code"] == "library_not_found"
    assert "libnvidia-ml.so.1 not found" in sample["nvml"]["error"]


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        ("DRIVER_NOT_LOADED", "driver_not_loaded", "not loaded"),
        ("LIB_RM_VERSION_MISMATCH", "driver_library_mismatch", "reboot"),
        ("NO_PERMISSION", "no_permission", "refused"),
        ("UNKNOWN", "nvml_error", "nvmlInit"),
    ],
)
def test_init_failures_are_reported_with_a_stable_code(fake_nvml, fault, code, words):
    fake = fake_nvml(FakeState.with_gpus(2).init_error(fault))

    sample = run_python(READ_ONCE, fake.env())

    assert sample["gpus"] == []
    assert sample["nvml"]["available"] is False
    assert sample["nvml"]["error_code"] == code
    assert code in NVML_ERROR_CODES
    assert words in sample["nvml"]["error"]


def test_a_driver_that_comes_back_is_used_again(fake_nvml, child_reader):
    state = FakeState.with_gpus(1).init_error("DRIVER_NOT_LOADED")
    fake = fake_nvml(state)
    child = child_reader(fake)

    first = child.run("result = read()")
    state.errors.clear()
    fake.write(state)
    second = child.run("result = read()")

    assert first["nvml"]["error_code"] == "driver_not_loaded"
    assert second["nvml"]["available"] is True
    assert len(second["gpus"]) == 1


def test_a_gpu_that_falls_off_the_bus_is_lost_and_the_others_still_report(fake_nvml, child_reader):
    state = FakeState.with_gpus(3, utilization_gpu=50)
    fake = fake_nvml(state)
    child = child_reader(fake)
    child.run("result = read()")

    state.gpus[1].lost = True
    fake.write(state)
    sample = child.run("result = read()")

    lost = sample["gpus"][1]
    assert lost["state"] == "lost"
    assert "fell off the bus" in lost["error"]
    assert lost["uuid"] == state.gpus[1].uuid  # remembered from when it answered
    assert lost["utilization_pct"] is None
    assert lost["processes"] is None
    assert lost["processes_error"] == "not read: the GPU is lost"
    assert [g["state"] for g in sample["gpus"]] == ["ok", "lost", "ok"]
    assert sample["gpus"][2]["utilization_pct"] == 50.0


def test_a_gpu_lost_at_handle_lookup_is_lost(fake_nvml):
    state = FakeState(
        gpus=[make_gpu(0), make_gpu(1, errors={"nvmlDeviceGetHandleByIndex_v2": "GPU_IS_LOST"})]
    )
    fake = fake_nvml(state)

    sample = run_python(READ_ONCE, fake.env())

    assert [g["state"] for g in sample["gpus"]] == ["ok", "lost"]
    assert sample["gpus"][1]["uuid"] is None  # never seen answering


def test_a_value_the_board_lacks_is_none_without_an_error(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1, power_usage_mw=None, power_limit_mw=None))

    [g] = run_python(READ_ONCE, fake.env())["gpus"]

    assert (g["power_w"], g["power_limit_w"]) == (None, None)
    assert (g["state"], g["error"]) == ("ok", None)
    assert g["temperature_c"] == 35.0


def test_a_failing_call_loses_only_its_value(fake_nvml):
    errors = {"nvmlDeviceGetTemperature": "UNKNOWN", "nvmlDeviceGetComputeRunningProcesses_v3": 999}
    fake = fake_nvml(FakeState(gpus=[make_gpu(0, errors=errors, utilization_gpu=12)]))

    [g] = run_python(READ_ONCE, fake.env())["gpus"]

    assert g["state"] == "error"
    assert "nvmlDeviceGetTemperature: Unknown Error" in g["error"]
    assert "nvmlDeviceGetComputeRunningProcesses_v3" in g["error"]
    assert g["processes"] is None  # the query failed: unknown, not "none"
    assert g["processes_error"].startswith("nvmlDeviceGetComputeRunningProcesses_v3: ")
    assert g["temperature_c"] is None
    assert g["utilization_pct"] == 12.0
    assert g["power_w"] == 60.0


def test_an_old_driver_is_read_through_the_fallbacks(fake_nvml, child_reader):
    gpu = make_gpu(
        0,
        memory_used=6 << 30,
        memory_reserved=1 << 30,
        throttle_reasons=0x40,
        compute_processes=[FakeProcess(301, 2 << 30), FakeProcess(302, None)],
        graphics_processes=[FakeProcess(303, 1 << 20)],
    )
    fake = fake_nvml(FakeState(gpus=[gpu]), omit=OLD_DRIVER_MISSING)
    child = child_reader(fake)

    first = child.run("result = read()")
    fake.clear_calls()
    second = child.run("result = read()")

    [g] = first["gpus"]
    assert (g["state"], g["error"]) == ("ok", None)
    assert g["memory_used_bytes"] == 7 << 30  # v1: the reservation counts as used
    assert g["throttle_reasons"] == ["hw_thermal"]
    assert [(p["pid"], p["kind"], p["gpu_memory_bytes"]) for p in g["processes"]] == [
        (301, "compute", 2 << 30),
        (302, "compute", None),
        (303, "graphics", 1 << 20),
    ]
    assert second["gpus"] == first["gpus"]
    called = {name for name, _ in fake.calls()}
    assert {
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGraphicsRunningProcesses",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
    } <= called
    assert not called & set(OLD_DRIVER_MISSING)  # found missing once, not looked up again


def test_a_driver_with_v2_process_queries_uses_them(fake_nvml):
    omit = ["nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3"]
    fake = fake_nvml(FakeState.with_gpus(1, compute_processes=[FakeProcess(401)]), omit=omit)

    [g] = run_python(READ_ONCE, fake.env())["gpus"]

    assert [p["pid"] for p in g["processes"]] == [401]
    called = {name for name, _ in fake.calls()}
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in called
    assert "nvmlDeviceGetComputeRunningProcesses" not in called


def test_a_driver_offering_only_v3_process_queries_lists_them_whatever_pynvml_wraps(fake_nvml):
    # The case: nvidia-ml-py 11.450 wraps only the unversioned query, the driver has only
    # _v3. Run in .venv-oldest (scripts/test.sh) this is that pynvml; here, the current one.
    gpu = make_gpu(
        0,
        compute_processes=[FakeProcess(501, 3 << 30), FakeProcess(502, None)],
        graphics_processes=[FakeProcess(503, 5 << 20)],
    )
    fake = fake_nvml(FakeState(gpus=[gpu]), omit=ONLY_V3_PROCESS_QUERIES)

    [g] = run_python(READ_ONCE, fake.env())["gpus"]

    assert [(p["pid"], p["kind"], p["gpu_memory_bytes"]) for p in g["processes"]] == [
        (501, "compute", 3 << 30),
        (502, "compute", None),
        (503, "graphics", 5 << 20),
    ]
    assert (g["processes_error"], g["state"], g["error"]) == (None, "ok", None)
    called = {name for name, _ in fake.calls()}
    assert {
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
    } <= called


def test_early_r535_32_byte_v3_entries_are_read_at_their_real_size(fake_nvml):
    procs = [FakeProcess(600 + i, (i + 1) << 30) for i in range(5)]  # several: the stride shows
    for v3_bytes in (24, 32):
        state = FakeState(gpus=[make_gpu(0, compute_processes=procs)])
        state.process_info_v3_bytes = v3_bytes
        fake = fake_nvml(state, name=f"v3-{v3_bytes}")

        [g] = run_python(READ_ONCE, fake.env())["gpus"]

        assert [(p["pid"], p["gpu_memory_bytes"]) for p in g["processes"]] == [
            (600 + i, (i + 1) << 30) for i in range(5)
        ], v3_bytes


def test_process_queries_not_supported_make_processes_unknown_naming_the_queries(fake_nvml):
    # GeForce boards on older drivers: nvidia-smi prints "Not Supported" for processes.
    state = FakeState.with_gpus(
        1, memory_used=20 << 30, compute_processes=[FakeProcess(os.getpid())]
    )
    fake = fake_nvml(state.processes_fail("NOT_SUPPORTED"))

    [g] = run_python(READ_ONCE, fake.env())["gpus"]

    assert g["processes"] is None  # never [] after a failed query
    assert g["processes_error"] == (
        "nvmlDeviceGetComputeRunningProcesses_v3: Not Supported; "
        "nvmlDeviceGetGraphicsRunningProcesses_v3: Not Supported"
    )
    assert (g["state"], g["error"]) == ("ok", None)  # the board lacks it: not an NVML fault
    assert g["memory_used_bytes"] == 20 << 30  # the evidence the free-GPU judgement falls back on


def test_a_library_without_any_process_query_says_so(fake_nvml, child_reader):
    fake = fake_nvml(FakeState.with_gpus(1), omit=PROCESS_QUERIES)
    child = child_reader(fake)

    first, second = child.run("result = read()"), child.run("result = read()")

    for sample in (first, second):  # also once the missing symbols are remembered
        [g] = sample["gpus"]
        assert g["processes"] is None
        assert g["processes_error"].startswith(
            "this NVML library has none of nvmlDeviceGetComputeRunningProcesses_v3, "
            "nvmlDeviceGetComputeRunningProcesses_v2, nvmlDeviceGetComputeRunningProcesses"
        )
        assert g["state"] == "ok"


def test_a_failed_graphics_query_keeps_the_compute_processes_as_at_least_these(fake_nvml):
    errors = {name: "NO_PERMISSION" for name in PROCESS_QUERIES if "Graphics" in name}
    busy = make_gpu(0, compute_processes=[FakeProcess(701)], errors=errors)
    idle = make_gpu(1, errors=errors)
    fake = fake_nvml(FakeState(gpus=[busy, idle]))

    b, i = run_python(READ_ONCE, fake.env())["gpus"]

    assert [p["pid"] for p in b["processes"]] == [701]
    assert b["processes_error"] == (
        "NVML refused access to this user "
        "(nvmlDeviceGetGraphicsRunningProcesses_v3: Insufficient Permissions)"
    )
    assert i["processes"] is None  # compute listed none, graphics unknown: unknown overall
    assert i["processes_error"] == b["processes_error"]


def test_a_hanging_gpu_call_costs_one_deadline_then_nothing(fake_nvml, child_reader):
    state = FakeState(
        gpus=[make_gpu(0), make_gpu(1, hang=["nvmlDeviceGetPowerUsage"]), make_gpu(2)]
    )
    fake = fake_nvml(state)
    child = child_reader(fake, timeout=0.8)

    first = child.run("result = read()")
    later = [child.run("result = read()") for _ in range(5)]

    assert 0.8 <= first["seconds"] < 0.8 + SLACK_S  # one deadline
    assert fake.calls().count(("nvmlDeviceGetPowerUsage", 1)) == 1  # never issued again
    assert first["gpus"][1]["state"] == "error"
    assert "nvmlDeviceGetPowerUsage did not return within 0.8 s" in first["gpus"][1]["error"]
    assert first["gpus"][1]["utilization_pct"] == 0.0  # read before the hang
    assert first["gpus"][1]["processes"] is None  # skipped after the hang: unknown, not []
    assert first["gpus"][1]["processes_error"] == (
        "not read: nvmlDeviceGetPowerUsage did not return within 0.8 s"
    )
    assert [first["gpus"][i]["processes"] for i in (0, 2)] == [[], []]
    assert [first["gpus"][i]["state"] for i in (0, 2)] == ["ok", "ok"]
    for sample in later:
        assert sample["seconds"] < 0 + SLACK_S  # no deadline waited for (nor the call issued)
        assert sample["hung"] == 1
        assert sample["threads"] <= first["threads"]
        assert "nvmlDeviceGetPowerUsage has not returned" in sample["gpus"][1]["error"]
        assert sample["gpus"][1]["power_w"] is None
        assert sample["gpus"][1]["temperature_c"] == 35.0  # the rest of the GPU is read

    state.gpus[1].hang = []
    fake.write(state)
    deadline = time.monotonic() + 10
    while child.run("result = reader.hung_calls") and time.monotonic() < deadline:
        time.sleep(0.05)
    recovered = child.run("result = read()")
    assert recovered["hung"] == 0
    assert recovered["gpus"][1]["state"] == "ok"
    assert recovered["gpus"][1]["power_w"] == 60.0


def test_a_hanging_driver_makes_nvml_unavailable_quickly(fake_nvml, child_reader):
    state = FakeState.with_gpus(4)
    state.hang = ["nvmlDeviceGetCount_v2"]
    fake = fake_nvml(state)
    child = child_reader(fake, timeout=0.6)

    first = child.run("result = read()")
    second = child.run("result = read()")

    for sample in (first, second):
        assert sample["nvml"]["available"] is False
        assert sample["nvml"]["error_code"] == "timeout"
        assert sample["gpus"] == []
    assert "did not return within 0.6 s" in first["nvml"]["error"]
    assert "has not returned" in second["nvml"]["error"]
    assert second["seconds"] < 0 + SLACK_S  # no deadline waited for: the call was not issued
    assert fake.calls().count(("nvmlDeviceGetCount_v2", -1)) == 1
    assert second["hung"] == 1


def test_many_wedged_gpus_cost_a_bounded_time_per_read(fake_nvml, child_reader):
    fake = fake_nvml(FakeState.with_gpus(6, hang=["nvmlDeviceGetUtilizationRates"]))
    child = child_reader(fake, timeout=0.3)

    samples = [child.run("result = read()") for _ in range(4)]

    new_timeouts = [
        sum("did not return within" in (g["error"] or "") for g in sample["gpus"])
        for sample in samples
    ]
    assert new_timeouts == [MAX_TIMEOUTS_PER_READ] * 3 + [0]  # then the rest of the read skipped
    for sample in samples:
        assert sample["seconds"] < MAX_TIMEOUTS_PER_READ * 0.3 + SLACK_S
        assert len(sample["gpus"]) == 6
        assert all(g["state"] == "error" for g in sample["gpus"])
    assert samples[-1]["hung"] == 6  # one thread per wedged call, never more
    assert all(g["uuid"] for g in samples[-1]["gpus"])


def test_close_shuts_nvml_down(fake_nvml, child_reader):
    fake = fake_nvml(FakeState.with_gpus(1))
    child = child_reader(fake)
    child.run("result = read()")

    child.run("reader.close()")

    assert fake.calls()[-1] == ("nvmlShutdown", -1)


def test_an_unexpected_exception_becomes_data(fake_nvml):
    # The real library cannot make pynvml raise a non-NVML error; a patched function can.
    fake = fake_nvml(FakeState.with_gpus(1))
    code = (
        "import pynvml\n"
        "def broken():\n"
        "    raise RuntimeError('boom')\n"
        "pynvml.nvmlDeviceGetCount = broken\n" + READ_ONCE
    )

    sample = run_python(code, fake.env())

    assert sample["nvml"]["available"] is False
    assert sample["nvml"]["error_code"] == "nvml_error"
    assert "boom" in sample["nvml"]["error"]


def test_throttle_bits_map_to_short_names():
    assert throttle_names(0) == []
    assert throttle_names(0x1) == []  # idle only
    assert throttle_names(0x4 | 0x8 | 0x20 | 0x40 | 0x80) == [
        "power_cap",
        "hw_slowdown",
        "sw_thermal",
        "hw_thermal",
        "hw_power_brake",
    ]
    assert throttle_names(0x400 | 0x2) == ["app_clocks", "0x400"]  # an unnamed bit stays visible
    names = [name for _, name in THROTTLE_REASONS]
    assert len(set(names)) == len(names)


def test_the_report_json_survives_a_read(fake_nvml):
    """The reader's records are the Report's own: they serialise as the schema says."""
    fake = fake_nvml(FakeState.with_gpus(2, compute_processes=[FakeProcess(5)]))
    code = READ_ONCE.replace(
        "print(json.dumps(dataclasses.asdict(reader.read())))",
        "from gpumon_agent.report import Report, Host, utc_iso\n"
        "s = reader.read()\n"
        "r = Report(generated_at=utc_iso(), host=Host(hostname='h'), nvml=s.nvml, gpus=s.gpus)\n"
        "print(json.dumps(Report.from_json(r.to_json()) == r))",
    )

    assert run_python(code, fake.env()) is True
