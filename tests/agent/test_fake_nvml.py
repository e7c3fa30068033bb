"""The fake libnvidia-ml.so.1 behaves like NVIDIA's library as the real pynvml sees it: values
from its state file, faults injected on request, and symbols an old driver lacks really absent.

Each case runs pynvml in a fresh interpreter, since pynvml keeps the loaded library globally."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pynvml
import pytest

from harness.fakenvml import (
    OLD_DRIVER_MISSING,
    ONLY_V3_PROCESS_QUERIES,
    PROCESS_QUERIES,
    FakeProcess,
    FakeState,
    build,
    exported_symbols,
    make_gpu,
    run_python,
)

# READ_ALL uses pynvml's newer wrappers (memory v2, the _v3 process queries, str results): in
# .venv-oldest (nvidia-ml-py 11.450) those tests are skipped; the agent's own tests run there.
needs_current_pynvml = pytest.mark.skipif(
    not hasattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v3"),
    reason="checks the fake through pynvml's newer wrappers; this pynvml predates them",
)

# Prints what pynvml reads of every GPU, or the name of the NVMLError class it raised.
READ_ALL = """
import json, pynvml as N

def read():
    N.nvmlInit()
    out = {"driver": N.nvmlSystemGetDriverVersion(), "nvml": N.nvmlSystemGetNVMLVersion(),
           "cuda": N.nvmlSystemGetCudaDriverVersion(), "gpus": []}
    for i in range(N.nvmlDeviceGetCount()):
        h = N.nvmlDeviceGetHandleByIndex(i)
        g = {}
        for key, call in [
            ("uuid", lambda: N.nvmlDeviceGetUUID(h)),
            ("name", lambda: N.nvmlDeviceGetName(h)),
            ("bus", lambda: N.nvmlDeviceGetPciInfo(h).busId),
            ("util", lambda: N.nvmlDeviceGetUtilizationRates(h).gpu),
            ("mem_v1_used", lambda: N.nvmlDeviceGetMemoryInfo(h).used),
            ("mem_v2_used", lambda: N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2).used),
            ("temp", lambda: N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU)),
            ("power_mw", lambda: N.nvmlDeviceGetPowerUsage(h)),
            ("limit_mw", lambda: N.nvmlDeviceGetEnforcedPowerLimit(h)),
            ("throttle", lambda: N.nvmlDeviceGetCurrentClocksEventReasons(h)),
            ("compute", lambda: [[p.pid, p.usedGpuMemory]
                                 for p in N.nvmlDeviceGetComputeRunningProcesses_v3(h)]),
            ("graphics", lambda: [[p.pid, p.usedGpuMemory]
                                  for p in N.nvmlDeviceGetGraphicsRunningProcesses_v3(h)]),
        ]:
            try:
                g[key] = call()
            except N.NVMLError as e:
                g[key] = type(e).__name__
        out["gpus"].append(g)
    N.nvmlShutdown()
    return out

try:
    print(json.dumps(read()))
except N.NVMLError as e:
    print(json.dumps(type(e).__name__))
"""


@needs_current_pynvml
def test_pynvml_reads_every_value_from_the_state_file(fake_nvml):
    gpu = make_gpu(
        0,
        name="NVIDIA GeForce RTX 3090",
        utilization_gpu=87,
        memory_total=24 << 30,
        memory_used=10 << 30,
        memory_reserved=300 << 20,
        temperature=71,
        power_usage_mw=251_500,
        power_limit_mw=350_000,
        throttle_reasons=0x4,
        compute_processes=[FakeProcess(4242, 9 << 30), FakeProcess(4343, None)],
        graphics_processes=[FakeProcess(77, 64 << 20)],
    )
    fake = fake_nvml(FakeState(gpus=[gpu], driver_version="550.54.15", cuda_driver_version=12040))

    out = run_python(READ_ALL, fake.env())

    assert out["driver"] == "550.54.15"
    assert out["nvml"] == "12.535.154.05"
    assert out["cuda"] == 12040
    [g] = out["gpus"]
    assert g["uuid"] == gpu.uuid
    assert g["name"] == "NVIDIA GeForce RTX 3090"
    assert g["bus"] == "00000000:07:00.0"
    assert g["util"] == 87
    assert g["mem_v2_used"] == 10 << 30
    assert g["mem_v1_used"] == (10 << 30) + (300 << 20)  # v1 counts the reservation as used
    assert (g["temp"], g["power_mw"], g["limit_mw"], g["throttle"]) == (71, 251_500, 350_000, 4)
    assert g["compute"] == [[4242, 9 << 30], [4343, None]]  # None: NVML_VALUE_NOT_AVAILABLE
    assert g["graphics"] == [[77, 64 << 20]]


@needs_current_pynvml
def test_zero_and_eight_gpus(fake_nvml):
    none = fake_nvml(FakeState.with_gpus(0), name="zero")
    eight = fake_nvml(FakeState.with_gpus(8), name="eight")

    assert run_python(READ_ALL, none.env())["gpus"] == []
    gpus = run_python(READ_ALL, eight.env())["gpus"]
    assert len(gpus) == 8
    assert len({g["uuid"] for g in gpus}) == 8
    assert len({g["bus"] for g in gpus}) == 8


@needs_current_pynvml
def test_a_value_left_out_reads_as_not_supported(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1, power_usage_mw=None, temperature=None))

    [g] = run_python(READ_ALL, fake.env())["gpus"]

    assert g["power_mw"] == "NVMLError_NotSupported"
    assert g["temp"] == "NVMLError_NotSupported"
    assert g["util"] == 0


def test_the_library_follows_state_changes_while_loaded(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1, utilization_gpu=10))
    script = """
import json, sys, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
before = N.nvmlDeviceGetUtilizationRates(h).gpu
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps([before, N.nvmlDeviceGetUtilizationRates(h).gpu, N.nvmlDeviceGetCount()]))
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env=fake.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        fake.write(FakeState.with_gpus(3, utilization_gpu=95))
        out, _ = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
        child.wait()

    assert json.loads(out) == [10, 95, 3]


def test_init_faults_raise_the_errors_a_broken_driver_gives(fake_nvml, no_nvml_env):
    not_loaded = fake_nvml(FakeState().init_error("DRIVER_NOT_LOADED"), name="a")
    mismatch = fake_nvml(FakeState().init_error("LIB_RM_VERSION_MISMATCH"), name="b")

    assert run_python(READ_ALL, not_loaded.env()) == "NVMLError_DriverNotLoaded"
    assert run_python(READ_ALL, mismatch.env()) == "NVMLError_LibRmVersionMismatch"
    assert run_python(READ_ALL, no_nvml_env) == "NVMLError_LibraryNotFound"


@needs_current_pynvml
def test_a_lost_gpu_fails_its_own_calls_only(fake_nvml):
    state = FakeState(gpus=[make_gpu(0), make_gpu(1, lost=True), make_gpu(2)])
    fake = fake_nvml(state)

    gpus = run_python(READ_ALL, fake.env())["gpus"]

    assert set(gpus[1].values()) == {"NVMLError_GpuIsLost"}
    assert gpus[0]["uuid"] == state.gpus[0].uuid
    assert gpus[2]["uuid"] == state.gpus[2].uuid


@needs_current_pynvml
def test_errors_can_be_injected_per_function_and_per_gpu(fake_nvml):
    state = FakeState(gpus=[make_gpu(0), make_gpu(1, errors={"nvmlDeviceGetPowerUsage": 3})])
    state.errors["nvmlDeviceGetTemperature"] = "UNKNOWN"
    fake = fake_nvml(state)

    gpus = run_python(READ_ALL, fake.env())["gpus"]

    assert [g["temp"] for g in gpus] == ["NVMLError_Unknown"] * 2
    assert gpus[0]["power_mw"] == 60_000
    assert gpus[1]["power_mw"] == "NVMLError_NotSupported"


@needs_current_pynvml
def test_an_old_driver_build_really_lacks_the_newer_symbols(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1), omit=OLD_DRIVER_MISSING)

    exported = exported_symbols(fake.lib_dir)
    [g] = run_python(READ_ALL, fake.env())["gpus"]

    assert not set(OLD_DRIVER_MISSING) & set(exported)
    assert "nvmlDeviceGetComputeRunningProcesses" in exported  # v1 stays
    assert "nvmlDeviceGetMemoryInfo" in exported
    assert g["compute"] == "NVMLError_FunctionNotFound"
    assert g["mem_v2_used"] == "NVMLError_FunctionNotFound"
    assert g["throttle"] == "NVMLError_FunctionNotFound"
    assert g["mem_v1_used"] == 0


def test_a_hanging_call_blocks_until_the_state_releases_it(fake_nvml):
    state = FakeState.with_gpus(1, hang=["nvmlDeviceGetPowerUsage"])
    fake = fake_nvml(state)
    script = """
import json, sys, time, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
print("calling", flush=True)
t = time.monotonic()
mw = N.nvmlDeviceGetPowerUsage(h)
print(json.dumps([mw, time.monotonic() - t]))
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=fake.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(0.5)
        assert child.poll() is None  # still inside the call
        state.gpus[0].hang = []
        fake.write(state)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()

    milliwatts, seconds = json.loads(out)
    assert milliwatts == 60_000
    assert seconds >= 0.5 - 0.1  # the test held it 0.5 s; the child's clock starts a little late


@needs_current_pynvml
def test_the_call_log_records_function_and_gpu(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2))

    run_python(READ_ALL, fake.env())

    calls = fake.calls()
    assert calls[0] == ("nvmlInitWithFlags", -1)
    assert ("nvmlDeviceGetUUID", 1) in calls
    assert calls[-1] == ("nvmlShutdown", -1)


def test_the_library_is_rebuilt_only_when_its_inputs_change():
    first = build()
    built_at = (first / "libnvidia-ml.so.1").stat().st_mtime_ns

    assert build() == first
    assert (first / "libnvidia-ml.so.1").stat().st_mtime_ns == built_at
    assert build(omit=["nvmlDeviceGetMemoryInfo_v2"]) != first


def test_a_broken_state_file_fails_loudly(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    fake.state_path.write_text('{"gpus": [ {"uuid": "GPU-1"} ')  # cut short

    done = subprocess.run(
        [sys.executable, "-c", READ_ALL], env=fake.env(), capture_output=True, text=True
    )

    assert json.loads(done.stdout) == "NVMLError_Unknown"
    assert str(fake.state_path) in done.stderr
    assert "fake_nvml" in done.stderr


# Calls one process query through ctypes (as gpumon_agent.nvml does, whatever pynvml wraps) with
# room for 8 entries of 32 bytes filled with 0xAA; prints [return code, count, buffer hex].
CALL_QUERY = """
import ctypes, json, sys, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
fn = N._nvmlGetFunctionPointer(sys.argv[1])
buf = ctypes.create_string_buffer(b"\\xaa" * 256, 256)
count = ctypes.c_uint(8)
ret = fn(h, ctypes.byref(count), buf)
print(json.dumps([ret, count.value, buf.raw.hex()]))
"""


def call_query(env: dict, name: str) -> tuple[int, int, bytes]:
    done = subprocess.run(
        [sys.executable, "-c", CALL_QUERY, name], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    ret, count, raw = json.loads(done.stdout)
    return ret, count, bytes.fromhex(raw)


def test_a_driver_with_only_v3_process_queries_really_lacks_the_others(fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1), omit=ONLY_V3_PROCESS_QUERIES)

    exported = set(exported_symbols(fake.lib_dir))

    assert not exported & set(ONLY_V3_PROCESS_QUERIES)
    assert {n for n in PROCESS_QUERIES if n.endswith("_v3")} <= exported
    assert "nvmlDeviceGetMemoryInfo_v2" in exported


def test_process_queries_can_all_be_made_to_answer_not_supported(fake_nvml):
    state = FakeState.with_gpus(1, compute_processes=[FakeProcess(42)]).processes_fail(
        "NOT_SUPPORTED"
    )
    fake = fake_nvml(state)

    assert {call_query(fake.env(), name)[0] for name in PROCESS_QUERIES} == {3}


def test_v3_entries_are_24_bytes_or_early_r535_32_bytes(fake_nvml):
    procs = [FakeProcess(11, 1 << 30), FakeProcess(12, 2 << 30)]
    for v3_bytes in (24, 32):
        state = FakeState.with_gpus(1, compute_processes=procs)
        state.process_info_v3_bytes = v3_bytes
        fake = fake_nvml(state, name=f"v3-{v3_bytes}")

        ret, count, raw = call_query(fake.env(), "nvmlDeviceGetComputeRunningProcesses_v3")
        _, _, v2_raw = call_query(fake.env(), "nvmlDeviceGetComputeRunningProcesses_v2")

        assert (ret, count) == (0, 2)
        entries = [struct.unpack_from("<I4xQII", raw, i * v3_bytes) for i in range(2)]
        assert entries == [(11, 1 << 30, 0xFFFFFFFF, 0xFFFFFFFF), (12, 2 << 30) + (0xFFFFFFFF,) * 2]
        assert raw[2 * v3_bytes :] == b"\xaa" * (256 - 2 * v3_bytes)  # nothing written past
        assert v2_raw[48:] == b"\xaa" * (256 - 48)  # v2 entries stay 24 bytes either way
