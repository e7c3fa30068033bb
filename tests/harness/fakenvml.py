"""The fake libnvidia-ml.so.1: build it, describe its state, and hand subprocesses the environment
that makes the real pynvml load it.

The C side (fake_nvml/fake_nvml.c) reads its state from the JSON file named by
``$FAKE_NVML_STATE`` and re-reads it whenever the file changes, so a test may change GPUs,
processes or faults while a daemon runs. :class:`FakeState` / :class:`FakeGpu` are that file's
schema; :meth:`FakeNvml.write` replaces it atomically.

State reference (every field optional; a GPU value left ``None`` makes its getter return
NVML_ERROR_NOT_SUPPORTED, as a driver does for a sensor the board lacks):

- ``errors``: NVML function name -> error (a name such as ``"DRIVER_NOT_LOADED"`` or
  ``"GPU_IS_LOST"``, or the number), returned by that function — globally, or per GPU in
  ``FakeGpu.errors``. ``FakeState.init_error`` fills it for the three init entry points.
- ``hang``: function names that block while they stay listed (globally, or per GPU); remove
  them and the call completes normally. ``$FAKE_NVML_MAX_HANG_S`` bounds a hang (default 300 s).
- ``FakeGpu.lost``: every call on that GPU returns GPU_IS_LOST (the GPU fell off the bus); the
  handle lookup too only when ``errors`` names ``nvmlDeviceGetHandleByIndex_v2``.
- Functions an old driver lacks are absent for real: ``FakeNvml(omit=[...])`` links a variant
  without those symbols, so pynvml raises NVMLError_FunctionNotFound exactly as it would there.
  ``OLD_DRIVER_MISSING``: an R450-era driver; ``ONLY_V3_PROCESS_QUERIES``: a new driver whose
  only process queries are the ``_v3`` ones.
- Process queries that fail (GeForce boards on older drivers answer NOT_SUPPORTED):
  ``FakeState.processes_fail("NOT_SUPPORTED")`` makes every version of both queries return it.
- ``FakeState.process_info_v3_bytes = 32``: the ``_v3`` process queries write 32-byte entries
  (with usedGpuCcProtectedMemory), as early R535 drivers did; 24 (nvmlProcessInfo_t) otherwise.

pynvml keeps the loaded library in a module global, so each library variant or "library
missing" case must run in its own process: use :meth:`FakeNvml.env` for subprocesses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fake_nvml" / "fake_nvml.c"
BUILD_ROOT = HERE / "build" / "fake_nvml"
LIBRARY_NAME = "libnvidia-ml.so.1"
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-Wl,-soname," + LIBRARY_NAME)

# NVML return codes by name (nvml.h); the state file may use either form.
ERROR_CODES: dict[str, int] = {
    "UNINITIALIZED": 1,
    "INVALID_ARGUMENT": 2,
    "NOT_SUPPORTED": 3,
    "NO_PERMISSION": 4,
    "ALREADY_INITIALIZED": 5,
    "NOT_FOUND": 6,
    "INSUFFICIENT_SIZE": 7,
    "INSUFFICIENT_POWER": 8,
    "DRIVER_NOT_LOADED": 9,
    "TIMEOUT": 10,
    "IRQ_ISSUE": 11,
    "LIBRARY_NOT_FOUND": 12,
    "FUNCTION_NOT_FOUND": 13,
    "CORRUPTED_INFOROM": 14,
    "GPU_IS_LOST": 15,
    "RESET_REQUIRED": 16,
    "OPERATING_SYSTEM": 17,
    "LIB_RM_VERSION_MISMATCH": 18,
    "IN_USE": 19,
    "MEMORY": 20,
    "NO_DATA": 21,
    "UNKNOWN": 999,
}

INIT_FUNCTIONS = ("nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags")

# What an old driver (R450-era) lacks that current pynvml and gpumon try first.
OLD_DRIVER_MISSING = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetCurrentClocksEventReasons",
)

# Every version of the two running-process queries.
PROCESS_QUERIES = tuple(
    f"nvmlDeviceGet{kind}RunningProcesses{suffix}"
    for kind in ("Compute", "Graphics")
    for suffix in ("_v3", "_v2", "")
)
# A driver newer than the pynvml in use, offering only the _v3 process queries.
ONLY_V3_PROCESS_QUERIES = tuple(name for name in PROCESS_QUERIES if not name.endswith("_v3"))

GiB = 1 << 30
ErrorSpec = Union[str, int]


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None = GiB  # None: NVML_VALUE_NOT_AVAILABLE


@dataclass
class FakeGpu:
    uuid: str | None = "GPU-00000000-0000-0000-0000-000000000000"
    name: str | None = "NVIDIA A100-SXM4-80GB"
    pci_bus_id: str | None = "00000000:07:00.0"
    pci_device_id: int | None = 0x20B210DE
    utilization_gpu: int | None = 0
    utilization_memory: int | None = 0
    memory_total: int | None = 80 * GiB
    memory_used: int | None = 0  # as NVML v2 reports it (excludes memory_reserved)
    memory_reserved: int | None = 0  # v1 counts this as used
    temperature: int | None = 35
    power_usage_mw: int | None = 60_000
    power_limit_mw: int | None = 400_000
    throttle_reasons: int | None = 0  # bitmask, nvmlClocksEventReason*
    fan_speed: int | None = None
    encoder_utilization: int | None = 0
    decoder_utilization: int | None = 0
    compute_processes: list[FakeProcess] = field(default_factory=list)
    graphics_processes: list[FakeProcess] = field(default_factory=list)
    lost: bool = False
    errors: dict[str, ErrorSpec] = field(default_factory=dict)
    hang: list[str] = field(default_factory=list)


def make_gpu(index: int, **overrides: object) -> FakeGpu:
    """A plausible GPU number `index` (distinct UUID and bus id), with `overrides` applied."""
    gpu = FakeGpu(
        uuid=f"GPU-{index:08x}-1111-2222-3333-{index:012x}",
        pci_bus_id=f"00000000:{0x07 + 0x10 * index:02X}:00.0",
    )
    return dataclasses.replace(gpu, **overrides)


@dataclass
class FakeState:
    gpus: list[FakeGpu] = field(default_factory=list)
    driver_version: str | None = "535.154.05"
    nvml_version: str | None = "12.535.154.05"
    cuda_driver_version: int | None = 12020
    errors: dict[str, ErrorSpec] = field(default_factory=dict)
    hang: list[str] = field(default_factory=list)
    process_info_v3_bytes: int = 24  # 32: early R535 _v3 entries

    @classmethod
    def with_gpus(cls, count: int, **gpu_overrides: object) -> FakeState:
        return cls(gpus=[make_gpu(i, **gpu_overrides) for i in range(count)])

    def init_error(self, error: ErrorSpec) -> FakeState:
        """nvmlInit (every entry point) fails with `error`, e.g. "DRIVER_NOT_LOADED"."""
        for name in INIT_FUNCTIONS:
            self.errors[name] = error
        return self

    def processes_fail(self, error: ErrorSpec) -> FakeState:
        """Every process query (all versions, compute and graphics) fails with `error`."""
        for name in PROCESS_QUERIES:
            self.errors[name] = error
        return self

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["errors"] = _codes(self.errors)
        for gpu in data["gpus"]:
            gpu["errors"] = _codes(gpu["errors"])
        return json.dumps(data, indent=1)


def _codes(errors: Mapping[str, ErrorSpec]) -> dict[str, int]:
    out = {}
    for function, spec in errors.items():
        if isinstance(spec, str):
            name = spec.upper().removeprefix("NVML_ERROR_")
            if name not in ERROR_CODES:
                raise ValueError(f"fake NVML: unknown error {spec!r} for {function}")
            out[function] = ERROR_CODES[name]
        else:
            out[function] = int(spec)
    return out


def build(omit: Sequence[str] = ()) -> Path:
    """The directory holding a libnvidia-ml.so.1 built from SOURCE without the `omit` symbols.

    Cached under tests/harness/build/ by a hash of the source, flags and omitted names, so gcc
    runs only when one of them changed. Safe when several processes build at once.
    """
    omit = sorted(set(omit))
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + repr((CFLAGS, omit)).encode()).hexdigest()[:16]
    out_dir = BUILD_ROOT / key
    library = out_dir / LIBRARY_NAME
    if library.exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        partial = Path(tmp) / LIBRARY_NAME
        command = ["gcc", *CFLAGS, "-o", str(partial), str(SOURCE)]
        if omit:
            # A version script hides the named symbols: exact names win over the wildcard.
            script = Path(tmp) / "exports.map"
            script.write_text("{{ global: *; local: {}; }};\n".format("; ".join(omit)))
            command.append(f"-Wl,--version-script={script}")
        command.append("-lpthread")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the fake NVML library failed:\n{done.stderr}")
        os.replace(partial, library)
    return out_dir


def exported_symbols(lib_dir: Path) -> list[str]:
    """The nvml* functions the built library exports (via nm -D)."""
    done = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib_dir / LIBRARY_NAME)],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(
        line.split()[-1] for line in done.stdout.splitlines() if line.split()[-1].startswith("nvml")
    )


class FakeNvml:
    """One fake NVML: a built library variant, its state file and its call log, in `workdir`."""

    def __init__(
        self, workdir: Path, state: FakeState | None = None, omit: Sequence[str] = ()
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lib_dir = build(omit)
        self.state_path = self.workdir / "fake-nvml-state.json"
        self.log_path = self.workdir / "fake-nvml-calls.log"
        self.state = state if state is not None else FakeState.with_gpus(1)
        self.write()

    def write(self, state: FakeState | None = None) -> None:
        """Replace the state file atomically (the library never sees half a file)."""
        if state is not None:
            self.state = state
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(self.state.to_json())
        os.replace(partial, self.state_path)

    def env(self, base: Mapping[str, str] | None = None, log: bool = True) -> dict[str, str]:
        """An environment in which `CDLL("libnvidia-ml.so.1")` loads this fake."""
        env = dict(os.environ if base is None else base)
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = str(self.lib_dir) + (":" + previous if previous else "")
        env["FAKE_NVML_STATE"] = str(self.state_path)
        if log:
            env["FAKE_NVML_LOG"] = str(self.log_path)
        else:
            env.pop("FAKE_NVML_LOG", None)
        return env

    def calls(self) -> list[tuple[str, int]]:
        """(function, gpu index or -1) for every call made so far, in order."""
        if not self.log_path.exists():
            return []
        pairs = []
        for line in self.log_path.read_text().splitlines():
            name, gpu = line.split()
            pairs.append((name, int(gpu)))
        return pairs

    def clear_calls(self) -> None:
        self.log_path.unlink(missing_ok=True)


def env_without_nvml(workdir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which no libnvidia-ml.so.1 can be loaded (a CPU-only server).

    On a machine with a real driver installed, the system copy would still be found; there a
    sitecustomize makes that one load fail, which is the only way to show the case.
    """
    env = dict(os.environ if base is None else base)
    env.pop("FAKE_NVML_STATE", None)
    empty = Path(workdir) / "no-nvml"
    empty.mkdir(parents=True, exist_ok=True)
    env["LD_LIBRARY_PATH"] = str(empty)
    if system_has_nvml():
        hide = Path(workdir) / "hide-nvml"
        hide.mkdir(exist_ok=True)
        (hide / "sitecustomize.py").write_text(_HIDE_NVML)
        env["PYTHONPATH"] = str(hide) + os.pathsep + env.get("PYTHONPATH", "")
    return env


_HIDE_NVML = """\
import ctypes

_real_init = ctypes.CDLL.__init__


def _init(self, name, *args, **kwargs):
    if name and "libnvidia-ml" in str(name):
        raise OSError(name + ": hidden by the gpumon test harness")
    _real_init(self, name, *args, **kwargs)


ctypes.CDLL.__init__ = _init
"""


def system_has_nvml() -> bool:
    """Whether this machine has a real libnvidia-ml.so.1 the loader finds without help."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    probe = "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return done.returncode == 0


def run_python(code: str, env: Mapping[str, str], timeout: float = 60) -> object:
    """Run `code` in a fresh interpreter under `env`; it prints one JSON value, returned here.

    A fresh process per library variant is how tests keep pynvml's global library handle honest.
    """
    done = subprocess.run(
        [sys.executable, "-c", code], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"subprocess failed (rc {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


_CHILD_LOOP = """
import json, sys, traceback
namespace = {}
for line in sys.stdin:
    namespace.pop("result", None)
    try:
        exec(json.loads(line), namespace)
        reply = {"result": namespace.get("result")}
    except BaseException:
        reply = {"error": traceback.format_exc()}
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
"""


class Child:
    """A Python interpreter in a subprocess that runs code sent to it, one block at a time.

    For driving a long-lived object (a Sampler, say) against the fake library while the test
    changes the library's state in between. `run(code)` executes `code` in the child's one
    namespace and returns what it assigned to `result` (JSON-serialisable).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_LOOP],
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, code: str) -> object:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"the child process died:\n{stderr}")
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"in the child process:\n{reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
