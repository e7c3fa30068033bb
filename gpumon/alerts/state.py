"""The alerts' memory across pushes: conditions, the servers seen, messages not yet delivered and
each channel's last outcome — in the state directory's SQLite database (``history.sqlite3``,
which the history store shares), in tables of its own, so that cron pushes (one process each)
and `gpumon serve` tell each transition once.

- The tables are made with ``CREATE TABLE IF NOT EXISTS`` on every open: idempotent, and no
  order between this module and the history store's.
- WAL journal, a busy timeout: readers (`gpumon alerts`, `gpumon check`) never block a push,
  and a second writer waits its turn. Pushes are serialised by the push lock anyway; a push's
  read-decide-write is one ``BEGIN IMMEDIATE`` transaction all the same.
- A file that is not a database is moved aside (with its -wal and -shm) and a new one started,
  with a warning naming where it went.
- The file is 0600: it holds who ran what where.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gpumon.alerts.conditions import Condition

DATABASE = "history.sqlite3"
BUSY_TIMEOUT_S = 10.0
MAX_PENDING = 50  # messages kept per channel while it fails; older ones are dropped

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alert_servers (
        server_key TEXT PRIMARY KEY,
        first_polled REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS alert_conditions (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        server TEXT NOT NULL,
        server_key TEXT NOT NULL,
        since REAL NOT NULL,
        text TEXT NOT NULL,
        scope TEXT NOT NULL DEFAULT '',
        sent_at REAL,
        at_start INTEGER NOT NULL DEFAULT 0,
        routes TEXT NOT NULL DEFAULT '[]',
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        created_at REAL NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        events INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alert_outbox_channel ON alert_outbox (channel, id)",
    """CREATE TABLE IF NOT EXISTS alert_channels (
        channel TEXT PRIMARY KEY,
        last_attempt REAL,
        last_ok REAL,
        failing_since REAL,
        failures INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        dropped INTEGER NOT NULL DEFAULT 0
    )""",
)


class StateError(Exception):
    """The alert state cannot be opened or written (the reason names the file)."""


@dataclass(frozen=True)
class Pending:
    id: int
    channel: str
    created_at: float
    subject: str
    body: str
    events: int


@dataclass(frozen=True)
class ChannelStatus:
    channel: str
    last_attempt: float | None
    last_ok: float | None
    failing_since: float | None
    failures: int
    error: str | None
    dropped: int
    pending: int


class AlertStore:
    """One connection to the state database; ``close`` it (or use ``with``)."""

    def __init__(self, path: Path, warnings: list[str] | None = None) -> None:
        self.path = path
        self.warnings = warnings if warnings is not None else []
        self._db = self._open()

    @classmethod
    def at(cls, state_dir: Path, warnings: list[str] | None = None) -> AlertStore:
        return cls(state_dir / DATABASE, warnings)

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # --- opening -----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Made 0600 before SQLite opens it (its -wal and -shm take the file's mode).
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as e:
            raise StateError(
                f"{self.path}: cannot create the alert state ({e.strerror or e})"
            ) from None
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and not _corrupt(e):
                raise StateError(f"{self.path}: cannot open the alert state ({e})") from None
            aside = self._move_aside(e)
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            raise StateError(f"{self.path}: cannot open the alert state ({e})") from None
        finally:
            self.warnings.append(aside)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            for statement in SCHEMA:
                db.execute(statement)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, error: Exception) -> str:
        aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    os.replace(side, aside.with_name(aside.name + suffix))
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as e:
            raise StateError(
                f"{self.path}: not a database ({error}) and it cannot be moved aside ({e})"
            ) from None
        return f"{self.path}: not a database ({error}); moved to {aside}, starting afresh"

    # --- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on any error)."""
        self._execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._execute("COMMIT")

    def _execute(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as e:
            raise StateError(f"{self.path}: {e}") from None

    # --- servers and conditions --------------------------------------------------------------

    def known_servers(self) -> set[str]:
        return {row[0] for row in self._execute("SELECT server_key FROM alert_servers")}

    def add_servers(self, keys: set[str], now: float) -> None:
        for key in sorted(keys):
            self._execute(
                "INSERT OR IGNORE INTO alert_servers (server_key, first_polled) VALUES (?, ?)",
                (key, now),
            )

    def conditions(self, key: str | None = None) -> dict[str, Condition]:
        """Every condition kept, or only the one ``key`` names."""
        where, args = ("WHERE key = ?", (key,)) if key is not None else ("", ())
        rows = self._execute(
            "SELECT key, kind, server, server_key, since, text, scope, sent_at, at_start, "
            f"routes, detail FROM alert_conditions {where}",
            args,
        ).fetchall()
        out: dict[str, Condition] = {}
        for row in rows:
            routes, detail = _json(row[9], list), _json(row[10], dict)
            out[row[0]] = Condition(
                key=row[0],
                kind=row[1],
                server=row[2],
                server_key=row[3],
                since=float(row[4]),
                text=row[5],
                scope=row[6],
                sent_at=None if row[7] is None else float(row[7]),
                at_start=bool(row[8]),
                routes=[str(r) for r in routes],  # type: ignore[union-attr]
                detail=detail,  # type: ignore[arg-type]
            )
        return out

    def replace_conditions(self, conditions: dict[str, Condition]) -> None:
        self._execute("DELETE FROM alert_conditions")
        for c in conditions.values():
            self._execute(
                "INSERT INTO alert_conditions (key, kind, server, server_key, since, text, scope, "
                "sent_at, at_start, routes, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.key,
                    c.kind,
                    c.server,
                    c.server_key,
                    c.since,
                    c.text,
                    c.scope,
                    c.sent_at,
                    int(c.at_start),
                    json.dumps(c.routes),
                    json.dumps(c.detail),
                ),
            )

    # --- the outbox ----------------------------------------------------------------------

    def enqueue(self, channel: str, now: float, subject: str, body: str, events: int) -> None:
        self._execute(
            "INSERT INTO alert_outbox (channel, created_at, subject, body, events) "
            "VALUES (?, ?, ?, ?, ?)",
            (channel, now, subject, body, events),
        )
        extra = self._execute(
            "SELECT id FROM alert_outbox WHERE channel = ? ORDER BY id DESC LIMIT -1 OFFSET ?",
            (channel, MAX_PENDING),
        ).fetchall()
        if extra:
            self._execute(
                f"DELETE FROM alert_outbox WHERE id IN ({','.join('?' * len(extra))})",
                [row[0] for row in extra],
            )
            self._status_row(channel)
            self._execute(
                "UPDATE alert_channels SET dropped = dropped + ? WHERE channel = ?",
                (len(extra), channel),
            )

    def pending(self, channel: str | None = None) -> list[Pending]:
        where, args = ("WHERE channel = ?", (channel,)) if channel else ("", ())
        rows = self._execute(
            "SELECT id, channel, created_at, subject, body, events FROM alert_outbox "
            f"{where} ORDER BY id",
            args,
        ).fetchall()
        return [Pending(r[0], r[1], float(r[2]), r[3], r[4], int(r[5])) for r in rows]

    def discard(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self._execute(
                f"DELETE FROM alert_outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )

    # --- channels ------------------------------------------------------------------------

    def _status_row(self, channel: str) -> None:
        self._execute("INSERT OR IGNORE INTO alert_channels (channel) VALUES (?)", (channel,))

    def delivered(self, channel: str, now: float) -> None:
        self._status_row(channel)
        self._execute(
            "UPDATE alert_channels SET last_attempt = ?, last_ok = ?, failing_since = NULL, "
            "failures = 0, error = NULL, dropped = 0 WHERE channel = ?",
            (now, now, channel),
        )

    def failed(self, channel: str, now: float, error: str) -> None:
        self._status_row(channel)
        self._execute(
            "UPDATE alert_channels SET last_attempt = ?, failing_since = "
            "COALESCE(failing_since, ?), failures = failures + 1, error = ? WHERE channel = ?",
            (now, now, error, channel),
        )

    def channels(self) -> list[ChannelStatus]:
        counts = dict(
            self._execute("SELECT channel, COUNT(*) FROM alert_outbox GROUP BY channel").fetchall()
        )
        rows = self._execute(
            "SELECT channel, last_attempt, last_ok, failing_since, failures, error, dropped "
            "FROM alert_channels ORDER BY channel"
        ).fetchall()
        out = [ChannelStatus(*row, pending=int(counts.pop(row[0], 0))) for row in rows]
        out += [
            ChannelStatus(name, None, None, None, 0, None, 0, int(n))
            for name, n in sorted(counts.items())
        ]
        return out

    def forget_channels(self, keep: set[str]) -> int:
        """Drop the pending messages and status of channels no longer configured; how many
        messages went."""
        gone = [c.channel for c in self.channels() if c.channel not in keep]
        dropped = 0
        for channel in gone:
            dropped += len(self.pending(channel))
            self._execute("DELETE FROM alert_outbox WHERE channel = ?", (channel,))
            self._execute("DELETE FROM alert_channels WHERE channel = ?", (channel,))
        return dropped


def _corrupt(error: sqlite3.OperationalError) -> bool:
    # "file is not a database" is a DatabaseError; a few corruptions surface as these.
    text = str(error).lower()
    return "malformed" in text or "not a database" in text


def _json(text: str, kind: type) -> object:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return kind()
    return value if isinstance(value, kind) else kind()
