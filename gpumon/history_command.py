"""`gpumon history`: GPU-hours per person (used, reserved, reserved but unused, on others'
reservations, without a reservation, unclaimed), per server (mean utilization, hours OFF, the
health warnings seen) or per GPU, over ``--since 7d`` (the default) or ``--week 2026-W48``;
``--json`` for scripts, ``--png FILE`` for a chart (matplotlib: ``pip install 'gpumon[charts]'``).

Exit status: 0 printed (or written); 2 a bad option or config; 6 no history to read (none
recorded yet, or the database cannot be opened: the message says which).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import TextIO

from gpumon.config import Config
from gpumon.history.periods import PeriodError, since_period, week_period, zone_of
from gpumon.history.recorder import retention
from gpumon.history.report import History, history
from gpumon.history.store import ensure
from gpumon.statedb import HistoryUnavailable, db_path, history_db
from gpumon.table import Cell, format_table, printable, terminal_width

EXIT_NO_HISTORY = 6
BY = ("person", "server", "gpu")


def run(
    config: Config,
    since: str | None = None,
    week: str | None = None,
    by: str | None = None,
    as_json: bool = False,
    png: str | None = None,
    out: TextIO | None = None,
    now: dt.datetime | None = None,
) -> int:
    out = out or sys.stdout
    zone = zone_of(config.sheet.time_zone)
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(zone)
    try:
        if week is not None:
            start, end = week_period(week, zone)
        else:
            start, end = since_period(since or "7d", now)
    except PeriodError as e:
        print(f"gpumon: {e}", file=sys.stderr)
        return 2
    path = db_path(config)
    if not path.exists():
        print(
            f"gpumon: no history yet: {path} does not exist — every `gpumon push` (and "
            "`gpumon serve`) records one"
            + ("" if config.history.enabled else "; [history] enabled = false in " + config.origin),
            file=sys.stderr,
        )
        return EXIT_NO_HISTORY
    try:
        with history_db(config) as conn:
            ensure(conn)
            found = history(conn, start, min(end, now), now, retention(config))
            heat = None
            if png:
                from gpumon.history.chart import utilization_by_hour

                heat = utilization_by_hour(conn, start, min(end, now))
    except HistoryUnavailable as e:
        print(f"gpumon: history: {e}", file=sys.stderr)
        return EXIT_NO_HISTORY
    if png:
        from gpumon.history.chart import ChartError, write_png

        try:
            write_png(found, heat, png)
        except ChartError as e:
            print(f"gpumon: {e}", file=sys.stderr)
            return 2
    if as_json:
        json.dump(found.to_json(), out, indent=1, ensure_ascii=False)
        out.write("\n")
        return 0
    for line in render(found, by, zone, width=terminal_width(out)).splitlines():
        print(printable(line), file=out)  # names come from sheets and servers
    if png:
        print(f"chart written to {png}", file=out)
    return 0


def _h(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(found: History, by: str | None, zone: dt.tzinfo, width: int | None = None) -> str:
    """The tables: per person and per server (``by`` None), or the one ``by`` names."""
    span = (
        f"{found.since.astimezone(zone):%Y-%m-%d %H:%M} – "
        f"{found.until.astimezone(zone):%Y-%m-%d %H:%M} ({found.since.astimezone(zone):%Z})"
    )
    parts = [f"GPU-hours, {span}"]
    if by in (None, "person"):
        rows = [
            [
                Cell(p.person),
                Cell(_h(p.used_gpu_hours)),
                Cell(_h(p.reserved_gpu_hours)),
                Cell(_h(p.reserved_unused_gpu_hours)),
                Cell(_h(p.on_others_reservations_gpu_hours)),
                Cell(_h(p.unreserved_gpu_hours)),
                Cell(_h(p.unclaimed_gpu_hours)),
            ]
            for p in found.people
        ]
        headers = ["Person", "Used", "Reserved", "Res. unused", "On others'", "Unreserved"]
        headers.append("Unclaimed")
        parts.append(
            format_table(headers, rows, width=width, max_widths={0: 32})
            if rows
            else "(nobody used or reserved a GPU in this period)"
        )
    if by in (None, "server"):
        rows = [
            [
                Cell(s.server),
                Cell(_h(s.mean_utilization_pct)),
                Cell(_h(s.gpu_hours_busy)),
                Cell(_h(s.gpu_hours_reserved)),
                Cell(_h(s.hours_off)),
                Cell(_h(s.hours_recorded)),
                Cell(", ".join(f"{c} ×{n}" for c, n in sorted(s.warnings.items())) or "-"),
            ]
            for s in found.servers
        ]
        headers = ["Server", "Util %", "Busy GPU-h", "Reserved GPU-h", "Hours OFF", "Recorded h"]
        headers.append("Warnings (pushes)")
        parts.append(
            format_table(headers, rows, width=width, max_widths={0: 32})
            if rows
            else "(no server recorded in this period)"
        )
    if by == "gpu":
        rows = [
            [
                Cell(g.server),
                Cell(str(g.gpu)),
                Cell(_h(g.mean_utilization_pct)),
                Cell(_h(g.mean_memory_used_gib)),
                Cell(_h(g.hours_busy)),
                Cell(_h(g.hours_reserved)),
                Cell(_h(g.hours_reserved_idle)),
                Cell(_h(g.hours_recorded - g.hours_on)),
            ]
            for g in found.gpus
        ]
        headers = ["Server", "GPU", "Util %", "Mem GiB", "Busy h", "Reserved h", "Res. idle h"]
        headers.append("OFF h")
        parts.append(
            format_table(headers, rows, width=width, max_widths={0: 32})
            if rows
            else "(no GPU recorded in this period)"
        )
    return "\n\n".join(parts)
