"""Since when each GPU has had no process ("idle since") and no use at all ("unused since"),
kept across pushes: `gpumon push` runs from cron, a new process each minute, and the State
column says "unused 3 d".

They live in the state directory's database (``history.sqlite3``, gpumon.statedb — one store
with the history and the alerts), in their own table ``gpu_times``::

    key TEXT PRIMARY KEY ("mlbsp|GPU-8f2c…"), idle_since, unused_since, seen (POSIX seconds)

keyed by ``times_key(server, uuid, index)`` — the server and the GPU's UUID (a GPU renumbered
by a reboot keeps its times; one server's agent cannot touch another's), else its index.
The table is this module's, not the history store's: ``[history] enabled = false`` stops the
recording of pushes, never these times.

Only a push saves them: ``update_times`` reads, advances and writes them in one transaction
(under the push lock), so a read that fails never overwrites good times with fresh ones.
A dry run, `gpumon free` and `gpumon status` only read (``load_times``, which never creates the
database). A corrupt database is moved aside as the history's is (gpumon.statedb) and the times
start afresh, with a warning. A ``gpu-times.json`` left by an older gpumon is read (until then
``load_times`` reads it too), its times written to the table by the next push, and removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpumon.config import Config, server_key
from gpumon.statedb import (
    HistoryCorrupt,
    HistoryUnavailable,
    db_path,
    ensure_schema,
    history_db,
    is_corruption,
    move_aside,
    open_db,
    unavailable,
)

log = logging.getLogger(__name__)

FILE_NAME = "gpu-times.json"  # where gpumon before the shared database kept them
VERSION = 1
TABLE = "gpu_times"
MAX_ENTRIES = 100_000  # a fleet of 512 servers × 100 GPUs is 51,200
FORGET_AFTER_S = 30 * 86400.0  # a GPU not seen for this long is forgotten
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_KEY_CHARS = 400

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    idle_since REAL,
    unused_since REAL,
    seen REAL NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class GpuTimes:
    idle_since: float | None = None  # POSIX time since which no process ran on it
    unused_since: float | None = None  # ... and no claim held it either
    seen: float = 0.0  # the last push that saw the GPU (for forgetting)


def times_key(server: str, uuid: str | None, index: int) -> str:
    """ "mlbsp|GPU-8f2c…", or "mlbsp|#2" for a GPU without a UUID."""
    gpu = uuid if uuid else f"#{index}"
    return f"{server_key(server)}|{gpu}"[:MAX_KEY_CHARS]


Advance = Callable[[dict[str, "GpuTimes"]], dict[str, "GpuTimes"]]


def load_times(config: Config) -> dict[str, GpuTimes]:
    """The times saved by the last push, read only (a dry run, `gpumon free`): {} when there
    are none. Never creates the database; a problem with it is a warning and no times."""
    legacy = read_times_file(config.state_path(FILE_NAME))
    path = db_path(config)
    if not path.exists():
        return legacy
    try:
        conn = open_db(config)
    except HistoryUnavailable as e:  # HistoryCorrupt too: it was moved aside
        log.warning("%s; the GPUs' idle/unused times start afresh", e)
        return legacy
    try:
        return {**legacy, **_read_rows(conn, path)}
    except sqlite3.DatabaseError as e:
        conn.close()
        problem = move_aside(path, e) if is_corruption(e) else unavailable(path, e)
        log.warning("%s; the GPUs' idle/unused times start afresh", problem)
        return legacy
    finally:
        conn.close()


def update_times(
    config: Config, advance: Advance, now: float | None = None
) -> tuple[dict[str, GpuTimes], str | None]:
    """What a push does: read the saved times, ``advance`` them, save the result — one
    transaction. Returns the advanced times and, when they could not be saved, why (they are
    then advanced from none, or from an old gpu-times.json, and nothing is written)."""
    now = time.time() if now is None else now
    legacy_path = config.state_path(FILE_NAME)
    had_file = legacy_path.exists()
    times: dict[str, GpuTimes] | None = None
    problem: str | None = None
    try:
        with history_db(config) as conn:
            ensure_schema(conn, SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                saved = {**read_times_file(legacy_path), **_read_rows(conn, db_path(config))}
                advanced = advance(saved)
                _write_rows(conn, advanced, now)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the error that got us here says more
                raise
            times = advanced
    except HistoryCorrupt as e:
        # Moved aside; when the new database took this push's times, they start from here.
        problem = f"{e}; the GPUs' idle/unused times start afresh"
    except HistoryUnavailable as e:
        problem = f"cannot save the GPUs' idle/unused times: {e}"
    if times is None:
        return advance(read_times_file(legacy_path)), problem
    if had_file:
        try:
            legacy_path.unlink()
            log.info("%s: its times are now in %s; removed", legacy_path, db_path(config))
        except FileNotFoundError:
            pass
        except OSError as e:
            # Harmless: the database's times win over the file's from now on.
            log.warning("%s: times moved to the database, but not removed (%s)", legacy_path, e)
    return times, problem


def saved_count(conn: sqlite3.Connection) -> int:
    """How many GPUs' times the database holds (0 before the first push; creates nothing)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    return 0 if exists is None else conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def _read_rows(conn: sqlite3.Connection, path: Path) -> dict[str, GpuTimes]:
    """The table's times; a row that is not a GPU's times (written by hand, a future gpumon)
    costs that row, with a warning."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    if exists is None:
        return {}
    out: dict[str, GpuTimes] = {}
    bad: list[str] = []
    for key, idle, unused, seen in conn.execute(
        f"SELECT key, idle_since, unused_since, seen FROM {TABLE} LIMIT ?", (MAX_ENTRIES,)
    ):
        try:
            if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
                raise ValueError(f"key {str(key)[:60]!r} is not a GPU's")
            out[key] = GpuTimes(
                idle_since=_time(idle, key),
                unused_since=_time(unused, key),
                seen=_time(seen, key) or 0.0,
            )
        except ValueError as e:
            bad.append(str(e))
    if bad:
        log.warning(
            "%s: %d damaged GPU times ignored (those GPUs' times start afresh), e.g. %s",
            path,
            len(bad),
            bad[0],
        )
    return out


def _write_rows(conn: sqlite3.Connection, times: dict[str, GpuTimes], now: float) -> None:
    """Replace the table with ``times``, less the GPUs not seen for FORGET_AFTER_S (and beyond
    MAX_ENTRIES, the longest unseen)."""
    kept = {k: t for k, t in times.items() if now - t.seen <= FORGET_AFTER_S}
    if len(kept) > MAX_ENTRIES:
        newest = sorted(kept.items(), key=lambda kv: kv[1].seen, reverse=True)[:MAX_ENTRIES]
        kept = dict(newest)
    conn.execute(f"DELETE FROM {TABLE}")
    conn.executemany(
        f"INSERT INTO {TABLE}(key, idle_since, unused_since, seen) VALUES (?, ?, ?, ?)",
        [(k, t.idle_since, t.unused_since, t.seen) for k, t in sorted(kept.items())],
    )


def read_times_file(path: Path) -> dict[str, GpuTimes]:
    """An old ``gpu-times.json`` (version 1); {} when there is none (or it is damaged: then it
    is moved aside, and a warning names it)."""
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
