"""All of the agent's NVML access: one read gives the driver facts and every GPU as Report records.

Nothing here raises to the caller. NVML failures are data:

- NVML unusable (no library, driver not loaded, driver/library mismatch, a global call that
  hangs): ``Nvml(available=False, error=..., error_code=...)`` and no GPUs. ``NVML_ERROR_CODES``
  lists the codes.
- A GPU that fell off the bus: that GPU with ``state="lost"`` (its identity from the last time it
  answered), the others as usual.
- Any other failure of a call on one GPU: ``state="error"``, ``error`` says which calls failed,
  and every value that was read is still there.
- A value the board or driver does not offer (NOT_SUPPORTED, a function an old driver lacks after
  every fallback, NO_PERMISSION): ``None``, and no error.
- Processes are never guessed: when a process query fails for every version it tries (GeForce
  boards on older drivers answer NOT_SUPPORTED), ``Gpu.processes`` is ``None`` — unknown, not
  "none" — and ``Gpu.processes_error`` names the query and NVML's error. Only a query that
  answered gives ``[]``.

Older drivers lack newer functions, so reads fall back: processes v3 -> v2 -> v1, memory v2 -> v1,
clock event reasons -> throttle reasons, enforced power limit -> management limit. A symbol found
missing is not tried again. The versioned process and memory queries are called through ctypes
here, not through pynvml's wrappers: old nvidia-ml-py releases (11.450) wrap only v1 while new
drivers may offer only v3, and pynvml's idea of the v3 entry layout has changed between releases
(see ``_running_processes``). pynvml still loads the library and does every other call.

NVML calls run on a worker thread with a deadline per call (``call_timeout_s``; the machinery is
gpumon_agent.deadline's), because a wedged GPU or driver can block a call for minutes. A call
that overruns is abandoned: its thread is left to finish, its value is unknown, the rest of that
GPU is skipped for this read, and until it returns the same call (function, GPU) is not issued
again, so hung threads never pile up (``max_hung_calls`` bounds them in all). After
``MAX_TIMEOUTS_PER_READ`` timeouts the rest of the read is skipped, so one read blocks for at
most that many deadlines.

Field meanings (see gpumon_agent.report): ``utilization_pct`` is NVML's GPU busy percentage,
``memory_utilization_pct`` its memory-controller busy percentage (not used/total);
``memory_used_bytes`` is NVML's memory v2 "used" (without the driver's reservation), or v1 "used"
(with it) on drivers without v2; ``power_w``/``power_limit_w`` are watts; ``throttle_reasons`` are
the names in ``THROTTLE_REASONS`` (idle is not a throttle, so the idle bit is left out).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from gpumon_agent.deadline import Caller, CallTimeout, Job
from gpumon_agent.report import GPU_ERROR, GPU_LOST, GPU_OK, Gpu, GpuProcess, Nvml

try:
    import pynvml
except ImportError:  # a broken install; reported as data like every other NVML failure
    pynvml = None  # type: ignore[assignment]

# Stable values of Nvml.error_code, with what each means (docs cite this table).
NVML_ERROR_CODES: Dict[str, str] = {
    "library_not_found": "libnvidia-ml.so.1 not found: no NVIDIA driver (a CPU-only server?)",
    "driver_not_loaded": "the NVIDIA kernel driver is not loaded",
    "driver_library_mismatch": "the NVIDIA driver was upgraded but the old one still runs: reboot",
    "no_permission": "NVML refused access to this user",
    "timeout": "an NVML call did not return within the deadline (a wedged GPU or driver)",
    "pynvml_missing": "the nvidia-ml-py package (module pynvml) is not installed",
    "nvml_error": "any other NVML failure; the error text says which",
}

# NVML throttle / clock-event reason bits (nvml.h nvmlClocksEventReason*) and their short names.
# 0x1 (GPU idle) is deliberately absent: an idle GPU is not throttled.
THROTTLE_REASONS: Tuple[Tuple[int, str], ...] = (
    (0x2, "app_clocks"),  # applications clocks setting caps the clocks
    (0x4, "power_cap"),  # software power cap
    (0x8, "hw_slowdown"),  # hardware slowdown (thermal or power brake)
    (0x10, "sync_boost"),  # held down to match other GPUs in a sync-boost group
    (0x20, "sw_thermal"),  # software thermal slowdown
    (0x40, "hw_thermal"),  # hardware thermal slowdown
    (0x80, "hw_power_brake"),  # external power brake assertion
    (0x100, "display_clocks"),  # display clock setting
)
_IDLE_BIT = 0x1

MAX_TIMEOUTS_PER_READ = 2
MAX_HUNG_CALLS = 16

# NVML return codes (nvml.h; a stable ABI) this module tells apart.
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_LIB_RM_VERSION_MISMATCH = 18
_ARGUMENT_VERSION_MISMATCH = 25
_NOT_AVAILABLE_ULL = 0xFFFFFFFFFFFFFFFF

# A value the hardware does not offer: None, not an error.
_ABSENT = (_NOT_SUPPORTED, _NO_PERMISSION, _FUNCTION_NOT_FOUND)
# "This version of the call does not exist here": try the next older one.
_TRY_OLDER = (_FUNCTION_NOT_FOUND, _ARGUMENT_VERSION_MISMATCH)


@dataclass
class NvmlSample:
    nvml: Nvml
    gpus: List[Gpu] = field(default_factory=list)


# NVML calls are batched in jobs (the library-wide part, then one job per GPU) so that a read
# costs one thread hand-off per GPU, not one per call; each call has its own deadline
# (gpumon_agent.deadline).


# --- the reader ------------------------------------------------------------------------------


class _GpuRead:
    """Bookkeeping while one GPU is read."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.problems: List[str] = []
        self.lost = False
        self.stop = False  # lost: skip the rest of this GPU


class NvmlReader:
    """Reads NVML; keeps the library initialised between reads. Not for concurrent reads."""

    def __init__(self, call_timeout_s: float = 2.0, max_hung_calls: int = MAX_HUNG_CALLS) -> None:
        self._caller = Caller(
            call_timeout_s, max_hung_calls, what="NVML", thread_name="gpumon-nvml"
        )
        self._initialized = False
        self._missing: set = set()  # NVML functions this library lacks
        self._identity: Dict[int, Tuple[Optional[str], Optional[str], Optional[str]]] = {}

    @property
    def hung_calls(self) -> int:
        """How many abandoned calls have not returned yet (each holds one thread)."""
        return self._caller.hung_count()

    def read(self) -> NvmlSample:
        try:
            return self._read()
        except Exception as e:  # a bug here must not cost the host's report
            return _unavailable("nvml_error", f"reading NVML failed: {e!r}"[:300])

    def close(self) -> None:
        if self._initialized and pynvml is not None:
            try:
                self._caller.run(-1, lambda job: job.call("nvmlShutdown", pynvml.nvmlShutdown))
            except Exception:
                pass  # shutting down; nothing left to report to
            self._initialized = False
        self._caller.close()

    # -- the whole library --

    def _read(self) -> NvmlSample:
        if pynvml is None:
            return _unavailable("pynvml_missing", NVML_ERROR_CODES["pynvml_missing"])
        try:
            library: NvmlSample = self._caller.run(-1, self._read_library)
        except CallTimeout as e:
            return _unavailable("timeout", str(e))
        if not library.nvml.available:
            return library
        timeouts = 0
        for gpu in library.gpus:
            st = _GpuRead(gpu.index)
            if timeouts >= MAX_TIMEOUTS_PER_READ:
                st.problems.append("not read: this read's NVML calls hung")
            else:
                try:
                    self._caller.run(gpu.index, functools.partial(self._read_gpu, st=st, gpu=gpu))
                except CallTimeout as e:
                    st.problems.append(str(e))
                    timeouts += not e.still
            self._finish(st, gpu)
        for index in list(self._identity):
            if index >= len(library.gpus):
                del self._identity[index]
        return library

    def _read_library(self, job: Job) -> NvmlSample:
        """nvmlInit when needed, the versions, and a Gpu per index (filled in by GPU jobs)."""
        if not self._initialized:
            try:
                job.call("nvmlInit", pynvml.nvmlInit)
            except Exception as e:
                return _unavailable(_error_code(e), _describe("nvmlInit", e))
            self._initialized = True
        try:
            count = job.call("nvmlDeviceGetCount", pynvml.nvmlDeviceGetCount)
        except Exception as e:
            if not isinstance(e, CallTimeout):  # broken, not busy: start over next time
                self._initialized = False
                try:
                    job.call("nvmlShutdown", pynvml.nvmlShutdown)
                except Exception:
                    pass
            return _unavailable(_error_code(e), _describe("nvmlDeviceGetCount", e))
        nvml = Nvml(available=True)
        nvml.driver_version = _text(self._system(job, "nvmlSystemGetDriverVersion"))
        nvml.nvml_version = _text(self._system(job, "nvmlSystemGetNVMLVersion"))
        nvml.cuda_driver_version = self._system(job, "nvmlSystemGetCudaDriverVersion")
        return NvmlSample(nvml, [Gpu(index=i) for i in range(count)])

    @staticmethod
    def _system(job: Job, name: str) -> Any:
        try:
            return job.call(name, getattr(pynvml, name))
        except Exception:
            return None  # a version string is a nicety; the GPUs matter

    # -- one GPU --

    def _read_gpu(self, job: Job, st: _GpuRead, gpu: Gpu) -> None:
        n = pynvml
        handle = self._get(
            job, st, "nvmlDeviceGetHandleByIndex", n.nvmlDeviceGetHandleByIndex, gpu.index
        )
        if handle is None:
            return
        gpu.uuid = _text(self._get(job, st, "nvmlDeviceGetUUID", n.nvmlDeviceGetUUID, handle))
        gpu.name = _text(self._get(job, st, "nvmlDeviceGetName", n.nvmlDeviceGetName, handle))
        pci = self._get(job, st, "nvmlDeviceGetPciInfo_v3", n.nvmlDeviceGetPciInfo, handle)
        gpu.pci_bus_id = _text(getattr(pci, "busId", None))
        self._read_values(job, st, gpu, handle)

    def _finish(self, st: _GpuRead, gpu: Gpu) -> None:
        """The GPU's state and error from what its read met; a lost GPU's remembered identity."""
        if gpu.processes is None and gpu.processes_error is None:  # the read stopped before them
            why = "the GPU is lost" if st.lost else "; ".join(st.problems) or "the read stopped"
            gpu.processes_error = why if why.startswith("not read") else "not read: " + why
        if gpu.uuid is not None:
            self._identity[gpu.index] = (gpu.uuid, gpu.name, gpu.pci_bus_id)
        elif st.lost and gpu.index in self._identity:
            gpu.uuid, gpu.name, gpu.pci_bus_id = self._identity[gpu.index]
        if st.lost:
            gpu.state = GPU_LOST
            gpu.error = "; ".join(["GPU is lost (fell off the bus)", *st.problems])
        elif st.problems:
            gpu.state = GPU_ERROR
            gpu.error = "; ".join(st.problems)
        else:
            gpu.state = GPU_OK

    def _read_values(self, job: Job, st: _GpuRead, gpu: Gpu, handle: Any) -> None:
        n = pynvml
        util = self._get(
            job, st, "nvmlDeviceGetUtilizationRates", n.nvmlDeviceGetUtilizationRates, handle
        )
        if util is not None:
            gpu.utilization_pct = float(util.gpu)
            gpu.memory_utilization_pct = float(util.memory)
        memory = self._first(
            job,
            st,
            [
                ("nvmlDeviceGetMemoryInfo_v2", _memory_v2, (handle,)),
                ("nvmlDeviceGetMemoryInfo", n.nvmlDeviceGetMemoryInfo, (handle,)),
            ],
        )
        if memory is not None:
            gpu.memory_total_bytes = int(memory.total)
            gpu.memory_used_bytes = int(memory.used)
        temperature = self._get(
            job, st, "nvmlDeviceGetTemperature", n.nvmlDeviceGetTemperature, handle, 0
        )  # 0: NVML_TEMPERATURE_GPU, the die
        gpu.temperature_c = None if temperature is None else float(temperature)
        power = self._get(job, st, "nvmlDeviceGetPowerUsage", n.nvmlDeviceGetPowerUsage, handle)
        gpu.power_w = None if power is None else power / 1000.0
        limit = self._first(
            job,
            st,
            [
                ("nvmlDeviceGetEnforcedPowerLimit", n.nvmlDeviceGetEnforcedPowerLimit, (handle,)),
                (
                    "nvmlDeviceGetPowerManagementLimit",
                    n.nvmlDeviceGetPowerManagementLimit,
                    (handle,),
                ),
            ],
        )
        gpu.power_limit_w = None if limit is None else limit / 1000.0
        reasons = self._first(
            job,
            st,
            [
                ("nvmlDeviceGetCurrentClocksEventReasons", _clock_events, (handle,)),
                (
                    "nvmlDeviceGetCurrentClocksThrottleReasons",
                    _throttle_reasons,
                    (handle,),
                ),
            ],
        )
        gpu.throttle_reasons = None if reasons is None else throttle_names(reasons)
        gpu.processes, gpu.processes_error = self._processes(job, st, handle)

    def _processes(
        self, job: Job, st: _GpuRead, handle: Any
    ) -> Tuple[Optional[List[GpuProcess]], Optional[str]]:
        """(processes, why they are unknown or incomplete). A kind (compute, graphics) whose query
        fails leaves the answer unknown (None), unless the other kind listed some: those are then
        "at least these", and the error still says what failed. Never [] after a failure."""
        found: Dict[int, GpuProcess] = {}
        failures: List[str] = []
        for kind in ("compute", "graphics"):
            base = f"nvmlDeviceGet{kind.capitalize()}RunningProcesses"
            listed, failure = self._newest(
                job,
                st,
                [
                    (base + "_v3", _running_processes, (base + "_v3", handle)),
                    (base + "_v2", _running_processes, (base + "_v2", handle)),
                    (base, _running_processes, (base, handle)),
                ],
            )
            if failure is not None:
                failures.append(failure)
                continue
            for pid, used in listed:
                memory = None if used == _NOT_AVAILABLE_ULL else int(used)
                if pid in found:  # listed as both compute and graphics: once, kind says so
                    entry = found[pid]
                    entry.kind = "compute+graphics"
                    if memory is not None:
                        entry.gpu_memory_bytes = max(entry.gpu_memory_bytes or 0, memory)
                else:
                    found[pid] = GpuProcess(pid=int(pid), kind=kind, gpu_memory_bytes=memory)
        if st.lost:  # mid-read: nothing listed counts; _finish says "not read: the GPU is lost"
            return None, None
        error = "; ".join(failures) or None
        if error is not None and not found:
            return None, error
        return sorted(found.values(), key=lambda p: p.pid), error

    def _get(self, job: Job, st: _GpuRead, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One call on GPU st.index: its value, or None with the failure noted in `st`."""
        if st.stop:
            return None
        try:
            return job.call(name, fn, *args)
        except Exception as e:
            _note(st, name, e)
            return None

    def _first(
        self,
        job: Job,
        st: _GpuRead,
        chain: Sequence[Tuple[str, Callable[..., Any], Tuple[Any, ...]]],
    ) -> Any:
        """The value of the newest version in `chain` this driver has; None if it has none."""
        return self._newest(job, st, chain)[0]

    def _newest(
        self,
        job: Job,
        st: _GpuRead,
        chain: Sequence[Tuple[str, Callable[..., Any], Tuple[Any, ...]]],
    ) -> Tuple[Any, Optional[str]]:
        """(value, None) from the newest version in `chain` this driver has, or (None, why not):
        the failed call and NVML's error, or that the library has none of the versions."""
        versions = [link for link in chain if link[0] not in self._missing]
        for position, (name, fn, args) in enumerate(versions):
            if st.stop:
                return None, "not read: the GPU is lost"
            try:
                return job.call(name, fn, *args), None
            except Exception as e:
                code = _nvml_value(e)
                absent = code == _FUNCTION_NOT_FOUND or isinstance(e, AttributeError)
                if absent:
                    self._missing.add(name)  # a missing symbol stays missing
                older = absent or code in _TRY_OLDER or isinstance(e, TypeError)
                if older and position < len(versions) - 1:
                    continue
                _note(st, name, e)
                if absent:
                    break
                return None, _describe(name, e)
        names = ", ".join(name for name, _, _ in chain)
        return None, f"this NVML library has none of {names}"


# --- helpers ---------------------------------------------------------------------------------


def _note(st: _GpuRead, name: str, error: Exception) -> None:
    """Record what a failed call on one GPU means for it."""
    if isinstance(error, CallTimeout):  # still stuck from an earlier read: only this value
        st.problems.append(str(error))
    else:
        code = _nvml_value(error)
        if code == _GPU_IS_LOST:
            st.lost = True
            st.stop = True
        elif code not in _ABSENT:
            st.problems.append(_describe(name, error))


def _unavailable(code: str, text: str) -> NvmlSample:
    return NvmlSample(Nvml(available=False, error=text, error_code=code))


def _nvml_value(error: BaseException) -> Optional[int]:
    if pynvml is not None and isinstance(error, pynvml.NVMLError):
        return getattr(error, "value", None)
    return None


_CODE_OF_VALUE = {
    _LIBRARY_NOT_FOUND: "library_not_found",
    _DRIVER_NOT_LOADED: "driver_not_loaded",
    _LIB_RM_VERSION_MISMATCH: "driver_library_mismatch",
    _NO_PERMISSION: "no_permission",
}


def _error_code(error: BaseException) -> str:
    if isinstance(error, CallTimeout):
        return "timeout"
    return _CODE_OF_VALUE.get(_nvml_value(error) or 0, "nvml_error")


def _describe(function: str, error: BaseException) -> str:
    """Human text for a failed call, without calling into the library (it may be wedged)."""
    if isinstance(error, CallTimeout):
        return str(error)
    value = _nvml_value(error)
    if value is None:
        return f"{function}: {error!r}"[:300]
    known = getattr(pynvml.NVMLError, "_errcode_to_string", {})
    text = "{}: {}".format(function, known.get(value, f"NVML error {value}"))
    code = _CODE_OF_VALUE.get(value)
    return f"{NVML_ERROR_CODES[code]} ({text})" if code else text


def _text(value: Any) -> Optional[str]:
    """pynvml gives str, or bytes in older releases."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def throttle_names(mask: int) -> List[str]:
    """The short names of the set bits of an NVML clock-event/throttle mask (idle left out).

    An unnamed bit becomes its hex value, e.g. "0x400", so nothing is hidden.
    """
    names = [name for bit, name in THROTTLE_REASONS if mask & bit]
    known = _IDLE_BIT
    for bit, _ in THROTTLE_REASONS:
        known |= bit
    rest = mask & ~known
    bit = 1
    while rest:
        if rest & bit:
            names.append(hex(bit))
            rest &= ~bit
        bit <<= 1
    return names


class _MemoryV2(ctypes.Structure):
    # nvml.h nvmlMemory_v2_t; `version` must be nvmlMemory_v2 (its size | 2 << 24).
    _fields_ = [
        ("version", ctypes.c_uint),
        ("total", ctypes.c_ulonglong),
        ("reserved", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


def _memory_v2(handle: Any) -> _MemoryV2:
    """nvmlDeviceGetMemoryInfo_v2 ("used" without the driver's reservation), which nvidia-ml-py
    before 11.510 does not wrap although the driver has it."""
    function = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")
    memory = _MemoryV2(version=ctypes.sizeof(_MemoryV2) | 2 << 24)
    ret = function(handle, ctypes.byref(memory))
    if ret != 0:
        raise pynvml.NVMLError(ret)
    return memory


def _clock_events(handle: Any) -> int:
    return pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)


def _throttle_reasons(handle: Any) -> int:
    return pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)


class _ProcessEntry(ctypes.Structure):
    # The two fields every version of a process entry starts with, at these offsets (nvml.h):
    # nvmlProcessInfo_v1_t is just these (16 bytes); nvmlProcessInfo_v2_t, and nvmlProcessInfo_t
    # that the _v3 queries fill, add gpuInstanceId and computeInstanceId (24 bytes); the _v3
    # queries of early R535 drivers (CUDA 12.2's first nvml.h) also wrote
    # usedGpuCcProtectedMemory (32 bytes), which later drivers moved to nvmlProcessDetail_v1_t.
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


_V1_ENTRY_BYTES = 16
_V2_ENTRY_BYTES = 24
_V3_CC_ENTRY_BYTES = 32
_INSUFFICIENT_SIZE = 7
_UNWRITTEN = 0xAA  # fills the buffer, to see how far the driver wrote


def _running_processes(name: str, handle: Any) -> List[Tuple[int, int]]:
    """(pid, used GPU memory bytes or NVML's not-available value) from the process query `name`
    (…RunningProcesses, …_v2 or …_v3), called through ctypes whatever pynvml wraps.

    The buffer has room for the largest entry layout any driver has used, so no driver can write
    past it; a versioned query's entry size is then read off what the driver wrote (24 bytes, or
    32 on early R535 drivers), never assumed from the pynvml release."""
    function = pynvml._nvmlGetFunctionPointer(name)
    versioned = name.endswith(("_v2", "_v3"))
    count = ctypes.c_uint(0)
    ret = function(handle, ctypes.byref(count), None)
    if ret == 0:
        return []
    for _ in range(3):  # processes may start between the sizing call and this one
        if ret != _INSUFFICIENT_SIZE:
            raise pynvml.NVMLError(ret)
        capacity = count.value * 2 + 5
        room = capacity * (_V3_CC_ENTRY_BYTES if versioned else _V1_ENTRY_BYTES)
        buffer = ctypes.create_string_buffer(bytes([_UNWRITTEN]) * room, room)
        count = ctypes.c_uint(capacity)
        ret = function(handle, ctypes.byref(count), buffer)
        if ret == 0:
            n = min(count.value, capacity)
            stride = _entry_bytes(buffer.raw, n) if versioned else _V1_ENTRY_BYTES
            entries = [_ProcessEntry.from_buffer(buffer, i * stride) for i in range(n)]
            return [(e.pid, e.usedGpuMemory) for e in entries]
    raise pynvml.NVMLError(ret)


def _entry_bytes(written: bytes, n: int) -> int:
    """The entry size of a versioned query that filled `n` entries: 32 if the driver wrote past
    n 24-byte entries, else 24. (What a 32-byte layout puts there — memory sizes, instance ids,
    the protected-memory size — is never 8n bytes of 0xAA.)"""
    beyond = written[n * _V2_ENTRY_BYTES : n * _V3_CC_ENTRY_BYTES]
    return _V3_CC_ENTRY_BYTES if beyond.strip(bytes([_UNWRITTEN])) else _V2_ENTRY_BYTES
