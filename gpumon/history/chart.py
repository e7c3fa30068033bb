"""`gpumon history --png FILE`: used against reserved GPU-hours per person (bars) and each
server's utilization by hour (a heat map), in one PNG. matplotlib is an optional extra of the
central package (``pip install 'gpumon[charts]'``); without it, a ChartError says so."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from gpumon.history.report import History
from gpumon.history.store import SERVER_ROW
from gpumon_agent.atomic import atomic_file

MAX_PEOPLE = 40  # bars drawn; the rest are left out (the title says how many)
MAX_HOURS = 24 * 62  # heat map columns: two months by the hour


class ChartError(Exception):
    """The chart cannot be drawn or written (the message says why and what to do)."""


@dataclass
class Heat:
    """Mean utilization per server per hour: ``values[server][i]`` for hour ``hours[i]``."""

    hours: list[int] = field(default_factory=list)  # bucket starts, POSIX seconds
    values: dict[str, list[float | None]] = field(default_factory=dict)


def utilization_by_hour(conn: sqlite3.Connection, since: dt.datetime, until: dt.datetime) -> Heat:
    lo = int(since.timestamp()) // 3600 * 3600
    hi = int(until.timestamp())
    hours = list(range(lo, hi, 3600))[-MAX_HOURS:]
    heat = Heat(hours=hours)
    if not hours:
        return heat
    index = {h: i for i, h in enumerate(hours)}
    rows = conn.execute(
        "SELECT n.value, a.bucket, sum(a.util_s), sum(a.util_known_s) FROM history_agg a "
        "JOIN history_names n ON n.id = a.server WHERE a.level = 3600 AND a.bucket >= ? "
        "AND a.bucket < ? AND a.gpu != ? GROUP BY a.server, a.bucket",
        (hours[0], hi, SERVER_ROW),
    )
    for name, bucket, util_s, known_s in rows:
        line = heat.values.setdefault(name[2:], [None] * len(hours))
        if bucket in index and known_s:
            line[index[bucket]] = util_s / known_s
    return heat


def write_png(found: History, heat: Heat | None, path: str) -> None:
    """Draw the chart into ``path`` (replaced atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a central box
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartError(
            "--png needs matplotlib: pip install 'gpumon[charts]' (or pip install matplotlib) "
            "into gpumon's environment"
        ) from None
    people = sorted(found.people, key=lambda p: (-p.used_gpu_hours, p.person))
    shown = people[:MAX_PEOPLE]
    servers = sorted(heat.values) if heat else []
    figure, (bars, grid) = plt.subplots(
        2,
        1,
        figsize=(11, 4 + 0.25 * len(shown) + 0.3 * len(servers)),
        gridspec_kw={"height_ratios": [max(len(shown), 3), max(len(servers), 2)]},
    )
    try:
        span = f"{found.since:%Y-%m-%d %H:%M} – {found.until:%Y-%m-%d %H:%M}"
        names = [p.person for p in shown]
        y = list(range(len(shown)))
        bars.barh([i - 0.2 for i in y], [p.used_gpu_hours for p in shown], 0.4, label="used")
        bars.barh(
            [i + 0.2 for i in y], [p.reserved_gpu_hours for p in shown], 0.4, label="reserved"
        )
        bars.barh(
            [i + 0.2 for i in y],
            [p.reserved_unused_gpu_hours for p in shown],
            0.4,
            label="reserved, unused",
            hatch="//",
            fill=False,
        )
        bars.set_yticks(y, names)
        bars.invert_yaxis()
        bars.set_xlabel("GPU-hours")
        more = f" (top {len(shown)} of {len(people)})" if len(people) > len(shown) else ""
        bars.set_title(f"GPU-hours per person, {span}{more}")
        if shown:
            bars.legend(loc="lower right")
        if heat and servers and heat.hours:
            matrix = [[math.nan if v is None else v for v in heat.values[name]] for name in servers]
            image = grid.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=100)
            grid.set_yticks(range(len(servers)), servers)
            step = max(1, len(heat.hours) // 12)
            ticks = list(range(0, len(heat.hours), step))
            grid.set_xticks(
                ticks,
                [
                    dt.datetime.fromtimestamp(heat.hours[i], found.since.tzinfo).strftime(
                        "%m-%d %H:00"
                    )
                    for i in ticks
                ],
                rotation=30,
                ha="right",
            )
            figure.colorbar(image, ax=grid, label="mean GPU utilization %")
            grid.set_title("Utilization per server, by hour")
        else:
            grid.set_axis_off()
            grid.text(0.5, 0.5, "no utilization recorded in this period", ha="center")
        figure.tight_layout()
        try:
            target = Path(path)
            with atomic_file(target, mode=0o644) as f:
                figure.savefig(f, format="png", dpi=110)
        except OSError as e:
            raise ChartError(f"{path}: cannot write the chart ({e.strerror or e})") from None
    finally:
        plt.close(figure)
