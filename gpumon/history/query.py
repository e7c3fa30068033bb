"""GPU-hours over a period, from the history store: per person, per server, per GPU.

A period [since, until) is read from the coarsest sums that fit it exactly: whole hours from the
hourly sums; the ends (less than an hour each) from the pushes themselves while they are kept
(``[history] raw_days``), else from the 5-minute sums (whole buckets, the last part-bucket in
proportion), else in proportion of the hour. Over the pushes still kept, the answer is exact.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from gpumon.history.facts import GPU_FIELDS, PERSON_FIELDS, GpuSeconds, PersonSeconds, gpu_seconds
from gpumon.history.store import SERVER_ROW, Names, Retention, raw_samples


@dataclass
class Totals:
    """The seconds of a period, by (server, gpu) and by (server, gpu, person)."""

    gpus: dict[tuple[str, int], GpuSeconds] = field(default_factory=dict)
    people: dict[tuple[str, int, str], PersonSeconds] = field(default_factory=dict)
    warnings: dict[tuple[str, str], int] = field(default_factory=dict)  # (server, code): pushes

    def gpu(self, server: str, gpu: int) -> GpuSeconds:
        return self.gpus.setdefault((server, gpu), GpuSeconds())

    def person(self, server: str, gpu: int, name: str) -> PersonSeconds:
        return self.people.setdefault((server, gpu, name), PersonSeconds())


def totals(
    conn: sqlite3.Connection, since: int, until: int, now: int, retention: Retention
) -> Totals:
    """The period's seconds (``since``/``until``/``now``: POSIX seconds)."""
    out = Totals()
    names = Names(conn)
    if until <= since:
        return out
    first_hour = -(-since // 3600) * 3600
    last_hour = until // 3600 * 3600
    edges: list[tuple[int, int]] = []
    if first_hour < last_hour:
        _agg(conn, names, out, 3600, first_hour, last_hour, None)
        edges = [(since, first_hour), (last_hour, until)]
    else:
        edges = [(since, until)]
    raw_from = now - retention.raw_s
    five_from = now - retention.five_minute_s
    for lo, hi in edges:
        if lo >= hi:
            continue
        if lo >= raw_from:
            _raw(conn, names, out, lo, hi)
        elif lo >= five_from:
            _agg(conn, names, out, 300, lo, hi, (lo, hi))
        else:
            _agg(conn, names, out, 3600, lo // 3600 * 3600, hi, (lo, hi))
    for bucket_server, code, pushes in conn.execute(
        "SELECT server, code, sum(pushes) FROM history_warnings WHERE bucket >= ? AND bucket < ? "
        "GROUP BY server, code",
        (since // 3600 * 3600, until),
    ):
        key = (_server(names, bucket_server), code)
        out.warnings[key] = out.warnings.get(key, 0) + pushes
    return out


def _server(names: Names, sid: int) -> str:
    return names.value(sid)[2:]


def _agg(
    conn: sqlite3.Connection,
    names: Names,
    out: Totals,
    level: int,
    lo: int,
    hi: int,
    clip: tuple[int, int] | None,
) -> None:
    """Sum the level's buckets in [lo, hi); with ``clip``, buckets overlapping [clip) count in
    proportion of their overlap."""
    if clip is None:
        weight = "1.0"
        params: tuple = (level, lo, hi)
        where = "level = ? AND bucket >= ? AND bucket < ?"
    else:
        a, b = clip
        weight = f"(min(bucket + {level}, ?) - max(bucket, ?)) * 1.0 / {level}"
        params = (b, a, level, a - level, b)
        where = "level = ? AND bucket > ? AND bucket < ?"
    cols = ", ".join(f"sum({c} * {weight})" for c in GPU_FIELDS)
    sql = f"SELECT server, gpu, {cols} FROM history_agg WHERE {where} GROUP BY server, gpu"
    repeat = params[:2] * len(GPU_FIELDS) + params[2:] if clip else params
    for sid, gpu, *values in conn.execute(sql, repeat):
        into = out.gpu(_server(names, sid), gpu)
        for name, value in zip(GPU_FIELDS, values):
            setattr(into, name, getattr(into, name) + (value or 0))
    cols = ", ".join(f"sum({c} * {weight})" for c in PERSON_FIELDS)
    sql = (
        f"SELECT server, gpu, person, {cols} FROM history_agg_person WHERE {where} "
        "GROUP BY server, gpu, person"
    )
    repeat = params[:2] * len(PERSON_FIELDS) + params[2:] if clip else params
    for sid, gpu, pid, *values in conn.execute(sql, repeat):
        into = out.person(_server(names, sid), gpu, names.value(pid)[2:])
        for name, value in zip(PERSON_FIELDS, values):
            setattr(into, name, getattr(into, name) + (value or 0))


def _raw(conn: sqlite3.Connection, names: Names, out: Totals, lo: int, hi: int) -> None:
    for start, end, sid, gpu, sample, is_on in raw_samples(conn, lo, hi, names):
        length = end - start
        piece = min(end, hi) - max(start, lo)
        if length <= 0 or piece <= 0:
            continue
        server = _server(names, sid)
        if sample is None:
            g = GpuSeconds(covered_s=piece, on_s=piece * is_on)
            out.gpu(server, SERVER_ROW).add(g)
            continue
        g, people = gpu_seconds(sample, piece)
        out.gpu(server, gpu).add(g)
        for person, seconds in people.items():
            out.person(server, gpu, person).add(seconds)


def level_totals(conn: sqlite3.Connection, level: int, lo: int, hi: int) -> Totals:
    """[lo, hi) from one level alone: 0 the pushes themselves, 300 or 3600 the sums (whole
    buckets; lo and hi on the level's bucket boundaries). For checking the levels agree."""
    out = Totals()
    names = Names(conn)
    if level == 0:
        _raw(conn, names, out, lo, hi)
    else:
        _agg(conn, names, out, level, lo, hi, None)
    return out
