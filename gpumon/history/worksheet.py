"""The "GPU hours" worksheet: this week's and last week's GPU-hours per person and per server,
and a bar chart of used against reserved per person, in the lab's own spreadsheet (Google) or
workbook (xlsx) — a worksheet gpumon owns, beside the lab's, never the lab's own.

It is rewritten at most once per ``[history] sheet_every_s`` (default an hour): the time of the
last attempt is kept in the history database (``history_meta``), taken in a transaction, so
that cron pushes and serve agree and a failing write is not retried on every push. On Google a
rewrite is ONE ``spreadsheets.batchUpdate`` (values only; the chart is added once, with the
worksheet). The tables sit side by side so that the chart's range holds only this week's
people: this week's people in columns A-G, its servers in I-M, last week's people in O-U, its
servers in W-AA.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from gpumon.config import Config
from gpumon.history.periods import week_name, week_of, zone_of
from gpumon.history.report import History, history
from gpumon.history.store import Retention, ensure
from gpumon.sheet.grid import OWNED_MARKER, BarChart, SheetError
from gpumon.statedb import HistoryUnavailable, history_db

MAX_ROWS = 200  # people (and servers) listed per table; the rest summed in one line
TABLE_ROW = 3  # 0-based: the tables' header row
PEOPLE_HEADERS = [
    "Person",
    "Used",
    "Reserved",
    "Reserved, unused",
    "On others' reservations",
    "Without reservation",
    "Unclaimed",
]
SERVER_HEADERS = ["Server", "Mean util %", "Busy GPU-h", "Reserved GPU-h", "Hours OFF"]
COLUMNS = {"this_people": 0, "this_servers": 8, "last_people": 14, "last_servers": 22}
META_KEY = "worksheet:{backend}:{title}"


def _h(value: float | None) -> float | str:
    return "" if value is None else round(value, 2)


def _people_rows(found: History) -> list[list[Any]]:
    rows = [
        [
            p.person,
            _h(p.used_gpu_hours),
            _h(p.reserved_gpu_hours),
            _h(p.reserved_unused_gpu_hours),
            _h(p.on_others_reservations_gpu_hours),
            _h(p.unreserved_gpu_hours),
            _h(p.unclaimed_gpu_hours),
        ]
        for p in sorted(found.people, key=lambda p: (-p.used_gpu_hours, p.person))
    ]
    return _capped(rows, len(PEOPLE_HEADERS))


def _server_rows(found: History) -> list[list[Any]]:
    rows = [
        [
            s.server,
            _h(s.mean_utilization_pct),
            _h(s.gpu_hours_busy),
            _h(s.gpu_hours_reserved),
            _h(s.hours_off),
        ]
        for s in found.servers
    ]
    return _capped(rows, len(SERVER_HEADERS))


def _capped(rows: list[list[Any]], width: int) -> list[list[Any]]:
    if len(rows) <= MAX_ROWS:
        return rows
    rest = rows[MAX_ROWS - 1 :]
    total = [f"… {len(rest)} more"]
    for i in range(1, width):
        values = [r[i] for r in rest if isinstance(r[i], (int, float))]
        total.append(round(sum(values), 2) if values else "")
    return [*rows[: MAX_ROWS - 1], total]


def layout(
    this_week: History, last_week: History, written: dt.datetime, zone: dt.tzinfo
) -> tuple[list[list[Any]], BarChart]:
    """The worksheet's rows (from A1) and its chart."""
    grid: dict[tuple[int, int], Any] = {}

    def put(row: int, col: int, value: Any) -> None:
        grid[(row, col)] = value

    put(
        0,
        0,
        f"{OWNED_MARKER} from its history (edits here are overwritten); "
        f"written {written.astimezone(zone):%Y-%m-%d %H:%M %Z}. GPU-hours.",
    )
    for key, found, label in (
        ("this", this_week, "This week"),
        ("last", last_week, "Last week"),
    ):
        start = found.since.astimezone(zone)
        span = f"{week_name(start)}: {start:%a %Y-%m-%d} – {found.until.astimezone(zone):%a %H:%M}"
        people_col, server_col = COLUMNS[f"{key}_people"], COLUMNS[f"{key}_servers"]
        put(TABLE_ROW - 1, people_col, f"{label}, per person ({span})")
        put(TABLE_ROW - 1, server_col, f"{label}, per server")
        for i, text in enumerate(PEOPLE_HEADERS):
            put(TABLE_ROW, people_col + i, text)
        for i, text in enumerate(SERVER_HEADERS):
            put(TABLE_ROW, server_col + i, text)
        for r, row in enumerate(_people_rows(found), TABLE_ROW + 1):
            for i, value in enumerate(row):
                put(r, people_col + i, value)
        for r, row in enumerate(_server_rows(found), TABLE_ROW + 1):
            for i, value in enumerate(row):
                put(r, server_col + i, value)
    height = max(r for r, _ in grid) + 1
    width = max(c for _, c in grid) + 1
    rows = [[grid.get((r, c), "") for c in range(width)] for r in range(height)]
    for row in rows:  # no trailing empty cells
        while row and row[-1] == "":
            row.pop()
    chart = BarChart(
        title="GPU-hours this week: used and reserved, per person",
        header_row=TABLE_ROW,
        first_row=TABLE_ROW + 1,
        end_row=TABLE_ROW + 1 + MAX_ROWS,
        category_col=COLUMNS["this_people"],
        series_cols=(1, 2),
        anchor_row=TABLE_ROW + 2 + MAX_ROWS,
        anchor_col=0,
    )
    return rows, chart


def _claim(conn: sqlite3.Connection, key: str, now: float, every_s: float) -> dict[str, Any] | None:
    """Take the turn to rewrite (a transaction: one writer per period, whoever pushes);
    the previous record, or None when the last rewrite is too recent."""
    import json

    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM history_meta WHERE key = ?", (key,)).fetchone()
        try:
            previous = json.loads(row[0]) if row else {}
            if not isinstance(previous, dict):
                previous = {}
        except ValueError:
            previous = {}
        last = previous.get("at")
        if isinstance(last, (int, float)) and 0 <= now - last < every_s:
            conn.execute("COMMIT")
            return None
        record = dict(previous, at=now)
        conn.execute(
            "INSERT OR REPLACE INTO history_meta(key, value) VALUES (?, ?)",
            (key, json.dumps(record)),
        )
        conn.execute("COMMIT")
        return previous
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _remember(conn: sqlite3.Connection, key: str, record: dict[str, Any]) -> None:
    import json

    conn.execute(
        "INSERT OR REPLACE INTO history_meta(key, value) VALUES (?, ?)", (key, json.dumps(record))
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value < 10**6 else 0


def maybe_write_worksheet(
    config: Config, backend: Any, now: float, retention: Retention | None = None
) -> list[str]:
    """Rewrite the worksheet if ``sheet_every_s`` has passed since the last attempt; the
    warnings to show. Needs a backend with ``write_owned`` (Google, xlsx) that has read the
    sheet this run (a push has)."""
    if not hasattr(backend, "write_owned"):
        return []
    h = config.history
    title = h.sheet_title
    key = META_KEY.format(backend=config.sheet.backend, title=title)
    zone = zone_of(config.sheet.time_zone)
    moment = dt.datetime.fromtimestamp(now, dt.timezone.utc).astimezone(zone)
    try:
        with history_db(config) as conn:
            ensure(conn)
            previous = _claim(conn, key, now, h.sheet_every_s)
            if previous is None:
                return []
            keep = retention or Retention.of(config)
            start, _ = week_of(moment.date(), zone)
            last_start, _ = week_of((start - dt.timedelta(days=1)).date(), zone)
            this_week = history(conn, start, moment, moment, keep)
            last_week = history(conn, last_start, start, moment, keep)
            rows, chart = layout(this_week, last_week, moment, zone)
            try:
                done = backend.write_owned(
                    title,
                    rows,
                    chart,
                    create=not previous.get("created", False),
                    clear_rows=_int(previous.get("rows")),
                )
            except SheetError as e:
                return [f"history: worksheet {title!r} not written: {e}"]
            record = dict(previous, at=now, rows=len(rows), created=done.exists)
            _remember(conn, key, record)
            return [f"history: {done.problem}"] if done.problem else []
    except HistoryUnavailable as e:
        return [f"history: worksheet {title!r} not written: {e}"]
