"""History test kit: a config on a scratch state directory and scripted push timelines."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gpumon.config import Config, HistoryConfig, SheetConfig
from gpumon.history.recorder import record_samples, retention
from gpumon.history.report import History, history
from gpumon.history.samples import GpuSample, ServerSample
from gpumon.history.store import record
from gpumon.statedb import history_db

# Monday 2026-11-23 00:00 UTC (ISO week 2026-W48).
T0 = int(dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc).timestamp())
HOUR = 3600


def config(tmp_path: Path, **history_fields) -> Config:
    return Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        sheet=SheetConfig(path="sheet.xlsx", time_zone="UTC"),
        history=HistoryConfig(**history_fields),
    )


def gpu(server: str, index: int, *, on: bool = True, users=(), reserved=(), claims=(), util=50.0):
    return GpuSample(
        server=server,
        gpu=index,
        on=on,
        util_pct=util if on else None,
        memory_used_bytes=2**30 if on else None,
        memory_total_bytes=11 * 2**30 if on else None,
        users=tuple(users) if on else None,
        claims=tuple(claims),
        reservation_text=", ".join(reserved) or None,
        reserved_people=tuple(reserved),
        reserved_by=tuple(reserved),
    )


def server(name: str, *gpus: GpuSample, on: bool = True, warnings=()) -> ServerSample:
    return ServerSample(server=name, on=on, gpus=tuple(gpus), warnings=tuple(warnings))


def run(cfg: Config, start: int, end: int, step: int, state) -> None:
    """Push every ``step`` seconds from ``start`` to ``end`` (inclusive); ``state(t)`` gives
    the push's ServerSamples. The first push goes through record_samples (as `gpumon push`
    records), the rest through one open connection (the same store.record, faster)."""
    assert record_samples(cfg, state(start), start) == []
    with history_db(cfg) as conn:
        t = start + step
        while t <= end:
            record(
                conn,
                state(t),
                t,
                max_sample_s=cfg.history.max_sample_s,
                retention=retention(cfg),
            )
            t += step


def read(cfg: Config, since: int, until: int, now: int | None = None) -> History:
    utc = dt.timezone.utc
    with history_db(cfg) as conn:
        return history(
            conn,
            dt.datetime.fromtimestamp(since, utc),
            dt.datetime.fromtimestamp(until, utc),
            dt.datetime.fromtimestamp(now if now is not None else until, utc),
            retention(cfg),
        )


def person(found: History, name: str):
    matches = [p for p in found.people if p.person == name]
    assert matches, f"{name} not in {[p.person for p in found.people]}"
    return matches[0]


def server_hours(found: History, name: str):
    return next(s for s in found.servers if s.server == name)
