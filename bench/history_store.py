"""The history store on a generated year: 15 servers x 4 GPUs, a push a minute.

Figures, each beside the naive baseline measured in the same run (a CSV row per GPU per push,
appended at each push and queried by reading the whole file):

- insert cost per push of 60 GPUs: ``store.record`` on an open connection (serve), and the
  whole ``record_samples`` a cron push pays (open, schema check, record, close). Target <= 5 ms.
- a weekly query (``gpumon history --week``: per person, server and GPU) over the year's
  database, for last week and for a week half a year back. Target <= 200 ms.
- the database's size after the year. Target <= 200 MB.

How the year is generated: the workload (30 people, jobs of 1-48 h, reservations changing
weekly, a server OFF now and then) is pushed through ``store.record`` itself, with the store's
retention running as time goes on. The last ``raw_days`` (14) are pushed once a minute; older
time, which the store keeps only as 5-minute and hourly sums, is pushed once per 5 minutes
(days 14-60 back) and once an hour (older): the sums hold one row per GPU per bucket whatever
the pushes per bucket, so the file is what a push a minute leaves (and the run takes minutes,
not hours). The CSV baseline is written for a generated week (a push a minute) and its size
and full read are scaled to the year (x 365/7): a 2 GB file is not worth writing to say so.

    .venv/bin/python bench/history_store.py [--days 365] [--runs 50]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpumon.config import Config, HistoryConfig  # noqa: E402
from gpumon.history.recorder import record_samples, retention  # noqa: E402
from gpumon.history.report import history  # noqa: E402
from gpumon.history.samples import GpuSample, ServerSample  # noqa: E402
from gpumon.history.store import ensure, record  # noqa: E402
from gpumon.statedb import db_path, history_db  # noqa: E402

SERVERS = [f"srv{i:02d}bsp" for i in range(15)]
GPUS = 4
PEOPLE = [f"user{i:02d}" for i in range(30)]
UTC = dt.timezone.utc


class Workload:
    """Per GPU: a job (user, until when) or idle (until when); a reservation per week."""

    def __init__(self, seed: int = 7) -> None:
        self.rnd = random.Random(seed)
        self.jobs: dict[tuple[str, int], tuple[tuple[str, ...], float]] = {}
        self.reserved: dict[tuple[str, int], tuple[str, ...]] = {}
        self.week = -1
        self.off: dict[str, float] = {}

    def state(self, t: float) -> list[ServerSample]:
        rnd = self.rnd
        week = int(t // (7 * 86400))
        if week != self.week:
            self.week = week
            for s in SERVERS:
                for g in range(GPUS):
                    pick = rnd.random()
                    self.reserved[(s, g)] = (rnd.choice(PEOPLE),) if pick < 0.6 else ()
        out = []
        for s in SERVERS:
            down_until = self.off.get(s, 0.0)
            if down_until <= t and rnd.random() < 0.0002:  # about one outage a week a server
                self.off[s] = down_until = t + rnd.uniform(600, 4 * 3600)
            up = down_until <= t
            gpus = []
            for g in range(GPUS):
                users, until = self.jobs.get((s, g), ((), 0.0))
                if until <= t:
                    if users or rnd.random() < 0.4:
                        users, until = (), t + rnd.uniform(600, 12 * 3600)  # idle a while
                    else:
                        mine = self.reserved[(s, g)]
                        who = mine[0] if mine and rnd.random() < 0.7 else rnd.choice(PEOPLE)
                        users, until = (who,), t + rnd.uniform(3600, 48 * 3600)
                    self.jobs[(s, g)] = (users, until)
                gpus.append(
                    GpuSample(
                        server=s,
                        gpu=g,
                        on=up,
                        util_pct=(rnd.uniform(60, 100) if users else 0.0) if up else None,
                        memory_used_bytes=(8 << 30 if users else 0) if up else None,
                        memory_total_bytes=11 << 30 if up else None,
                        users=users if up else None,
                        claims=((f"train-{users[0]}", users[0]),) if users and g % 2 else (),
                        reservation_text=", ".join(self.reserved[(s, g)]) or None,
                        reserved_people=self.reserved[(s, g)],
                        reserved_by=self.reserved[(s, g)],
                    )
                )
            out.append(ServerSample(server=s, on=up, gpus=tuple(gpus)))
        return out


def generate(cfg: Config, days: int, end: float) -> int:
    workload = Workload()
    keep = retention(cfg)
    raw_from = end - cfg.history.raw_days * 86400
    five_from = end - cfg.history.five_minute_days * 86400
    t = end - days * 86400
    pushes = 0
    with history_db(cfg) as conn:
        ensure(conn)
        while t <= end:
            step = 60 if t >= raw_from else 300 if t >= five_from else 3600
            record(conn, workload.state(t), t, max_sample_s=step, retention=keep)
            pushes += 1
            t += step
    return pushes


def csv_week(path: Path, end: float) -> tuple[float, int]:
    """A week of pushes as CSV rows (appended per push, as a naive logger does); the seconds
    the appends took and the rows written."""
    workload = Workload()
    t = end - 7 * 86400
    rows = 0
    spent = 0.0
    while t <= end:
        samples = workload.state(t)
        started = time.perf_counter()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            for s in samples:
                for g in s.gpus:
                    w.writerow(
                        [int(t), s.server, g.gpu, int(s.on), g.util_pct, g.memory_used_bytes,
                         " ".join(g.users or ()), ";".join(f"{j}:{u}" for j, u in g.claims),
                         g.reservation_text or "", " ".join(g.reserved_by)]
                    )  # fmt: skip
                    rows += 1
        spent += time.perf_counter() - started
        t += 60
    return spent, rows


def csv_query(path: Path, since: float, until: float) -> dict[str, float]:
    """Used GPU-hours per user from the CSV: read it all, 60 s per row."""
    used: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            t = int(row[0])
            if since <= t < until and row[3] == "1":
                for user in row[6].split():
                    used[user] = used.get(user, 0.0) + 60 / 3600
    return used


def ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return f"p50 {statistics.median(samples) * 1000:.2f} ms (p95 {p95 * 1000:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gpumon-bench-history-"))
    cfg = Config(path=str(folder / "gpumon.toml"), state_dir=str(folder), history=HistoryConfig())
    end = float(int(time.time()) // 60 * 60)
    started = time.perf_counter()
    pushes = generate(cfg, args.days, end)
    size = os.path.getsize(db_path(cfg))
    print(
        f"generated {args.days} days ({pushes} pushes through store.record) in "
        f"{time.perf_counter() - started:.0f} s"
    )

    # Insert cost per push of 60 GPUs, on the year's database.
    workload = Workload(seed=99)
    serve_times, cron_times, serve_cpu, cron_cpu = [], [], [], []
    t = end
    with history_db(cfg) as conn:
        for _ in range(args.runs):
            t += 60
            samples = workload.state(t)
            s0, c0 = time.perf_counter(), time.process_time()
            record(conn, samples, t, max_sample_s=300, retention=retention(cfg))
            serve_times.append(time.perf_counter() - s0)
            serve_cpu.append(time.process_time() - c0)
    for _ in range(args.runs):
        t += 60
        samples = workload.state(t)
        s0, c0 = time.perf_counter(), time.process_time()
        warnings = record_samples(cfg, samples, t)
        cron_times.append(time.perf_counter() - s0)
        cron_cpu.append(time.process_time() - c0)
        assert not warnings, warnings
    csv_path = folder / "naive.csv"
    csv_spent, csv_rows = csv_week(csv_path, end)
    csv_pushes = csv_rows // (len(SERVERS) * GPUS)
    csv_per_push = csv_spent / csv_pushes

    # Weekly queries.
    now = dt.datetime.fromtimestamp(t, UTC)
    monday = (now - dt.timedelta(days=now.weekday() + 7)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    weeks = {"last week": monday, "26 weeks back": monday - dt.timedelta(weeks=26)}
    query_times: dict[str, list[float]] = {}
    query_cpu: dict[str, float] = {}
    with history_db(cfg) as conn:
        for label, start in weeks.items():
            times = []
            for _ in range(max(5, args.runs // 5)):
                s0 = time.perf_counter()
                found = history(conn, start, start + dt.timedelta(days=7), now, retention(cfg))
                times.append(time.perf_counter() - s0)
            cpu0 = time.process_time()
            history(conn, start, start + dt.timedelta(days=7), now, retention(cfg))
            query_cpu[label] = time.process_time() - cpu0
            query_times[label] = times
            assert found.people or start < now - dt.timedelta(days=args.days), label
    s0 = time.perf_counter()
    csv_query(csv_path, end - 7 * 86400, end)
    csv_read_week = time.perf_counter() - s0
    csv_size_week = os.path.getsize(csv_path)
    year = 365 / 7

    print()
    print(f"{len(SERVERS)} servers x {GPUS} GPUs, {args.days} days, a push a minute")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"insert per push, serve (open connection): {ms(serve_times)}   target <= 5 ms")
    print(f"  its CPU time: {ms(serve_cpu)}")
    print(f"insert per push, cron (open, record, close): {ms(cron_times)}")
    print(f"  its CPU time: {ms(cron_cpu)}")
    print(f"  naive CSV append per push: {csv_per_push * 1000:.2f} ms")
    for label, times in query_times.items():
        print(f"weekly query, {label}: {ms(times)}   target <= 200 ms")
        print(f"  its CPU time: {query_cpu[label] * 1000:.1f} ms")
    print(
        f"  naive CSV, used hours per user: read a week's file {csv_read_week * 1000:.0f} ms; "
        f"a year's file ~{csv_read_week * year:.0f} s (x{year:.1f}), "
        f"{csv_read_week * year / statistics.median(query_times['last week']):.0f}x the store"
    )
    with history_db(cfg) as conn:
        pages, free, page = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
        conn.execute("VACUUM")
    vacuumed = os.path.getsize(db_path(cfg))
    # The generator's coarse pushes leave freed pages behind (a push an hour writes twelve
    # 5-minute rows that are dropped 30 days on); a push a minute reuses them as it goes.
    print(
        f"database after {args.days} days: {vacuumed / 1e6:.1f} MB (after VACUUM; live pages "
        f"{(pages - free) * page / 1e6:.1f} MB, the generated file {size / 1e6:.1f} MB)   "
        "target <= 200 MB"
    )
    print(
        f"  naive CSV: {csv_size_week / 1e6:.1f} MB a week, ~{csv_size_week * year / 1e6:.0f} MB "
        f"a year ({csv_size_week * year / size:.1f}x the store)"
    )
    with history_db(cfg) as conn:
        for table in ("history_raw", "history_agg", "history_agg_person", "history_names"):
            n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            print(f"  {table}: {n} rows")


if __name__ == "__main__":
    main()
