"""Since when each GPU has had no process ("idle since") and no use at all ("unused since"),
kept across pushes: `gpumon push` runs from cron, a new process each minute, and the State
column says "unused 3 d".

One small JSON file in the state directory, ``gpu-times.json``::

    {"version": 1, "gpus": {"mlbsp|GPU-8f2c…": {"idle_since": 1710397605.0,
                                                "unused_since": 1710397605.0,
                                                "seen": 1710484005.0}, …}}

keyed by ``times_key(server, uuid, index)`` — the server and the GPU's UUID (a GPU renumbered
by a reboot keeps its times; one server's agent cannot touch another's), else its index.
Only a push saves it (under the push lock, through gpumon_agent.atomic.write_atomic: replaced
whole or not at all); `gpumon free` and `gpumon status` only read it. A damaged file is moved
aside with a warning and the times start afresh. The history store may later hold these.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gpumon.config import server_key
from gpumon_agent.atomic import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "gpu-times.json"
VERSION = 1
MAX_ENTRIES = 100_000  # a fleet of 512 servers × 100 GPUs is 51,200
FORGET_AFTER_S = 30 * 86400.0  # a GPU not seen for this long is forgotten
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_KEY_CHARS = 400


@dataclass(frozen=True)
class GpuTimes:
    idle_since: float | None = None  # POSIX time since which no process ran on it
    unused_since: float | None = None  # ... and no claim held it either
    seen: float = 0.0  # the last push that saw the GPU (for forgetting)


def times_key(server: str, uuid: str | None, index: int) -> str:
    """ "mlbsp|GPU-8f2c…", or "mlbsp|#2" for a GPU without a UUID."""
    gpu = uuid if uuid else f"#{index}"
    return f"{server_key(server)}|{gpu}"[:MAX_KEY_CHARS]


def load_times(path: Path) -> dict[str, GpuTimes]:
    """The times saved by the last push; {} when there are none (or the file is damaged: then
    it is moved aside, and a warning names it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        log.warning("%s: cannot read the GPU idle/unused times (%s); starting afresh", path, e)
        return {}
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return _decode(json.loads(raw.decode("utf-8")))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSON errors are ValueErrors
        aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
        try:
            os.replace(path, aside)
            moved = f"moved to {aside}"
        except OSError as move_error:
            moved = f"could not move it aside ({move_error})"
        log.warning("%s: damaged (%s); %s, starting afresh", path, str(e)[:200], moved)
        return {}


def save_times(path: Path, times: dict[str, GpuTimes], now: float | None = None) -> None:
    """Replace the file with ``times``, less the GPUs not seen for FORGET_AFTER_S (and beyond
    MAX_ENTRIES, the longest unseen). Raises OSError when the state directory cannot hold it."""
    now = time.time() if now is None else now
    kept = {k: t for k, t in times.items() if now - t.seen <= FORGET_AFTER_S}
    if len(kept) > MAX_ENTRIES:
        newest = sorted(kept.items(), key=lambda kv: kv[1].seen, reverse=True)[:MAX_ENTRIES]
        kept = dict(newest)
    data = {
        "version": VERSION,
        "gpus": {
            key: {"idle_since": t.idle_since, "unused_since": t.unused_since, "seen": t.seen}
            for key, t in sorted(kept.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=0) + "\n").encode("utf-8"), mode=0o600)


def _decode(data: object) -> dict[str, GpuTimes]:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"not a version-{VERSION} times file")
    gpus = data.get("gpus")
    if not isinstance(gpus, dict):
        raise ValueError("'gpus' is not an object")
    out: dict[str, GpuTimes] = {}
    for key, entry in list(gpus.items())[:MAX_ENTRIES]:
        if not isinstance(entry, dict) or len(key) > MAX_KEY_CHARS:
            raise ValueError(f"entry {key[:60]!r} is not a times object")
        out[key] = GpuTimes(
            idle_since=_time(entry.get("idle_since"), key),
            unused_since=_time(entry.get("unused_since"), key),
            seen=_time(entry.get("seen"), key) or 0.0,
        )
    return out


def _time(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key[:60]!r}: a time is not a number")
    value = float(value)
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise ValueError(f"{key[:60]!r}: time {value!r} out of range")
    return value
