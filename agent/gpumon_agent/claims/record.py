"""A claim record: one claim file's content (``ClaimRecord``), validated and bounded when read
(``from_dict``: every field checked, sizes and nesting capped, ``json_depth_ok`` before parsing),
its progress cleaned to JSON (``clean_progress``), a new one for this process (``new_record``),
and whether the process that made it still runs (``check_owner_process``: same pid, same
boot-relative start time, same uid — a reused pid does not revive a claim, a wall-clock step
does not kill it).

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
)

from gpumon_agent import pidstat
from gpumon_agent.report import (
    ClaimInfo,
    Gpu,
    parse_utc_iso,
    utc_iso,
)
from gpumon_agent.safedir import user_name

CLAIM_SCHEMA = "gpumon.claim"
CLAIM_VERSION = 1
MAX_CLAIM_BYTES = 64 * 1024  # a claim file larger than this is refused unread
MAX_PROGRESS_BYTES = 4 * 1024  # progress, as compact JSON
MAX_JOB_CHARS = 200
MAX_COMMAND_CHARS = 4096
# Nesting of a whole claim file (checked before it is parsed: deep nesting is what makes a
# parser recurse) and of its progress (which the writer checks, so it always fits the first).
MAX_JSON_DEPTH = 16
MAX_PROGRESS_DEPTH = 8
MAX_CLAIM_GPUS = 64
MAX_GPU_INDEX = 4095
MAX_UUID_CHARS = 96
MAX_PID = 4194304  # the kernel's PID_MAX_LIMIT
MAX_UID = 2**32 - 2

# Claims written by gpumon-agent 0.1, which recorded only the wall-clock start (pid_started),
# are compared that way, with this slack. Newer claims compare boot-relative ticks, exactly.
START_TIME_SLACK_S = 1.0

# JSON strings (closed, or running to the end of the text: always a match from a quote, so the
# scan stays linear), and innermost brackets, for the depth check.
_JSON_STRING_RE = re.compile(rb'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.DOTALL)
_INNERMOST_RE = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


class ClaimError(Exception):
    """A claim could not be made or kept. The message says what happened and what to do."""


class InvalidClaimFile(ValueError):
    """Why one claim file does not count (becomes a ClaimFileProblem)."""


# --- the claim record --------------------------------------------------------------------------


@dataclass
class ClaimedGpu:
    index: int
    uuid: Optional[str] = None


@dataclass
class ClaimRecord:
    """One claim file's content, validated. ``path`` is where it was read from or written to."""

    job: str
    user: str
    uid: int
    pid: int
    pid_started: float  # wall-clock start of pid (informational; 0.1 agents compare it)
    hostname: str
    command: str
    started_at: str  # utc_iso
    gpus: List[ClaimedGpu] = field(default_factory=list)
    updated_at: Optional[str] = None
    progress: Dict[str, Any] = field(default_factory=dict)
    path: str = ""
    # Start of pid in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid
    # apart whatever the wall clock does. None in claims of gpumon-agent 0.1.
    pid_start_ticks: Optional[int] = None
    # A CPU-only job (`gpumon claim --cpu`, claim(cpu=True)): no GPUs, shown in the server's
    # Job cell. Exactly one of ``cpu`` and ``gpus`` is set.
    cpu: bool = False

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    def covers(self, gpu: Gpu) -> bool:
        """True if this claim holds ``gpu`` (by UUID when both sides know it, else by index)."""
        for held in self.gpus:
            if held.uuid is not None and gpu.uuid is not None:
                if held.uuid == gpu.uuid:
                    return True
            elif held.index == gpu.index:
                return True
        return False

    def info(self) -> ClaimInfo:
        return ClaimInfo(
            job=self.job,
            user=self.user,
            pid=self.pid,
            started_at=self.started_at,
            updated_at=self.updated_at,
            progress=dict(self.progress),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": CLAIM_SCHEMA,
            "version": CLAIM_VERSION,
            "job": self.job,
            "user": self.user,
            "uid": self.uid,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "pid_start_ticks": self.pid_start_ticks,
            "hostname": self.hostname,
            "command": self.command,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "gpus": [{"index": g.index, "uuid": g.uuid} for g in self.gpus],
            "progress": self.progress,
            "cpu": self.cpu,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> ClaimRecord:
        """Validate a decoded claim file; raises InvalidClaimFile naming the bad field."""
        if not isinstance(data, dict):
            raise InvalidClaimFile("not a JSON object")
        if data.get("schema") != CLAIM_SCHEMA:
            raise InvalidClaimFile(f"schema is {data.get('schema')!r}, expected {CLAIM_SCHEMA!r}")
        if data.get("version") != CLAIM_VERSION:
            raise InvalidClaimFile(
                f"claim version {data.get('version')!r}, this agent reads {CLAIM_VERSION}"
                " (mixed gpumon-agent versions on this server?)"
            )
        gpus_raw = _field(data, "gpus", list)
        # Optional (claims of gpumon-agent before CPU claims have none): false when absent.
        cpu = data.get("cpu", False)
        if not isinstance(cpu, bool):
            raise InvalidClaimFile(f"field 'cpu': expected bool, got {type(cpu).__name__}")
        if cpu and gpus_raw:
            raise InvalidClaimFile("field 'gpus': a CPU claim ('cpu': true) claims no GPU")
        if not gpus_raw and not cpu:
            raise InvalidClaimFile("field 'gpus': claims no GPU (and is not a CPU claim)")
        if len(gpus_raw) > MAX_CLAIM_GPUS:
            raise InvalidClaimFile(f"field 'gpus': more than {MAX_CLAIM_GPUS} GPUs")
        gpus = []
        for i, g in enumerate(gpus_raw):
            if not isinstance(g, dict):
                raise InvalidClaimFile(f"field 'gpus[{i}]': expected an object")
            index = _bounded(g, "index", 0, MAX_GPU_INDEX, f"gpus[{i}].")
            uuid = _field(g, "uuid", str, f"gpus[{i}].", optional=True)
            if uuid is not None and len(uuid) > MAX_UUID_CHARS:
                raise InvalidClaimFile(f"field 'gpus[{i}].uuid': longer than {MAX_UUID_CHARS}")
            gpus.append(ClaimedGpu(index=index, uuid=uuid))
        progress = _field(data, "progress", dict)
        if _depth(progress) > MAX_PROGRESS_DEPTH:
            raise InvalidClaimFile(f"field 'progress': nested deeper than {MAX_PROGRESS_DEPTH}")
        if len(_compact(progress)) > MAX_PROGRESS_BYTES:
            raise InvalidClaimFile(f"field 'progress': larger than {MAX_PROGRESS_BYTES} bytes")
        pid_started = float(_field(data, "pid_started", float))
        if not math.isfinite(pid_started):
            raise InvalidClaimFile("field 'pid_started': not a finite number")
        ticks = None
        if data.get("pid_start_ticks") is not None:
            ticks = _bounded(data, "pid_start_ticks", 0, 2**63 - 1)
        record = cls(
            job=_capped(data, "job", MAX_JOB_CHARS),
            user=_capped(data, "user", 64),
            uid=_bounded(data, "uid", 0, MAX_UID),
            pid=_bounded(data, "pid", 1, MAX_PID),
            pid_started=pid_started,
            hostname=_capped(data, "hostname", 255),
            command=_capped(data, "command", MAX_COMMAND_CHARS),
            started_at=_capped(data, "started_at", 40),
            updated_at=_field(data, "updated_at", str, optional=True),
            gpus=gpus,
            progress=progress,
            path=path,
            pid_start_ticks=ticks,
            cpu=cpu,
        )
        if record.updated_at is not None and len(record.updated_at) > 40:
            raise InvalidClaimFile("field 'updated_at': longer than 40 characters")
        for name in ("started_at", "updated_at"):
            value = getattr(record, name)
            if value is not None:
                try:
                    parse_utc_iso(value)
                except ValueError:
                    raise InvalidClaimFile(f"field {name!r}: not an ISO-8601 time") from None
        return record


def _field(
    data: Dict[str, Any], name: str, kind: type, prefix: str = "", optional: bool = False
) -> Any:
    if name not in data:
        raise InvalidClaimFile(f"field '{prefix}{name}': missing")
    value = data[name]
    if value is None and optional:
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise InvalidClaimFile(
            f"field '{prefix}{name}': expected {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _bounded(data: Dict[str, Any], name: str, low: int, high: int, prefix: str = "") -> int:
    value = _field(data, name, int, prefix)
    if not low <= value <= high:
        shown = str(value) if -(10**20) < value < 10**20 else "a huge number"
        raise InvalidClaimFile(f"field '{prefix}{name}': {shown} is not in {low}..{high}")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def json_depth_ok(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests at most ``limit`` arrays/objects deep, checked before
    parsing and in linear time at C speed: strings are blanked out, then innermost bracket pairs
    are removed, one level per pass; brackets left after ``limit`` passes are too deep (or do not
    pair up, which the parser would refuse anyway)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True  # fewer brackets than levels: nothing to scan
    text = _JSON_STRING_RE.sub(b'""', raw)
    for _ in range(limit):
        text, removed = _INNERMOST_RE.subn(b"", text)
        if not removed:
            break
    return not any(bracket in text for bracket in (b"[", b"]", b"{", b"}"))


def _capped(data: Dict[str, Any], name: str, limit: int) -> str:
    value = _field(data, name, str)
    if len(value) > limit:
        raise InvalidClaimFile(f"field {name!r}: longer than {limit} characters")
    return value


def _compact(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def clean_progress(progress: Dict[str, Any]) -> Dict[str, Any]:
    """Progress as the registry stores it: JSON values only, capped in size.

    Numbers from numpy/torch (anything with ``.item()``) become Python numbers; NaN and
    infinities become the strings "nan", "inf", "-inf" (a diverging loss must not break the
    Report, which is strict JSON). Raises TypeError for a value JSON cannot hold and
    ValueError when the whole is over MAX_PROGRESS_BYTES.
    """
    cleaned = {str(k): _clean_value(v, str(k)) for k, v in progress.items()}
    if _depth(cleaned) > MAX_PROGRESS_DEPTH:
        raise ValueError(
            f"claim progress nests deeper than {MAX_PROGRESS_DEPTH} levels: report a few "
            "numbers (epoch, loss, accuracy), not nested structures"
        )
    size = len(_compact(cleaned))
    if size > MAX_PROGRESS_BYTES:
        raise ValueError(
            f"claim progress is {size} bytes as JSON, over the {MAX_PROGRESS_BYTES}-byte limit: "
            "report a few numbers (epoch, loss, accuracy), not arrays"
        )
    return cleaned


def _clean_value(value: Any, where: str, depth: int = 0) -> Any:
    if depth > MAX_PROGRESS_DEPTH:
        raise ValueError(
            f"claim progress {where!r}: nested deeper than {MAX_PROGRESS_DEPTH} levels"
        )
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (list, tuple)):
        return [_clean_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _clean_value(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _clean_value(item(), where, depth)
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"claim progress {where!r}: {type(value).__name__} is not a JSON value "
        "(use numbers, strings, booleans, lists or dicts)"
    )


# --- process identity --------------------------------------------------------------------------


def check_owner_process(record: ClaimRecord) -> Optional[str]:
    """None if the claim's process is alive and is the one that wrote it, "stale" if it is gone
    (dead, zombie, or the pid now belongs to a newer process), else why the claim is bogus.

    Compares the boot-relative start time (pidstat), so a wall-clock step changes nothing."""
    proc = pidstat.proc_stat(record.pid)
    if proc is None:
        return "stale"
    if not proc.visible:  # /proc hides other users' processes (hidepid=): trust the file
        return None
    if proc.state in pidstat.ZOMBIE_STATES or proc.start_ticks is None:
        return "stale"
    if record.pid_start_ticks is not None:
        if proc.start_ticks != record.pid_start_ticks:
            return "stale"
    elif abs(pidstat.wall_start(proc.start_ticks) - record.pid_started) > START_TIME_SLACK_S:
        return "stale"  # a claim of gpumon-agent 0.1: only its wall-clock start is known
    if proc.uids and record.uid not in proc.uids[:2]:
        return f"pid {record.pid} runs as uid {proc.uids[0]}, not the claim's uid {record.uid}"
    return None


def new_record(
    job: str, command: str, gpus: Sequence[Gpu], pid: Optional[int] = None, cpu: bool = False
) -> ClaimRecord:
    """A claim by this process (or ``pid``, one of this user's) on ``gpus``, started now; with
    ``cpu`` (and no ``gpus``), a CPU-only claim."""
    if cpu == bool(gpus):
        raise ValueError("a claim holds GPUs or is a CPU claim, not both nor neither")
    pid = os.getpid() if pid is None else pid
    ticks = pidstat.start_ticks(pid)
    if ticks is None:
        raise ClaimError(f"process {pid} is not running; cannot claim for it")
    uid = os.geteuid()
    return ClaimRecord(
        job=(job or "?")[:MAX_JOB_CHARS],
        user=user_name(uid)[:64],
        uid=uid,
        pid=pid,
        pid_started=pidstat.wall_start(ticks),
        pid_start_ticks=ticks,
        hostname=socket.gethostname()[:255],
        command=command[:MAX_COMMAND_CHARS],
        started_at=utc_iso(),
        gpus=[ClaimedGpu(index=g.index, uuid=g.uuid) for g in gpus],
        cpu=cpu,
    )
