"""The Report: the one contract between the agent and the central side (schema version 2).

Everything here is plain data. Sizes are bytes, times are UTC ISO-8601 strings ending in "Z",
percentages are 0-100 floats. A value the agent could not read is ``None`` (JSON null), never a
guess. ``docs/report-schema.md`` documents every field.

Forward compatibility within a version: a reader ignores keys it does not know, so an agent may
add optional fields without a version bump. Removing or changing the meaning of a field needs a
new ``SCHEMA_VERSION``. Version 2 made "unknown" distinct from "none": ``Gpu.processes`` is null
when NVML could not list them (``processes_error`` says why), ``unclaimed_use``/``claimed_idle``
are null when they cannot be told, and ``Host.users``/``addresses`` are null when unreadable.
Readers accept version 1 too (``READABLE_VERSIONS``): a v1 report decodes into the same records,
its lists as they were sent (a v1 agent could not say "unknown").

Must stay importable on Python 3.8 (typing.List/Optional, no PEP 604 unions at runtime).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from gpumon_agent.bounds import OutOfBounds, check_bounds

SCHEMA_NAME = "gpumon.report"
SCHEMA_VERSION = 2
# Versions this reader decodes: v1 reports (older agents) are a subset of v2 with the same meanings.
READABLE_VERSIONS = (1, 2)
# A report larger than this is refused by readers (the poller enforces it on the wire too).
MAX_REPORT_BYTES = 1024 * 1024

# GPU states.
GPU_OK = "ok"
GPU_LOST = "lost"  # fell off the bus / NVML_ERROR_GPU_IS_LOST
GPU_ERROR = "error"  # any other per-GPU failure; see Gpu.error

# Where a report came from.
SOURCE_DAEMON = "daemon"  # the latest snapshot written by the running agent daemon
SOURCE_ONESHOT = "oneshot"  # sampled once by `report` itself (no daemon, or its snapshot stale)
SOURCE_AGENTLESS = "agentless"  # built centrally from nvidia-smi + ps (degraded)


class ReportError(ValueError):
    """A report that cannot be read: not JSON, wrong schema or version, or a bad field."""


@dataclass
class GpuProcess:
    pid: int
    kind: str = "compute"  # "compute" | "graphics" | "compute+graphics"
    gpu_memory_bytes: Optional[int] = None
    user: str = "?"  # "?" when the pid vanished or is not readable
    command: str = "?"  # command line, trimmed; "?" when unknown


@dataclass
class ClaimInfo:
    """A live claim on a GPU, as a trainer registered it (see gpumon_agent.claims)."""

    job: str
    user: str
    pid: int
    started_at: str
    updated_at: Optional[str] = None
    progress: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Gpu:
    index: int
    uuid: Optional[str] = None
    name: Optional[str] = None
    pci_bus_id: Optional[str] = None
    state: str = GPU_OK
    error: Optional[str] = None
    utilization_pct: Optional[float] = None  # instant, as NVML last measured it
    utilization_mean_pct: Optional[float] = None  # mean over Report.window_s
    memory_utilization_pct: Optional[float] = None
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    temperature_c: Optional[float] = None
    power_w: Optional[float] = None
    power_limit_w: Optional[float] = None
    throttle_reasons: Optional[List[str]] = None  # None: unknown; []: not throttled
    # None: unknown (NVML could not list them; processes_error says why); []: none run. A list
    # with processes_error set holds those listed by the queries that worked: at least these.
    processes: Optional[List[GpuProcess]] = None
    processes_error: Optional[str] = None  # the failed query and NVML's error
    claims: List[ClaimInfo] = field(default_factory=list)
    # None: cannot be told (processes unknown, or claims not read): never a guess either way.
    unclaimed_use: Optional[bool] = None  # a process runs here that no live claim covers
    claimed_idle: Optional[bool] = None  # claimed, yet no process for longer than the idle limit
    idle_since: Optional[str] = None  # when the last process left this GPU (if known)

    @property
    def key(self) -> str:
        """What tells this GPU apart across samples: its UUID (a renumbered GPU keeps its
        own), else its index. Not part of the Report."""
        return self.uuid or f"index:{self.index}"


@dataclass
class Address:
    interface: str
    address: str
    family: str  # "inet" | "inet6"


@dataclass
class LoggedInUser:
    name: str
    terminal: Optional[str] = None
    host: Optional[str] = None
    started_at: Optional[str] = None


@dataclass
class Host:
    hostname: str
    primary_ip: Optional[str] = None
    addresses: Optional[List[Address]] = None  # None: not read
    boot_time: Optional[str] = None
    load_avg: Optional[List[float]] = None  # 1, 5, 15 minutes
    cpu_count: Optional[int] = None
    cpu_percent: Optional[float] = None
    memory_total_bytes: Optional[int] = None
    memory_used_bytes: Optional[int] = None
    memory_percent: Optional[float] = None
    swap_total_bytes: Optional[int] = None
    swap_used_bytes: Optional[int] = None
    swap_percent: Optional[float] = None
    disk_root_total_bytes: Optional[int] = None
    disk_root_used_bytes: Optional[int] = None
    disk_root_percent: Optional[float] = None
    users: Optional[List[LoggedInUser]] = None  # None: not read; []: nobody logged in


@dataclass
class Nvml:
    available: bool
    driver_version: Optional[str] = None
    nvml_version: Optional[str] = None
    cuda_driver_version: Optional[int] = None
    error: Optional[str] = None  # human text when NVML is unavailable or failed
    error_code: Optional[str] = None  # stable: "library_not_found", "driver_not_loaded", ...


@dataclass
class HealthWarning:
    code: str  # stable, e.g. "load_high", "gpu_memory_high"
    message: str  # short human text
    gpu_index: Optional[int] = None


@dataclass
class ClaimFileProblem:
    """A claim file that does not count, and why (``Report.claim_errors``; the exception raised
    while reading one is gpumon_agent.claims.InvalidClaimFile)."""

    path: str
    error: str


@dataclass
class Report:
    generated_at: str
    host: Host
    source: str = SOURCE_DAEMON
    schema: str = SCHEMA_NAME
    version: int = SCHEMA_VERSION
    agent_version: Optional[str] = None
    timezone: Optional[str] = None  # IANA name when known, else the abbreviation
    utc_offset_s: Optional[int] = None
    interval_s: Optional[float] = None  # daemon sampling interval
    window_s: Optional[float] = None  # window of the *_mean_* values
    notes: List[str] = field(default_factory=list)  # e.g. "no daemon running: sampled once"
    nvml: Nvml = field(default_factory=lambda: Nvml(available=False))
    gpus: List[Gpu] = field(default_factory=list)
    warnings: List[HealthWarning] = field(default_factory=list)
    claim_errors: List[ClaimFileProblem] = field(default_factory=list)
    # Live CPU-only claims (`gpumon claim --cpu`): jobs that hold no GPU. Optional: readers
    # of reports without it (older agents) see none.
    cpu_claims: List[ClaimInfo] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        if not isinstance(data, dict):
            raise ReportError(f"report: expected a JSON object, got {_json_type(data)}")
        if data.get("schema") != SCHEMA_NAME:
            raise ReportError(
                "report: schema is {!r}, expected {!r} — is this a gpumon agent?".format(
                    data.get("schema"), SCHEMA_NAME
                )
            )
        version = data.get("version")
        readable = isinstance(version, int) and not isinstance(version, bool)
        if not readable or version not in READABLE_VERSIONS:
            side = " on the central box" if _newer(version) else "-agent on the server"
            raise ReportError(
                f"report: schema version {version!r}, this reader understands "
                f"{', '.join(map(str, READABLE_VERSIONS))} — upgrade gpumon{side}"
            )
        try:
            decoded = _decoder(cls)(data)
        except _Invalid:
            # The fast decoder only says "no": the careful one says what and where (it raises).
            decoded = _decode(cls, data, "report")
        return check(decoded)

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> Report:
        if len(text) > MAX_REPORT_BYTES:
            raise ReportError(
                f"report: {len(text)} bytes, larger than the {MAX_REPORT_BYTES}-byte limit"
            )
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ReportError(f"report: not JSON ({e})") from None
        except RecursionError:
            raise ReportError("report: nested too deeply to be a Report") from None
        return cls.from_dict(data)


def check(report: Report) -> Report:
    """Every field within what a sane agent sends (``gpumon_agent.bounds``): text and lists cut,
    an absurd number or a bad address a ReportError naming the field. In place; returns it."""
    try:
        return check_bounds(report)
    except OutOfBounds as e:
        raise ReportError(str(e)) from None


def utc_iso(ts: Optional[float] = None) -> str:
    """A POSIX timestamp (default: now) as UTC ISO-8601 with a trailing Z, to the second."""
    if ts is None:
        moment = _dt.datetime.now(_dt.timezone.utc)
    else:
        moment = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc_iso(text: str) -> _dt.datetime:
    """The inverse of utc_iso (also accepts fractional seconds and +00:00)."""
    cleaned = text[:-1] + "+00:00" if text.endswith("Z") else text
    moment = _dt.datetime.fromisoformat(cleaned)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment


# --- decoding with precise error paths -------------------------------------------------------


def _newer(version: Any) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        import typing

        module = sys.modules[cls.__module__]
        _HINTS[cls] = typing.get_type_hints(cls, vars(module))
    return _HINTS[cls]


class _Invalid(Exception):
    """The fast decoder met something it will not decode; ``_decode`` says what."""


_DECODERS: Dict[Any, Any] = {}


def _decoder(tp: Any) -> Any:
    """A function decoding JSON values of type ``tp`` exactly as ``_decode`` does, built once
    per type, that raises ``_Invalid`` (no message, no path) wherever ``_decode`` would raise:
    the poller decodes every Report of every sweep, and building each field's path for a
    message that is almost never needed cost as much as the decoding itself."""
    found = _DECODERS.get(tp)
    if found is None:
        found = _DECODERS[tp] = _build_decoder(tp)
    return found


def _build_decoder(tp: Any) -> Any:
    origin = getattr(tp, "__origin__", None)
    args = getattr(tp, "__args__", ())
    if origin is Union:  # Optional[X]
        inner = _decoder(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if tp is Any:
        return lambda value: value
    if origin in (list, List):
        each = _decoder(args[0])

        def decode_list(value: Any) -> Any:
            if type(value) is not list:
                raise _Invalid
            return [each(v) for v in value]

        return decode_list
    if origin in (dict, Dict):

        def decode_dict(value: Any) -> Any:
            if type(value) is not dict:
                raise _Invalid
            return dict(value)

        return decode_dict
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        fields = [
            (
                f.name,
                hints[f.name],
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(tp)
        ]
        built: List[Any] = [None]

        def decode_record(value: Any) -> Any:
            if type(value) is not dict:
                raise _Invalid
            plan = built[0]
            if plan is None:  # the field decoders, on first use (a type may contain itself)
                # Made whole, then stored in one step: another thread sees all or none.
                plan = built[0] = [(n, _decoder(hint), req) for n, hint, req in fields]
            kwargs = {}
            for name, decode, required in plan:
                if name in value:
                    kwargs[name] = decode(value[name])
                elif required:
                    raise _Invalid
            return tp(**kwargs)

        return decode_record
    if tp is bool:

        def decode_bool(value: Any) -> Any:
            if value is True or value is False:
                return value
            raise _Invalid

        return decode_bool
    if tp is int:

        def decode_int(value: Any) -> Any:
            if type(value) is int:
                return value
            raise _Invalid

        return decode_int
    if tp is float:

        def decode_float(value: Any) -> Any:
            kind = type(value)
            if kind is float:
                return value
            if kind is int:
                try:
                    return float(value)
                except OverflowError:
                    raise _Invalid from None
            raise _Invalid

        return decode_float
    if tp is str:

        def decode_str(value: Any) -> Any:
            if type(value) is str:
                return value
            raise _Invalid

        return decode_str
    raise TypeError(f"report schema: unsupported type {tp!r}")  # pragma: no cover


def _decode(tp: Any, value: Any, path: str) -> Any:
    origin = getattr(tp, "__origin__", None)
    args = getattr(tp, "__args__", ())
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value, path)
    if tp is Any:
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ReportError(f"{path}: expected an array, got {_json_type(value)}")
        return [_decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ReportError(f"{path}: expected an object, got {_json_type(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ReportError(f"{path}: expected an object, got {_json_type(value)}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _decode(_hints(tp)[f.name], value[f.name], path + "." + f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ReportError(f"{path}: missing required field {f.name!r}")
        return tp(**kwargs)
    if tp is bool:
        if not isinstance(value, bool):
            raise ReportError(f"{path}: expected a boolean, got {_json_type(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportError(f"{path}: expected an integer, got {_json_type(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{path}: expected a number, got {_json_type(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            digits = len(str(abs(value)))
            raise ReportError(f"{path}: a {digits}-digit number is out of range") from None
    if tp is str:
        if not isinstance(value, str):
            raise ReportError(f"{path}: expected a string, got {_json_type(value)}")
        return value
    raise TypeError(f"report schema: unsupported type {tp!r} at {path}")  # pragma: no cover
