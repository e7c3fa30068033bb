"""Plausible values for every Report field: what a reader accepts from an agent it does not trust.

``Report.from_dict`` applies these after decoding the types (so both the central side and the
agent's own readers get them); the poller applies them to reports it builds itself (agentless).
The central box must survive any agent — a broken one, an old one, one a GPU-server user
replaced — and one bad value must cost that value or that server, never the push:

- **Numbers the agent measures** (bytes, percentages, temperatures, GPU indices, pids) must be
  finite and within a stated range, else the report is refused (``OutOfBounds`` naming the field,
  e.g. ``report.gpus[0].memory_used_bytes``): an absurd reading means the agent cannot be
  believed on anything else either. The server then shows OFF "bad output: …".
- **Addresses** must be IP literals (the sheet's IP column is written from them).
- **Text and lists are cut** to a cap, never refused: command lines, job names, user names and
  claim files come from GPU-server users, who must not be able to turn a server OFF in the sheet.
- **Claim progress** (any JSON a trainer sends) keeps at most ``MAX_PROGRESS_KEYS`` entries of
  scalars; a number out of range or a nested value becomes short text.

Fields without an entry below get the defaults (text ``DEFAULT_CHARS``, lists ``DEFAULT_ITEMS``,
numbers finite within ±2**63), so a field added later is bounded too.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, Tuple

from gpumon_agent.text import ELLIPSIS, cut

MAX_GPU_INDEX = 999  # the sheet's GPU column reads back 1-3 digits
MAX_BYTES = 2**60  # 1 EiB: more than any GPU, RAM or root file system
MAX_PID = 2**31 - 1
DEFAULT_CHARS = 4096
DEFAULT_ITEMS = 1024
DEFAULT_NUMBER = 2.0**63
MAX_PROGRESS_KEYS = 32
MAX_PROGRESS_TEXT = 200


class OutOfBounds(ValueError):
    """A value no sane agent sends; the message names the field's path."""


class Num:
    """A finite number in [lo, hi]."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi


class Text:
    """A string, cut to ``chars`` characters."""

    def __init__(self, chars: int) -> None:
        self.chars = chars


class Items:
    """A list, cut to ``items`` entries, each checked against ``each`` (None: the defaults)."""

    def __init__(self, items: int, each: Any = None) -> None:
        self.items, self.each = items, each


class Address:
    """An IPv4 or IPv6 address literal."""


class Progress:
    """A trainer's progress dict: scalars only, a few keys."""


PERCENT = Num(0, 100)
BYTES = Num(0, MAX_BYTES)
GPU_INDEX = Num(0, MAX_GPU_INDEX)
PID = Num(0, MAX_PID)
TIME = Text(64)
SHORT = Text(64)
NAME = Text(256)
MESSAGE = Text(1000)

# (dataclass name, field) → what the field may hold.
FIELDS: Dict[Tuple[str, str], Any] = {
    ("Report", "generated_at"): TIME,
    ("Report", "source"): SHORT,
    ("Report", "agent_version"): SHORT,
    ("Report", "timezone"): SHORT,
    ("Report", "utc_offset_s"): Num(-86400, 86400),
    ("Report", "interval_s"): Num(0, 86400),
    ("Report", "window_s"): Num(0, 10**7),
    ("Report", "notes"): Items(64, MESSAGE),
    ("Report", "gpus"): Items(MAX_GPU_INDEX + 1),
    ("Report", "warnings"): Items(256),
    ("Report", "claim_errors"): Items(256),
    ("Report", "cpu_claims"): Items(128),
    ("Host", "hostname"): Text(253),
    ("Host", "primary_ip"): Address(),
    ("Host", "addresses"): Items(256),
    ("Host", "boot_time"): TIME,
    ("Host", "load_avg"): Items(3, Num(0, 10**6)),
    ("Host", "cpu_count"): Num(0, 10**6),
    ("Host", "cpu_percent"): PERCENT,
    ("Host", "memory_total_bytes"): BYTES,
    ("Host", "memory_used_bytes"): BYTES,
    ("Host", "memory_percent"): PERCENT,
    ("Host", "swap_total_bytes"): BYTES,
    ("Host", "swap_used_bytes"): BYTES,
    ("Host", "swap_percent"): PERCENT,
    ("Host", "disk_root_total_bytes"): BYTES,
    ("Host", "disk_root_used_bytes"): BYTES,
    ("Host", "disk_root_percent"): PERCENT,
    ("Host", "users"): Items(256),
    ("Address", "interface"): SHORT,
    ("Address", "address"): Address(),
    ("Address", "family"): SHORT,
    ("LoggedInUser", "name"): NAME,
    ("LoggedInUser", "terminal"): SHORT,
    ("LoggedInUser", "host"): NAME,
    ("LoggedInUser", "started_at"): TIME,
    ("Nvml", "driver_version"): SHORT,
    ("Nvml", "nvml_version"): SHORT,
    ("Nvml", "cuda_driver_version"): Num(0, 10**7),
    ("Nvml", "error"): MESSAGE,
    ("Nvml", "error_code"): SHORT,
    ("Gpu", "index"): GPU_INDEX,
    ("Gpu", "uuid"): Text(128),
    ("Gpu", "name"): Text(128),
    ("Gpu", "pci_bus_id"): SHORT,
    ("Gpu", "state"): SHORT,
    ("Gpu", "error"): MESSAGE,
    ("Gpu", "utilization_pct"): PERCENT,
    ("Gpu", "utilization_mean_pct"): PERCENT,
    ("Gpu", "memory_utilization_pct"): PERCENT,
    ("Gpu", "memory_used_bytes"): BYTES,
    ("Gpu", "memory_total_bytes"): BYTES,
    ("Gpu", "temperature_c"): Num(-273.15, 1000),
    ("Gpu", "power_w"): Num(0, 10**6),
    ("Gpu", "power_limit_w"): Num(0, 10**6),
    ("Gpu", "throttle_reasons"): Items(32, SHORT),
    ("Gpu", "processes"): Items(1024),
    ("Gpu", "claims"): Items(128),
    ("Gpu", "idle_since"): TIME,
    ("GpuProcess", "pid"): PID,
    ("GpuProcess", "kind"): SHORT,
    ("GpuProcess", "gpu_memory_bytes"): BYTES,
    ("GpuProcess", "user"): NAME,
    ("GpuProcess", "command"): Text(4096),
    ("ClaimInfo", "job"): NAME,
    ("ClaimInfo", "user"): NAME,
    ("ClaimInfo", "pid"): PID,
    ("ClaimInfo", "started_at"): TIME,
    ("ClaimInfo", "updated_at"): TIME,
    ("ClaimInfo", "progress"): Progress(),
    ("HealthWarning", "code"): SHORT,
    ("HealthWarning", "message"): MESSAGE,
    ("HealthWarning", "gpu_index"): GPU_INDEX,
    ("ClaimFileProblem", "path"): Text(4096),
    ("ClaimFileProblem", "error"): MESSAGE,
}


def check_bounds(record: Any, path: str = "report") -> Any:
    """Check (and cut) a decoded Report — any dataclass tree — in place; returns it.
    Raises OutOfBounds naming the first field no sane agent sends."""
    try:
        _fast_record(record)
    except OutOfBounds:
        # The fast pass does not say where; this one does. What the fast one cut already stays
        # cut (cutting is idempotent), so the two agree on every field.
        _record(record, path)
    return record


# --- the fast pass: what _record/_value do, without building paths ------------------------

_PLAN: Dict[type, Any] = {}


def _fast_record(record: Any) -> None:
    kind = type(record)
    plan = _PLAN.get(kind)
    if plan is None:
        plan = _PLAN[kind] = [_plan(kind.__name__, f.name) for f in dataclasses.fields(record)]
    values = record.__dict__
    for name, spec, chars, lo, hi in plan:
        value = values[name]
        kind = type(value)
        if kind is str:
            if chars is None:  # an address, or progress: as _value does
                bounded = _fast_value(spec, value)
                if bounded is not value:
                    values[name] = bounded
            elif len(value) > chars:
                values[name] = cut(value, chars)
        elif kind is int or kind is float:
            if lo is None:
                continue  # progress: kept as it is, as _value does
            if not lo <= value <= hi:  # NaN fails this too
                _number(value, lo, hi, "")  # raises
        elif value is None or kind is bool:
            continue
        else:
            bounded = _fast_value(spec, value)
            if bounded is not value:
                values[name] = bounded


def _plan(kind: str, name: str) -> Tuple[str, Any, Any, Any, Any]:
    """(field, its spec, the chars a string of it keeps, the range a number of it keeps; None
    where another rule applies)."""
    spec = FIELDS.get((kind, name))
    chars = (
        None
        if isinstance(spec, (Address, Progress))
        else (spec.chars if isinstance(spec, Text) else DEFAULT_CHARS)
    )
    if isinstance(spec, Progress):
        lo = hi = None
    elif isinstance(spec, Num):
        lo, hi = spec.lo, spec.hi
    else:
        lo, hi = -DEFAULT_NUMBER, DEFAULT_NUMBER
    return name, spec, chars, lo, hi


def _fast_value(spec: Any, value: Any) -> Any:
    """``_value`` for the exact types JSON decodes to, in ``_value``'s order; anything else is
    ``_value``'s."""
    kind = type(value)
    if value is None or kind is bool:
        return value
    if hasattr(kind, "__dataclass_fields__"):
        _fast_record(value)
        return value
    if kind is list:
        limit = spec.items if isinstance(spec, Items) else DEFAULT_ITEMS
        each = spec.each if isinstance(spec, Items) else None
        return [_fast_value(each, v) for v in value[:limit]]
    if kind is dict:
        return _progress(value)
    if isinstance(spec, Progress):
        return value
    if kind is str:
        if isinstance(spec, Address):
            return _address(value, "")
        return cut(value, spec.chars if isinstance(spec, Text) else DEFAULT_CHARS)
    if kind is int or kind is float:
        lo, hi = (spec.lo, spec.hi) if isinstance(spec, Num) else (-DEFAULT_NUMBER, DEFAULT_NUMBER)
        return _number(value, lo, hi, "")
    return _value(spec, value, "")  # anything else: the careful pass's rules


def _record(record: Any, path: str) -> None:
    kind = type(record).__name__
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        bounded = _value(FIELDS.get((kind, f.name)), value, f"{path}.{f.name}")
        if bounded is not value:
            setattr(record, f.name, bounded)


def _value(spec: Any, value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _record(value, path)
        return value
    if isinstance(value, list):
        limit = spec.items if isinstance(spec, Items) else DEFAULT_ITEMS
        each = spec.each if isinstance(spec, Items) else None
        kept = value[:limit]
        return [_value(each, v, f"{path}[{i}]") for i, v in enumerate(kept)]
    if isinstance(spec, Progress) or isinstance(value, dict):
        return _progress(value) if isinstance(value, dict) else value
    if isinstance(value, str):
        if isinstance(spec, Address):
            return _address(value, path)
        return cut(value, spec.chars if isinstance(spec, Text) else DEFAULT_CHARS)
    if isinstance(value, (int, float)):
        lo, hi = (spec.lo, spec.hi) if isinstance(spec, Num) else (-DEFAULT_NUMBER, DEFAULT_NUMBER)
        return _number(value, lo, hi, path)
    return value


def _number(value: Any, lo: float, hi: float, path: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise OutOfBounds(f"{path}: {value!r} is not a finite number")
    if not lo <= value <= hi:
        shown = repr(value)
        if len(shown) > 24:
            shown = f"{shown[:12]}…({len(shown)} digits)"
        raise OutOfBounds(f"{path}: {shown} is out of range ({lo:g} to {hi:g})")
    return value


def _address(value: str, path: str) -> str:
    import ipaddress

    if len(value) <= 64:  # the longest IPv6 text is 45 characters
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
    raise OutOfBounds(f"{path}: {cut(value, 40)!r} is not an IP address")


def _progress(progress: Dict[Any, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in list(progress.items())[:MAX_PROGRESS_KEYS]:
        out[cut(str(key), 64)] = _progress_value(value)
    return out


def _progress_value(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # as the agent encodes them: "nan", "inf"
        if abs(value) <= DEFAULT_NUMBER:
            return value
        return cut(f"{value:.4g}" if isinstance(value, float) else "out of range", 40)
    if isinstance(value, str):
        return cut(value, MAX_PROGRESS_TEXT)
    try:
        text = json.dumps(value, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        text = ELLIPSIS
    return cut(text, MAX_PROGRESS_TEXT)
