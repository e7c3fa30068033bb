"""The state directory's SQLite database, ``state_dir/history.sqlite3`` (stdlib sqlite3, WAL).

``open_db(config)`` is the one way in, for every module that keeps its tables there (the
history store, the alerts, the GPUs' idle/unused times of gpumon.usetimes): each creates its
tables with ``ensure_schema(conn, DDL)``, ``CREATE … IF NOT EXISTS`` statements that cost
nothing when the tables are there. It sits low in the layers (below gpumon.sheet) so that
every one of them may use it.

- WAL, so ``gpumon history`` reads while a push writes; ``synchronous=NORMAL`` (a committed push
  may be lost to a power cut, never half-written); a busy timeout, so a cron push and serve (or
  a query) wait for each other's few milliseconds instead of failing.
- The file and its -wal/-shm are the central user's alone (0600), whatever the umask.
- A database SQLite calls corrupt ("file is not a database", "database disk image is
  malformed") is moved aside — ``history.sqlite3.corrupt-20261201T101500Z`` with its -wal and
  -shm — under ``history.lock``, and a new one started; ``HistoryCorrupt`` tells the caller,
  whose message names both files. Nothing else in the state directory is touched.
- Any other failure (disk full, read-only, locked for longer than the timeout) is a
  ``HistoryUnavailable`` naming the file: the push that wanted to record goes on without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gpumon.config import Config
from gpumon_agent.filelock import FileLock, LockBusy, LockFileError

DB_NAME = "history.sqlite3"
LOCK_NAME = "history.lock"  # held only while a corrupt database is moved aside
BUSY_TIMEOUT_MS = 5000  # a push holds the write lock for milliseconds; longer means stuck
_SIDE_FILES = ("-wal", "-shm", "-journal")
# SQLite's primary result codes that mean the file is not a usable database.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class HistoryConnection(sqlite3.Connection):
    """A connection that carries its name cache (gpumon.history.store.Names)."""

    names: object = None


class HistoryUnavailable(Exception):
    """The history database cannot be used now (the message names it and the cause)."""


class HistoryCorrupt(HistoryUnavailable):
    """The database was corrupt; it was moved to ``aside`` and a new one started."""

    def __init__(self, message: str, aside: Path | None) -> None:
        super().__init__(message)
        self.aside = aside


def db_path(config: Config) -> Path:
    return config.state_path(DB_NAME)


def is_corruption(error: BaseException) -> bool:
    """True for SQLite's "corrupt" and "not a database" errors (not for locked, full, I/O)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(error).lower()
    return isinstance(error, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
    )


def connect(path: Path) -> sqlite3.Connection:
    """A connection on ``path`` (created 0600 if missing) in WAL mode; raises sqlite3 errors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Made by us with the mode we want before SQLite opens it (SQLite would use the umask).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
        factory=HistoryConnection,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = OFF")
        # A first read: a file that is not a database fails here, not in the middle of a push.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            with contextlib.suppress(OSError):
                if side.exists() and side.stat().st_uid == os.geteuid():
                    os.chmod(side, 0o600)
    except BaseException:
        conn.close()
        raise
    return conn


def open_db(config: Config) -> sqlite3.Connection:
    """``state_dir/history.sqlite3``, opened (and created) for use; the caller closes it.

    Raises HistoryCorrupt after moving a corrupt database aside (call again for the new one),
    HistoryUnavailable when it cannot be opened at all."""
    path = db_path(config)
    try:
        return connect(path)
    except sqlite3.DatabaseError as e:
        if is_corruption(e):
            raise move_aside(path, e) from None
        raise unavailable(path, e) from None
    except OSError as e:
        raise unavailable(path, e) from None


def unavailable(path: Path, error: BaseException) -> HistoryUnavailable:
    reason = getattr(error, "strerror", None) or str(error)
    hint = ""
    if "full" in reason.lower() or _nearly_full(path.parent):
        hint = " — the disk is full: free space in the state directory"
    elif "i/o" in reason.lower():
        hint = " — check the disk holding the state directory (dmesg); the next push tries again"
    elif "readonly" in reason.lower().replace("-", "") or "permission" in reason.lower():
        hint = " — make the state directory writable for the user gpumon runs as"
    elif "locked" in reason.lower():
        hint = " — another gpumon has held it for too long; the next push tries again"
    return HistoryUnavailable(f"{path}: {reason}{hint}")


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free (or no inodes) where the database lives."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20 or (st.f_files > 0 and st.f_favail == 0)


def move_aside(path: Path, error: BaseException) -> HistoryCorrupt:
    """Move the corrupt database (and its side files) aside; the message says where."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    lock = FileLock(str(path.with_name(LOCK_NAME)), 0o600, timeout_s=BUSY_TIMEOUT_MS / 1000)
    try:
        with lock:
            try:
                still_bad = _still_corrupt(path)
            except OSError:
                still_bad = False
            if not still_bad:
                # Another process moved it aside (and started afresh) while we waited.
                return HistoryCorrupt(
                    f"{path}: was corrupt ({error}); another gpumon moved it aside", None
                )
            n = 1
            while aside.exists():
                n += 1
                aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            os.replace(path, aside)
            for suffix in _SIDE_FILES:
                side = Path(str(path) + suffix)
                if side.exists():
                    os.replace(side, Path(str(aside) + suffix))
    except (OSError, LockBusy, LockFileError) as e:
        return HistoryCorrupt(
            f"{path}: corrupt ({error}) and could not be moved aside ({e}); move it away by "
            "hand — history is not recorded until then",
            None,
        )
    return HistoryCorrupt(
        f"{path}: corrupt ({error}); moved to {aside} and a new history started (the old one "
        "is kept for you: `sqlite3 FILE .recover` may save some of it)",
        aside,
    )


def _still_corrupt(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    except sqlite3.DatabaseError as e:
        return is_corruption(e)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok"
    except sqlite3.DatabaseError as e:
        return is_corruption(e)
    finally:
        conn.close()


@contextlib.contextmanager
def history_db(config: Config) -> Iterator[sqlite3.Connection]:
    """``open_db`` for a ``with`` block, trying once more after a corrupt database was moved
    aside; the HistoryCorrupt is re-raised after the block has used the new database (so the
    caller both records and reports it). Closes the connection."""
    corrupt: HistoryCorrupt | None = None
    try:
        conn = open_db(config)
    except HistoryCorrupt as e:
        corrupt = e
        conn = open_db(config)
    try:
        yield conn
    except sqlite3.DatabaseError as e:
        if is_corruption(e):
            conn.close()
            raise move_aside(db_path(config), e) from None
        raise unavailable(db_path(config), e) from None
    finally:
        conn.close()
    if corrupt is not None:
        raise corrupt


def ensure_schema(conn: sqlite3.Connection, ddl: str) -> None:
    """Run ``CREATE … IF NOT EXISTS`` statements (idempotent; each module its own tables)."""
    conn.executescript(ddl)
