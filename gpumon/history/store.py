"""The history store's tables, what a push writes into them, and how they are thinned.

Tables (all ``history_*``, created idempotently; other modules keep their own beside them):

- ``history_names``: every server, user, job, reservation text … stored once, referred to by
  id (a year of pushes repeats the same few hundred strings millions of times).
- ``history_raw``: one row per GPU per push (and one per server, ``gpu = -1``): the interval
  it covers ``[start, start + dur)`` in whole UTC seconds, ON, utilization (‰), memory (MiB),
  and the ids of its users, claims and reservation. Kept ``[history] raw_days`` (14).
- ``history_agg`` / ``history_agg_person``: the same pushes summed per 5-minute (``level``
  300) and per hour (3600) bucket, per GPU, in GPU-seconds (gpumon.history.facts) — written
  with each push, in the same transaction, so every level always holds the same totals.
  5-minute sums are kept ``[history] five_minute_days`` (30), hourly ones for ever. Sums are
  whole numbers (seconds, utilization % x seconds, MiB x seconds).
- ``history_warnings``: pushes that carried each health warning, per server and hour.
- ``history_state``: per GPU, what the State column needs (when it was last busy, since when
  its reservation has gone unused) and, per server, the last push's time.

A push covers the time since that server's previous push, at most ``[history] max_sample_s``:
after a pause (the box down, cron stopped) the missing time is a gap, not one long sample.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpumon.config import Config
from gpumon.history.facts import GPU_FIELDS, PERSON_FIELDS, GpuSeconds, gpu_seconds
from gpumon.history.samples import GpuSample, ServerSample

LEVELS = (300, 3600)
MIB = 1 << 20  # the aggregate buckets, in seconds
SERVER_ROW = -1  # the gpu column of a server's own row

SCHEMA = """
CREATE TABLE IF NOT EXISTS history_names (
    id INTEGER PRIMARY KEY,
    value TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS history_raw (
    start INTEGER NOT NULL,
    server INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    dur INTEGER NOT NULL,
    is_on INTEGER NOT NULL,
    util INTEGER,
    mem_mib INTEGER,
    users INTEGER,
    claims INTEGER,
    reservation INTEGER,
    PRIMARY KEY (start, server, gpu)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_agg (
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    server INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    covered_s INTEGER NOT NULL DEFAULT 0,
    on_s INTEGER NOT NULL DEFAULT 0,
    busy_s INTEGER NOT NULL DEFAULT 0,
    unknown_s INTEGER NOT NULL DEFAULT 0,
    claimed_s INTEGER NOT NULL DEFAULT 0,
    reserved_s INTEGER NOT NULL DEFAULT 0,
    reserved_idle_s INTEGER NOT NULL DEFAULT 0,
    util_s INTEGER NOT NULL DEFAULT 0,
    util_known_s INTEGER NOT NULL DEFAULT 0,
    mem_s INTEGER NOT NULL DEFAULT 0,
    mem_known_s INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (level, bucket, server, gpu)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_agg_person (
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    server INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    person INTEGER NOT NULL,
    used_s INTEGER NOT NULL DEFAULT 0,
    reserved_s INTEGER NOT NULL DEFAULT 0,
    reserved_unused_s INTEGER NOT NULL DEFAULT 0,
    on_others_s INTEGER NOT NULL DEFAULT 0,
    unreserved_s INTEGER NOT NULL DEFAULT 0,
    unclaimed_s INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (level, bucket, server, gpu, person)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_warnings (
    bucket INTEGER NOT NULL,
    server INTEGER NOT NULL,
    code TEXT NOT NULL,
    pushes INTEGER NOT NULL,
    last_message TEXT NOT NULL,
    PRIMARY KEY (bucket, server, code)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_state (
    server INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    busy_end INTEGER,
    reservation INTEGER,
    reserved_since INTEGER,
    reserved_used_end INTEGER,
    PRIMARY KEY (server, gpu)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Retention:
    raw_s: int = 14 * 86400
    five_minute_s: int = 30 * 86400

    @classmethod
    def of(cls, config: Config) -> Retention:
        """``[history] raw_days`` and ``five_minute_days``."""
        h = config.history
        return cls(raw_s=h.raw_days * 86400, five_minute_s=h.five_minute_days * 86400)


class Names:
    """``history_names`` ids, looked up once per connection and value (``Names(conn)`` is the
    connection's one cache: a serve run looks each name up once)."""

    def __new__(cls, conn: sqlite3.Connection) -> Names:
        cached = getattr(conn, "names", None)  # gpumon.statedb.HistoryConnection's
        if not isinstance(cached, Names):
            cached = super().__new__(cls)
            cached.conn = conn
            cached.clear()
            if hasattr(conn, "names"):
                conn.names = cached  # type: ignore[attr-defined]
        return cached

    def clear(self) -> None:
        """Forget every id (after a rollback: ids inserted in it are gone)."""
        self._ids = {}
        self._values = {}
        self._tuples = {}
        self._loaded = False

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection
        self._ids: dict[str, int]
        self._values: dict[int, str]
        self._tuples: dict[tuple[str, tuple], int]
        self._loaded: bool

    def id_of(self, kind: str, value: tuple) -> int:
        """The id of a tuple of strings (and tuples of them), stored as tagged JSON."""
        key = (kind, value)
        found = self._tuples.get(key)
        if found is None:
            found = self._tuples[key] = self.id(_json_name(kind, value))
        return found

    def _load(self) -> None:
        # All of them in one query (a few hundred to a few thousand short strings): a cron
        # push on a fresh connection would otherwise look up a hundred, one by one.
        self._loaded = True
        for id_, value in self.conn.execute("SELECT id, value FROM history_names"):
            self._ids[value], self._values[id_] = id_, value

    def id(self, value: str) -> int:
        found = self._ids.get(value)
        if found is not None:
            return found
        if not self._loaded:
            self._load()
            found = self._ids.get(value)
            if found is not None:
                return found
        row = self.conn.execute("SELECT id FROM history_names WHERE value = ?", (value,)).fetchone()
        if row is None:
            # No RETURNING: SQLite before 3.35 (Debian 11's 3.34) lacks it.
            row = (
                self.conn.execute(
                    "INSERT INTO history_names(value) VALUES (?)", (value,)
                ).lastrowid,
            )
        self._ids[value], self._values[row[0]] = row[0], value
        return row[0]

    def value(self, id_: int) -> str:
        found = self._values.get(id_)
        if found is None:
            row = self.conn.execute(
                "SELECT value FROM history_names WHERE id = ?", (id_,)
            ).fetchone()
            found = row[0] if row else f"#{id_}"
            self._values[id_], self._ids[found] = found, id_
        return found

    def lookup(self, value: str) -> int | None:
        if value in self._ids:
            return self._ids[value]
        row = self.conn.execute("SELECT id FROM history_names WHERE value = ?", (value,)).fetchone()
        return row[0] if row else None


# Values stored by id, tagged by kind so that a user named like a server is still two names.
def _server_name(name: str) -> str:
    return "s:" + name


def _person_name(name: str) -> str:
    return "p:" + name


def _json_name(kind: str, value: object) -> str:
    return kind + json.dumps(value, ensure_ascii=False, separators=(",", ":"))


TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


def ensure(conn: sqlite3.Connection) -> None:
    """This module's tables, made if missing (one read of the catalogue when they are there)."""
    from gpumon.statedb import ensure_schema

    present = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'history%'"
        )
    }
    if not TABLES.issubset(present):
        ensure_schema(conn, SCHEMA)


def record(
    conn: sqlite3.Connection,
    servers: Sequence[ServerSample],
    at: float,
    *,
    max_sample_s: float = 300.0,
    retention: Retention | None = None,
) -> int:
    """Record one push made at ``at`` (POSIX seconds): one transaction, all or nothing. Returns
    the rows written to history_raw."""
    now = round(at)
    names = Names(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = _record(conn, names, servers, now, int(max_sample_s))
        compact(conn, now, retention or Retention(), in_transaction=True)
        conn.execute("COMMIT")
    except BaseException:
        names.clear()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return rows


_AGG_UPSERT = (
    "INSERT INTO history_agg(level, bucket, server, gpu, {cols}) VALUES (?, ?, ?, ?, {marks}) "
    "ON CONFLICT(level, bucket, server, gpu) DO UPDATE SET {sets}"
).format(
    cols=", ".join(GPU_FIELDS),
    marks=", ".join("?" for _ in GPU_FIELDS),
    sets=", ".join(f"{c} = {c} + excluded.{c}" for c in GPU_FIELDS),
)
_PERSON_UPSERT = (
    "INSERT INTO history_agg_person(level, bucket, server, gpu, person, {cols}) "
    "VALUES (?, ?, ?, ?, ?, {marks}) "
    "ON CONFLICT(level, bucket, server, gpu, person) DO UPDATE SET {sets}"
).format(
    cols=", ".join(PERSON_FIELDS),
    marks=", ".join("?" for _ in PERSON_FIELDS),
    sets=", ".join(f"{c} = {c} + excluded.{c}" for c in PERSON_FIELDS),
)


def _record(
    conn: sqlite3.Connection,
    names: Names,
    servers: Sequence[ServerSample],
    now: int,
    cap: int,
) -> int:
    raw: list[tuple] = []
    agg: list[tuple] = []
    person_rows: list[tuple] = []
    warnings: list[tuple] = []
    state: list[tuple] = []
    seen: set[int] = set()
    previous_all: dict[int, dict[int, list]] = {}
    for sid_, gpu_, *row in conn.execute(
        "SELECT server, gpu, last_at, first_at, busy_end, reservation, reserved_since, "
        "reserved_used_end FROM history_state"
    ):
        previous_all.setdefault(sid_, {})[gpu_] = row
    for server in servers:
        sid = names.id(_server_name(server.server))
        if sid in seen:
            continue  # one server twice in a push: the first counts
        seen.add(sid)
        previous = previous_all.get(sid, {})
        last = previous.get(SERVER_ROW)
        start = now if last is None else max(min(last[0], now), now - cap)
        samples = {g.gpu: g for g in server.gpus if g.gpu >= 0}
        for gpu in previous:
            if gpu != SERVER_ROW and gpu not in samples:
                # Seen before, not in this push (the server OFF, or the GPU gone): not ON.
                samples[gpu] = GpuSample(server=server.server, gpu=gpu, on=False, users=None)
        raw.append(
            (start, sid, SERVER_ROW, now - start, int(server.on), None, None, None, None, None)
        )
        server_seconds = GpuSeconds(covered_s=now - start, on_s=(now - start) * server.on)
        _spread(agg, person_rows, sid, SERVER_ROW, start, now, server_seconds, {}, names)
        first = now if last is None else last[1]
        state.append((sid, SERVER_ROW, now, first, None, None, None, None))
        for code, message in dict(server.warnings).items():
            warnings.append((now // 3600 * 3600, sid, code, message))
        for gpu, sample in sorted(samples.items()):
            ids = _ids(names, sample)
            util = None if sample.util_pct is None else round(sample.util_pct * 10)
            raw.append((start, sid, gpu, now - start, int(sample.on), util, *ids))
            g, people = gpu_seconds(sample, now - start)
            _spread(agg, person_rows, sid, gpu, start, now, g, people, names)
            state.append(
                (sid, gpu, now, *_gpu_state(previous.get(gpu), sample, ids[-1], start, now))
            )
    conn.executemany(
        "INSERT OR REPLACE INTO history_raw(start, server, gpu, dur, is_on, util, mem_mib, "
        "users, claims, reservation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        raw,
    )
    conn.executemany(_AGG_UPSERT, agg)
    conn.executemany(_PERSON_UPSERT, person_rows)
    if warnings:
        conn.executemany(
            "INSERT INTO history_warnings(bucket, server, code, pushes, last_message) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT(bucket, server, code) DO UPDATE SET "
            "pushes = pushes + 1, last_message = excluded.last_message",
            warnings,
        )
    conn.executemany(
        "INSERT OR REPLACE INTO history_state(server, gpu, last_at, first_at, busy_end, "
        "reservation, reserved_since, reserved_used_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        state,
    )
    return len(raw)


def _ids(names: Names, s: GpuSample) -> tuple[int | None, int | None, int | None, int | None]:
    users = None if s.users is None else names.id_of("u:", s.users)
    claims = names.id_of("c:", s.claims) if s.claims else None
    reservation = (
        names.id_of("r:", (s.reservation_text, s.reserved_people, s.reserved_by))
        if s.reserved_by
        else None
    )
    mem = None if s.memory_used_bytes is None else round(s.memory_used_bytes / MIB)
    return mem, users, claims, reservation


def _gpu_state(
    previous: list | None, s: GpuSample, reservation: int | None, start: int, now: int
) -> tuple:
    """(first_at, busy_end, reservation, reserved_since, reserved_used_end) after this push."""
    first_at, busy_end, old_reservation, reserved_since, reserved_used_end = (
        (now, None, None, None, None) if previous is None else previous[1:]
    )
    if s.on and s.users:
        busy_end = now
    if reservation is None:
        reserved_since = reserved_used_end = None
    elif reservation != old_reservation:
        reserved_since, reserved_used_end = start, None
    if reservation is not None and s.on and s.users and set(s.users) & set(s.reserved_by):
        reserved_used_end = now
    return first_at, busy_end, reservation, reserved_since, reserved_used_end


def _spread(
    agg: list,
    person_rows: list,
    sid: int,
    gpu: int,
    start: int,
    end: int,
    g: GpuSeconds,
    people: dict,
    names: Names,
) -> None:
    """Rows adding the interval's seconds to each 5-minute and hourly bucket it overlaps, in
    proportion (exact: a count of seconds is 0 or the whole interval, and a piece of the whole
    is a whole number of seconds)."""
    length = end - start
    if length <= 0:
        return
    # Stored as whole numbers (util % x s, MiB x s): a year of them stays small.
    values = [round(getattr(g, name)) for name in GPU_FIELDS]
    person_values = [
        (names.id(_person_name(p)), [getattr(ps, name) for name in PERSON_FIELDS])
        for p, ps in people.items()
    ]
    for level in LEVELS:
        t = start
        while t < end:
            bucket = t // level * level
            piece = min(end, bucket + level) - t
            if piece == length:
                agg.append((level, bucket, sid, gpu, *values))
                for pid, pv in person_values:
                    person_rows.append((level, bucket, sid, gpu, pid, *pv))
            else:
                agg.append((level, bucket, sid, gpu, *_part(values, piece, length)))
                for pid, pv in person_values:
                    person_rows.append((level, bucket, sid, gpu, pid, *_part(pv, piece, length)))
            t += piece


def _part(values: list, piece: int, length: int) -> list:
    # Second counts are 0 or the whole interval: the piece's share is exact in integers.
    return [piece if v == length else round(v * piece / length) for v in values]


def compact(
    conn: sqlite3.Connection, now: int, retention: Retention, *, in_transaction: bool = False
) -> None:
    """Drop pushes older than the raw retention and 5-minute sums older than theirs (the hourly
    sums hold the same totals, for ever)."""
    statements = [
        ("DELETE FROM history_raw WHERE start < ?", now - retention.raw_s),
        (
            "DELETE FROM history_agg WHERE level = 300 AND bucket < ?",
            now - retention.five_minute_s,
        ),
        (
            "DELETE FROM history_agg_person WHERE level = 300 AND bucket < ?",
            now - retention.five_minute_s,
        ),
    ]
    if not in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    for sql, cut in statements:
        conn.execute(sql, (cut,))
    if not in_transaction:
        conn.execute("COMMIT")


# --- what the State column asks ---------------------------------------------------------------


def _state_row(conn: sqlite3.Connection, server: str, gpu: int) -> tuple | None:
    names = Names(conn)
    sid = names.lookup(_server_name(server))
    if sid is None:
        return None
    return conn.execute(
        "SELECT last_at, first_at, busy_end, reservation, reserved_since, reserved_used_end "
        "FROM history_state WHERE server = ? AND gpu = ?",
        (sid, gpu),
    ).fetchone()


def idle_since(conn: sqlite3.Connection, server: str, gpu: int) -> float | None:
    """When the last process left this GPU (POSIX seconds), if it has none now; the first push
    that saw it if none was ever seen on it; None while a process runs, or if never seen."""
    row = _state_row(conn, server, gpu)
    if row is None:
        return None
    last_at, first_at, busy_end = row[0], row[1], row[2]
    if busy_end == last_at:
        return None  # busy in the latest push
    return float(busy_end if busy_end is not None else first_at)


def unused_since(conn: sqlite3.Connection, server: str, gpu: int) -> float | None:
    """Since when this GPU's current reservation has gone without a process of the people it
    charges (POSIX seconds): the reservation's first push, or the end of their last use under
    it. None when it is not reserved, or they use it now."""
    row = _state_row(conn, server, gpu)
    if row is None or row[3] is None:
        return None
    last_at, reserved_since, reserved_used_end = row[0], row[4], row[5]
    if reserved_used_end == last_at:
        return None
    return float(reserved_used_end if reserved_used_end is not None else reserved_since)


@dataclass(frozen=True)
class GpuTimes:
    """What the State column shows for one GPU (POSIX seconds, None: not applicable)."""

    unused_since: float | None  # its reservation unused by the people it names since
    idle_since: float | None  # no process on it since


def state_times(conn: sqlite3.Connection) -> dict[tuple[str, int], GpuTimes]:
    """``unused_since`` and ``idle_since`` of every GPU the store knows, in one query (what a
    push needs for all the sheet's rows)."""
    names = Names(conn)
    out: dict[tuple[str, int], GpuTimes] = {}
    for sid, gpu, last_at, first_at, busy_end, reservation, since, used_end in conn.execute(
        "SELECT server, gpu, last_at, first_at, busy_end, reservation, reserved_since, "
        "reserved_used_end FROM history_state WHERE gpu >= 0"
    ):
        idle = (
            None if busy_end == last_at else float(busy_end if busy_end is not None else first_at)
        )
        unused = None
        if reservation is not None and used_end != last_at:
            unused = float(used_end if used_end is not None else since)
        out[(names.value(sid)[2:], gpu)] = GpuTimes(unused, idle)
    return out


@dataclass(frozen=True)
class Recorded:
    """What the store holds, in brief (for `gpumon check`)."""

    servers: int  # servers ever recorded
    oldest: int | None  # the first push recorded (POSIX seconds), None before any
    newest: int | None  # the latest push recorded


def recorded(conn: sqlite3.Connection) -> Recorded:
    """The servers recorded and the first and latest push (one query on history_state, read
    only: nothing is created when the tables are missing)."""
    present = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history_state'"
    ).fetchone()
    if present is None:
        return Recorded(0, None, None)
    count, oldest, newest = conn.execute(
        "SELECT count(*), min(first_at), max(last_at) FROM history_state WHERE gpu = ?",
        (SERVER_ROW,),
    ).fetchone()
    return Recorded(count, oldest, newest)


# --- reading the raw rows back as samples -----------------------------------------------------


def raw_samples(
    conn: sqlite3.Connection, lo: int, hi: int, names: Names | None = None
) -> Iterable[tuple[int, int, int, int, GpuSample | None, int]]:
    """(start, end, server id, gpu, sample or None for a server row, is_on) for the raw rows
    overlapping [lo, hi)."""
    names = names or Names(conn)
    cache: dict[int | None, object] = {None: None}

    def decoded(id_: int | None) -> object:
        if id_ not in cache:
            text = names.value(id_)  # type: ignore[arg-type]
            try:
                cache[id_] = json.loads(text[2:])
            except ValueError:
                cache[id_] = None
        return cache[id_]

    rows = conn.execute(
        "SELECT start, start + dur, server, gpu, is_on, util, mem_mib, users, claims, "
        "reservation FROM history_raw WHERE start < ? AND start + dur > ? AND start >= ?",
        (hi, lo, lo - 86400),
    )
    for start, end, sid, gpu, is_on, util, mem_mib, users, claims, res in rows:
        if gpu == SERVER_ROW:
            yield start, end, sid, gpu, None, is_on
            continue
        user_list = decoded(users)
        reservation = decoded(res) or [None, [], []]
        sample = GpuSample(
            server="",
            gpu=gpu,
            on=bool(is_on),
            util_pct=None if util is None else util / 10,
            memory_used_bytes=None if mem_mib is None else mem_mib * MIB,
            users=None if users is None else tuple(user_list or ()),
            claims=tuple(tuple(c) for c in (decoded(claims) or ())),  # type: ignore[misc]
            reservation_text=reservation[0],
            reserved_people=tuple(reservation[1]),
            reserved_by=tuple(reservation[2]),
        )
        yield start, end, sid, gpu, sample, is_on
